"""Data-parallel training (issue #11) on PyTorch DDP, launched by torchrun; nothing of our own schedules processes.

``torchrun --nproc-per-node N -m compress run ...`` (or ``compress run ... --nproc N``, which starts torchrun)
trains the baseline and the recovery fine-tune on N processes. Every rank builds the same model, draws the same
seeded permutation and augmentation for the *global* batch, and trains on its strided share of it, so the global
batch, the learning rate and the images each step sees are the one-process run's (DistributedSampler with
``set_epoch``, in effect). Rank 0 alone writes: checkpoints, measurement, export, quantization, bundle, reports.
The other ranks train, then exit. torchrun restarts a killed worker group (``--max-restarts``) and the run resumes
from the last per-epoch checkpoint, which rank 0 writes and every rank reads.

In one process (no torchrun environment) every helper here is a no-op, and training is bit-identical to before.

>>> compress run tiny_mobilenet_v3 --data digits --nproc 2 --out runs/ddp  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.core import Context
from compress.errors import CompressError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

# Rank 0 measures, exports and quantizes between the baseline's training and the fine-tune's, while the other
# ranks wait in the fine-tune's first collective: the default 30 min could be too short on a big model.
TIMEOUT_MINUTES = 120


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def restarted() -> bool:
    """Whether torchrun restarted this worker group after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def init(device: str = "cpu") -> bool:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) once; False in a single process."""
    if not launched():
        return False
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" then means this rank's GPU
    timeout = datetime.timedelta(minutes=TIMEOUT_MINUTES)
    store, rank_, world = next(dist.rendezvous("env://", timeout=timeout))
    # torchrun's store outlives a restart of the worker group, and with it the old group's addresses: without a
    # prefix per restart, a restarted rank can read a dead peer's address and fail with "connection refused".
    store = dist.PrefixStore(f"compress.restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group(backend, store=store, rank=rank_, world_size=world, timeout=timeout)
    return True


def _active() -> bool:
    import torch.distributed as dist

    return launched() and dist.is_available() and dist.is_initialized()


def rank() -> int:
    if not launched():
        return 0
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def is_main() -> bool:
    """Rank 0, the only process that writes checkpoints, artifacts and reports (always true in one process)."""
    return rank() == 0


def shard(idx: "torch.Tensor", *, rank_: int | None = None, world: int | None = None) -> "torch.Tensor":
    """This rank's share of a global batch (or of a whole permutation): every ``world``-th index from ``rank``.

    The shares of all ranks are disjoint and together cover ``idx``; slicing each global batch this way gives the
    same per-rank index sets as slicing the permutation (DistributedSampler without padding).
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return idx[r::w]


def wrap(model: "nn.Module", device: str) -> "nn.Module":
    """``model`` inside DistributedDataParallel when distributed, else ``model`` itself. Wrap after choosing which
    parameters train: DDP reduces the gradients of the parameters that require one at wrapping time."""
    if not _active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [int(os.environ.get("LOCAL_RANK", "0"))] if device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids)


def all_sum(*values: float) -> list[float]:
    """Sums over the ranks of a few numbers (float64), identical on every rank; the values themselves alone."""
    if not _active():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_finite(loss: "torch.Tensor") -> bool:
    """Whether the loss is finite on every rank: all ranks skip a diverging epoch together, or none does."""
    import torch

    finite = bool(torch.isfinite(loss))
    if not _active():
        return finite
    return all_sum(0.0 if finite else 1.0)[0] == 0.0


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object), e.g. the run folder or the LR range test's pick."""
    if not _active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _active():
        import torch.distributed as dist

        dist.barrier()


def finish() -> None:
    """Leave the process group (at the end of a rank's work)."""
    if _active():
        import torch.distributed as dist

        dist.destroy_process_group()


class ReadOnlyContext(Context):
    """The context of ranks other than 0 (``pipeline._train_only``): paths are only computed, never made."""

    def artifact(self, step: str, filename: str) -> Path:
        return self.run_dir / step / filename


def launch(argv: list[str], *, nproc: int, max_restarts: int = 0) -> int:
    """``compress run ... --nproc N``: torchrun (``torch.distributed.run``, in this process) starts N copies of
    ``python -m compress`` with the same arguments minus ``--nproc`` and ``--max-restarts``, and restarts them up to
    ``max_restarts`` times after one dies. A failure is one :class:`CompressError` line."""
    if nproc < 1 or max_restarts < 0:
        raise CompressError(f"--nproc must be at least 1 and --max-restarts 0 or more, got {nproc} and "
                            f"{max_restarts}")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # --standalone is one machine: rendezvous on the loopback
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # else torchrun sets 1
    rest = _without(argv, ("--nproc", "--max-restarts"))
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
                        "-m", "compress", *rest]))
    except ChildFailedError as e:
        codes = ", ".join(f"rank {r}: {f.exitcode}" for r, f in sorted(e.failures.items()))
        raise CompressError(f"the {nproc} training processes failed after {max_restarts} restart(s) (exit status "
                            f"{codes}); their messages are above. Finished epochs are kept: rerun the same "
                            "command to resume") from None
    return 0


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
    return out
