"""Data-parallel training (issue #11): real torchrun, real gloo, real DDP on 2 CPU processes; nothing mocked.

The multi-process tests rendezvous on the loopback (``--standalone`` picks a free port) with one thread a process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import QUICK_MEASURE

ROOT = Path(__file__).resolve().parents[1]
FIT = ROOT / "tests" / "distributed_fit.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]

# How far the two-process run of tests/distributed_fit.py may be from the one-process run, in top-1 points on the 450
# digits test images (one image = 0.22 points). 0.5 points would not be honest for this job: DDP without
# SyncBatchNorm normalises each rank's half batch with its own statistics, so the two runs take different, equally
# valid paths, and the one-process run alone already spreads 1.8 points over seeds (measured, 10 epochs: seeds 0, 1,
# 2 gave 95.1, 93.8 and 95.6%; 2 processes, seed 0: 97.1%).
ACCURACY_TOLERANCE_POINTS = 3.0


def _env(tmp_path: Path) -> dict[str, str]:
    """One thread a process, rendezvous on the loopback, and a baseline cache of the test's own."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT),
            "COMPRESS_CACHE": str(tmp_path / "cache")}


def test_shards_of_all_ranks_are_disjoint_and_cover_the_data():
    import torch

    from compress.distributed import shard

    batch = 64
    for n, world in ((1347, 2), (1347, 3), (64, 4), (5, 2)):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
        # what _epoch does: each rank takes its share of every global batch of the seeded permutation
        shares = [torch.cat([shard(perm[i:i + batch], rank_=r, world=world) for i in range(0, n, batch)])
                  for r in range(world)]
        together = torch.cat(shares)
        assert torch.equal(together.sort().values, torch.arange(n))  # disjoint and covering
        if batch % world == 0:  # then exactly DistributedSampler's split of the permutation (without padding)
            assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1
            for r in range(world):
                assert torch.equal(shares[r], perm[r::world])


def test_one_process_helpers_change_nothing():
    import torch

    from compress import distributed

    model = torch.nn.Linear(2, 2)
    assert not distributed.launched() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.init("cpu") is False
    assert distributed.wrap(model, "cpu") is model
    assert distributed.all_sum(1.5, 2.0) == [1.5, 2.0]
    assert distributed.from_main("runs/x") == "runs/x"
    assert distributed.all_finite(torch.tensor(1.0)) and not distributed.all_finite(torch.tensor(float("nan")))


def test_bad_nproc_is_one_clear_error(capsys):
    from compress.cli import main

    assert main(["run", "tiny_mobilenet_v3", "--data", "digits", "--nproc", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--nproc must be at least 1" in err[0]


def _load(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_two_ranks_train_identically_and_match_one_process(tmp_path):
    import torch

    # setup / execute: the same recipe and global batch (64) on 2 processes (32 a rank), then on one
    from tests import distributed_fit

    subprocess.run([*TORCHRUN, "--nproc-per-node=2", str(FIT), str(tmp_path)], env=_env(tmp_path), check=True,
                   stdout=subprocess.DEVNULL)
    threads = torch.get_num_threads()
    try:  # the one-process run, here: a third interpreter would import torch and compress again
        distributed_fit.train(tmp_path)
    finally:
        torch.set_num_threads(threads)
    r0, r1, alone = (_load(tmp_path / name) for name in ("rank0_of_2.pt", "rank1_of_2.pt", "rank0_of_1.pt"))

    # assert: every parameter and buffer is bit-identical across the ranks
    assert r0["state_dict"].keys() == r1["state_dict"].keys()
    for k in r0["state_dict"]:
        assert torch.equal(r0["state_dict"][k], r1["state_dict"][k]), k
    assert r0["losses"] == r1["losses"]  # the all-reduced epoch losses: both ranks took the same decisions
    # the ranks' shards are disjoint and cover the training split
    n = r0["train_images"]
    assert not set(r0["shard"].tolist()) & set(r1["shard"].tolist())
    assert sorted(r0["shard"].tolist() + r1["shard"].tolist()) == list(range(n))
    # the model learned, and as well as alone with the same global batch (see ACCURACY_TOLERANCE_POINTS)
    assert alone["top1"] > 80
    assert abs(r0["top1"] - alone["top1"]) <= ACCURACY_TOLERANCE_POINTS, (r0["top1"], alone["top1"])


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out += children.get(pid, [])
        todo += children.get(pid, [])
    return out


def _worker(root: int, rank: int) -> int | None:
    for pid in _descendants(root):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RESTART_COUNT=0" in env:
            return pid
    return None


@pytest.mark.slow
def test_killed_worker_is_restarted_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    # --lr pinned: this test is about the restart, not the LR range test (which once guessed 0.4 here and left the
    # run at chance, 12.7%; finding no divergence, it now keeps the recipe's 0.1, at which the run reaches 65%).
    cmd = [sys.executable, "-m", "compress", "run", "tiny_mobilenet_v3", "--data", "digits", "--epochs", "3",
           "--lr", "0.1", "--nproc", "2", "--max-restarts", "1", "--config", str(QUICK_MEASURE), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # execute: once the first epoch's checkpoint is written, SIGKILL rank 1
        checkpoint = out / "baseline" / "train_state.pt"
        deadline = time.monotonic() + 300
        while not checkpoint.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training never wrote its first checkpoint"
            time.sleep(0.05)
        victim = _worker(proc.pid, rank=1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    # assert: torchrun restarted the workers, the restarted run went on from the checkpoint, and finished
    assert proc.returncode == 0, output[-3000:]
    assert "failed (exitcode: -9) local_rank: 1" in output  # torchrun saw the kill, then restarted the group
    epochs = [line for line in output.splitlines() if line.startswith("[baseline] epoch ")]
    assert sum(line.startswith("[baseline] epoch 1/3") for line in epochs) == 1, epochs  # epoch 1 never redone
    assert any(line.startswith("[baseline] epoch 3/3") for line in epochs), epochs
    assert (out / "report.json").is_file() and (out / "edge").is_dir()
    assert not (out / "progress.json").exists()
