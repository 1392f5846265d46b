"""Run folders: the default name, a lock against two runs in one folder, and resume/force rules.

- A folder with a finished run (``report.json``) is never overwritten unless ``--force``.
- A folder with an unfinished run (``progress.json``, or a training checkpoint) is resumed from its last
  finished step (or epoch).
- A second run into a folder that a live run holds is refused; a lock left by a dead process is taken over.
- A run that fails before any work worth resuming leaves nothing behind: the folders it created are removed.
  A folder that existed before the run is never removed.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from compress.errors import CompressError
from compress.chain import STAGE_NAMES
from compress.pipeline import PROGRESS, REFERENCE

if TYPE_CHECKING:
    from compress.config import RunConfig

LOCK = ".compress.lock"
# What compress writes into a run folder; --force removes these and nothing else.
OWNED = ("config.yaml", "report.json", "report.md", "report.html", PROGRESS, "compress.log", "plots",
         "edge", "edge.partial", REFERENCE, *STAGE_NAMES)
CHECKPOINT = "train_state.pt"  # a step's per-epoch training state (compress.core.Context.checkpoint)


def default_run_dir(cfg: "RunConfig") -> Path:
    """``runs/<UTC time>_<model>_<data>``: a new folder for every run, so nothing is overwritten."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    data = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(cfg.data).name or "data")
    return Path("runs") / f"{stamp}_{cfg.model}_{data}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock file holding ``pid@host``; a lock whose process is gone is stale and replaced."""
    lock = run_dir / LOCK
    me = f"{os.getpid()}@{socket.gethostname()}"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = lock.read_text().strip() if lock.exists() else ""
            pid, _, host = owner.partition("@")
            if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
                lock.unlink(missing_ok=True)  # stale: its process died without cleaning up
                continue
            raise CompressError(f"{run_dir} is in use by another compress run ({owner or 'unknown'}): wait for it, "
                                f"or choose another --out (if no run is active, delete {lock})") from None
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    try:
        yield
    finally:
        if lock.exists() and lock.read_text().strip() == me:
            lock.unlink()


def resumable(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds work a later run can continue: finished steps, or a training checkpoint."""
    run_dir = Path(run_dir)
    return (run_dir / PROGRESS).is_file() or any(run_dir.glob(f"*/{CHECKPOINT}"))


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and each parent that does not exist yet, deepest first: what ``mkdir(parents=True)`` creates."""
    out = []
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            break
        out.append(p)
    return out


def _remove_created(created: list[Path]) -> None:
    """Undo the folders a failed run created: the run folder itself (compress wrote everything in it), then each
    parent it created while still empty. ``rmdir`` of a parent fails, and stops, if anything else appeared there."""
    if not created:
        return
    shutil.rmtree(created[0], ignore_errors=True)
    for parent in created[1:]:
        try:
            parent.rmdir()
        except OSError:
            break


@contextmanager
def prepare_run_dir(run_dir: Path, *, resume: bool = False, force: bool = False) -> Iterator[Path]:
    """Check ``run_dir`` is usable, lock it, and apply the resume/force rules, before any expensive work.

    If the run fails (or is interrupted) before it left anything to resume, the folders this call created are
    removed again, so a mistake such as a missing ``--data`` folder leaves no half-made run folder behind.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CompressError(f"output path {run_dir} is a file: choose a folder with --out")
    created = _missing_folders(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_created([p for p in created if p.exists()])
        raise CompressError(f"cannot create run folder {run_dir}: {e.strerror}: choose another --out") from None
    try:
        if not os.access(run_dir, os.W_OK):
            raise CompressError(f"run folder {run_dir} is not writable: choose another --out or fix its permissions")
        with run_lock(run_dir):
            finished = (run_dir / "report.json").exists()
            if force:
                for name in OWNED:
                    p = run_dir / name
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            elif finished:
                raise CompressError(f"{run_dir} already holds a finished run"
                                    + (": there is nothing to resume" if resume else "")
                                    + "; choose another --out, or add --force to replace it")
            elif resume and not resumable(run_dir):
                raise CompressError(f"nothing to resume in {run_dir}: no finished step is recorded there; "
                                    "drop --resume to start a new run")
            yield run_dir
    except BaseException:
        if created and not resumable(run_dir) and not (run_dir / "report.json").exists():
            _remove_created(created)
        raise
