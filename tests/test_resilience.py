"""Nothing lost, nothing run that should not be: kill and resume, safe loading, determinism, locks."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compress import checkpoint as ckpt
from compress.cli import main
from compress.errors import CompressError
from compress.models import create_model
from compress.report import RunReport
from compress.rundir import LOCK, prepare_run_dir
from tests.conftest import SMOKE

ROOT = Path(__file__).resolve().parents[1]


def _compress(*args: str) -> subprocess.Popen:
    # Same environment (thread count included) as this process: bit-identical results need the same
    # number of threads, since parallel float sums round differently.
    return subprocess.Popen([sys.executable, "-m", "compress.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_during_finetune_then_resume_reaches_the_same_metrics(smoke_run, tmp_path):
    """Kill -9 once the first fine-tune epoch is checkpointed, resume, and match an uninterrupted run."""
    out = tmp_path / "killed"
    proc = _compress("run", "--config", str(SMOKE), "--out", str(out), "--quiet")
    state = out / "finetune" / "train_state.pt"
    deadline = time.time() + 600
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists() and (out / "progress.json").exists()
    assert not (out / "finetune" / "model.pt").exists()  # the unfinished step left no artifact behind

    # Resuming needs only the folder: the config comes from its config.yaml (issue #16.9).
    assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 0

    resumed, reference = RunReport.load(out), RunReport.load(smoke_run)
    assert [s.step for s in resumed.steps] == [s.step for s in reference.steps]
    for a, b in zip(resumed.steps, reference.steps):
        for key in ("top1_pct", "params", "macs", "size_bytes"):
            assert getattr(a.metrics, key) == getattr(b.metrics, key), (a.step, key)
        if a.kind == "torch":
            assert a.artifact_sha256 == b.artifact_sha256, a.step  # bit-identical weights
    assert not (out / LOCK).exists() and not (out / "progress.json").exists()


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Evil()}))

    with pytest.raises(CompressError, match="refusing to load .*would run code"):
        ckpt.load(evil)
    assert main(["run", "tiny_mobilenet_v3", "--data", "digits", "--weights", str(evil), "--out",
                 str(tmp_path / "r"), "--quiet"]) == 2
    assert not marker.exists()


def test_torch_training_is_deterministic(tmp_path, monkeypatch):
    """Same config and seed on the CPU → the same weights, byte for byte (fresh caches, no reuse)."""
    from compress.pipeline import Baseline
    from compress.train import Recipe
    from tests.helpers import context, fmnist_subset

    hashes = []
    for i in range(2):
        monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / f"cache{i}"))
        with context(tmp_path / f"run{i}", data=fmnist_subset(600, 100)) as ctx:
            model = Baseline(model="tiny_mobilenet_v3", weights="none",
                             recipe=Recipe(epochs=1, batch_size=64, lr=0.1))(None, ctx)
        assert ctx.notes["baseline"]["cache_hit"] is False
        f = tmp_path / f"m{i}.pt"
        ckpt.save(ckpt.model_record(model), f)
        hashes.append(__import__("compress.pipeline", fromlist=["x"]).sha256_file(f))
    assert hashes[0] == hashes[1]


def test_pruned_artifact_round_trips_through_weights_only_loading(tmp_path):
    from compress.prune import Prune
    from tests.helpers import context, fmnist_subset

    model, _ = create_model("tiny_mobilenet_v3", num_classes=10)
    with context(tmp_path, data=fmnist_subset(300, 50)) as ctx:
        pruned = Prune(ratio=0.5, allocation="uniform")(model.eval(), ctx)
    f = tmp_path / "pruned.pt"
    ckpt.save(ckpt.model_record(pruned), f)
    fresh, _ = create_model("tiny_mobilenet_v3", num_classes=10)
    restored = ckpt.restore_model(ckpt.load(f), fresh)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(restored(x), pruned.eval()(x))
    via_weights, how = create_model("tiny_mobilenet_v3", num_classes=10, weights=str(f))  # `--weights PATH`
    assert how == f"loaded from {f}" and torch.equal(via_weights.eval()(x), pruned.eval()(x))


def test_second_run_into_a_locked_folder_is_refused(tmp_path):
    run_dir = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir.mkdir()
        (run_dir / LOCK).write_text(f"{holder.pid}@{os.uname().nodename}")
        with pytest.raises(CompressError, match="in use by another compress run"):
            with prepare_run_dir(run_dir):
                pass
    finally:
        holder.kill()
        holder.wait()
    with prepare_run_dir(run_dir):  # the holder is gone: its lock is stale and taken over
        assert (run_dir / LOCK).read_text().startswith(f"{os.getpid()}@")
    assert not (run_dir / LOCK).exists()


def test_finished_run_is_never_overwritten(smoke_run):
    before = (smoke_run / "report.json").read_bytes()
    assert main(["run", "--config", str(SMOKE), "--out", str(smoke_run), "--quiet"]) == 2
    assert main(["run", "--config", str(SMOKE), "--out", str(smoke_run), "--quiet", "--resume"]) == 2
    assert (smoke_run / "report.json").read_bytes() == before


def test_resume_with_another_config_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "progress.json").write_text("{}")
    (out / "config.yaml").write_text("model: tiny_mobilenet_v3\ndata: digits\n")
    assert main(["run", "tiny_mobilenet_v3", "--data", "digits", "--prune", "0.3", "--out", str(out),
                 "--quiet"]) == 2
    assert "unfinished run with another config" in capsys.readouterr().err


def test_a_run_that_fails_before_any_work_removes_the_folders_it_created(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "other").mkdir()  # someone else's run beside ours
    run_dir = tmp_path / "runs" / "new" / "deeper"

    with pytest.raises(CompressError, match="boom"):
        with prepare_run_dir(run_dir):
            (run_dir / "config.yaml").write_text("model: x\n")
            raise CompressError("boom")

    assert not (tmp_path / "runs" / "new").exists()  # the run folder and the parent it created
    assert (tmp_path / "runs" / "other").is_dir()  # what existed before stays


def test_a_failed_run_keeps_work_that_can_be_resumed(tmp_path):
    run_dir = tmp_path / "run"

    with pytest.raises(KeyboardInterrupt):
        with prepare_run_dir(run_dir):
            (run_dir / "baseline").mkdir()
            (run_dir / "baseline" / "train_state.pt").write_bytes(b"epoch 3")  # an epoch of baseline training
            raise KeyboardInterrupt

    assert (run_dir / "baseline" / "train_state.pt").exists()
    with prepare_run_dir(run_dir, resume=True):  # and --resume accepts it: fit() continues from the checkpoint
        pass


def test_a_failed_run_never_removes_a_folder_it_did_not_create(tmp_path):
    run_dir = tmp_path / "existing"
    run_dir.mkdir()

    with pytest.raises(CompressError):
        with prepare_run_dir(run_dir):
            (run_dir / "config.yaml").write_text("model: x\n")
            raise CompressError("boom")

    assert run_dir.is_dir()
