"""Run folders: the default name, a lock against two runs in one folder, and resume/force rules.

- A folder with a finished run (``report.json``) is never overwritten unless ``--force``.
- A folder with an unfinished run (``progress.json``) is resumed from its last finished step.
- A second run into a folder that a live run holds is refused; a lock left by a dead process is taken over.
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
from compress.pipeline import PROGRESS, STAGE_NAMES

if TYPE_CHECKING:
    from compress.config import RunConfig

LOCK = ".compress.lock"
# What compress writes into a run folder; --force removes these and nothing else.
OWNED = ("config.yaml", "report.json", "report.md", "report.html", PROGRESS, "compress.log", "plots",
         "edge", "edge.partial", *STAGE_NAMES)


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


@contextmanager
def prepare_run_dir(run_dir: Path, *, resume: bool = False, force: bool = False) -> Iterator[Path]:
    """Check ``run_dir`` is usable, lock it, and apply the resume/force rules, before any expensive work."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CompressError(f"output path {run_dir} is a file: choose a folder with --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CompressError(f"cannot create run folder {run_dir}: {e.strerror}: choose another --out") from None
    if not os.access(run_dir, os.W_OK):
        raise CompressError(f"run folder {run_dir} is not writable: choose another --out or fix its permissions")
    with run_lock(run_dir):
        finished = (run_dir / "report.json").exists()
        unfinished = (run_dir / PROGRESS).exists()
        if force:
            for name in OWNED:
                p = run_dir / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        elif finished:
            raise CompressError(f"{run_dir} already holds a finished run"
                                + (": there is nothing to resume" if resume else "")
                                + "; choose another --out, or add --force to replace it")
        elif resume and not unfinished:
            raise CompressError(f"nothing to resume in {run_dir}: no finished step is recorded there; "
                                "drop --resume to start a new run")
        yield run_dir
