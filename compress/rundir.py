"""Run folders: the default name, and preparing one safely before any work starts."""

from __future__ import annotations

import datetime as _dt
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from compress.errors import CompressError

if TYPE_CHECKING:
    from compress.config import RunConfig


def default_run_dir(cfg: "RunConfig") -> Path:
    """``runs/<UTC time>_<model>_<data>``: a new folder for every run, so nothing is overwritten."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    data = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(cfg.data).name or "data")
    return Path("runs") / f"{stamp}_{cfg.model}_{data}"


@contextmanager
def prepare_run_dir(run_dir: Path) -> Iterator[Path]:
    """Create ``run_dir`` (or check it is usable) before any expensive work."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CompressError(f"output path {run_dir} is a file: choose a folder with --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CompressError(f"cannot create run folder {run_dir}: {e.strerror}: choose another --out") from None
    if not os.access(run_dir, os.W_OK):
        raise CompressError(f"run folder {run_dir} is not writable: choose another --out or fix its permissions")
    if (run_dir / "report.json").exists():
        raise CompressError(f"{run_dir} already holds a finished run: choose another --out")
    yield run_dir
