"""ONNX Runtime's quantizer output, kept off the terminal and stdout and written to the run log instead.

The log is the ``compress.quantize`` logger (``compress.log`` in a run folder under the CLI).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("compress.quantize")
log.addHandler(logging.NullHandler())  # never the terminal when nobody configured logging


class _OrtRecords(logging.Handler):
    """Stands in for the root logger's handlers: keeps onnxruntime's records, passes everyone else's on."""

    def __init__(self, others: list[logging.Handler]):
        super().__init__()
        self.others, self.kept = others, []  # kept: onnxruntime's records, replayed by quantizer_output_to_log

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("onnxruntime") or "onnxruntime" in Path(record.pathname).parts:
            self.kept.append(record)
            return
        for h in self.others or [logging.lastResort]:
            if h is not None and record.levelno >= h.level:
                h.handle(record)


@contextmanager
def quantizer_output_to_log() -> Iterator[list[str]]:
    """Keep ONNX Runtime's quantizer off the terminal and stdout, and yield the list of its warnings.

    Its calibrators ``print`` their progress (which broke ``--json``), it warns through ``warnings`` and the
    root logger. All of it goes to the ``compress.quantize`` logger (the run log); the list gets the warnings
    (Python warnings and log records at WARNING or above) once the block ends. ORT's C++ logger prints nothing.
    """
    import contextlib
    import io
    import warnings
    from collections import Counter

    caught: list[str] = []
    root = logging.getLogger()
    saved = root.handlers[:]
    records = _OrtRecords(saved)
    out = io.StringIO()
    root.handlers = [records]
    try:
        with warnings.catch_warnings(record=True) as raised, contextlib.redirect_stdout(out):
            warnings.simplefilter("always")
            yield caught
    finally:
        root.handlers = saved
        for line, times in Counter(out.getvalue().splitlines()).items():  # a line per calibration batch, at times
            log.info("onnxruntime: %s%s", line, f" (×{times})" if times > 1 else "")
        for r in records.kept:
            log.log(r.levelno, "onnxruntime: %s", r.getMessage())
            if r.levelno >= logging.WARNING:
                caught.append(r.getMessage())
        for w in raised:
            log.warning("%s: %s (%s:%d)", w.category.__name__, w.message, w.filename, w.lineno)
            caught.append(f"{w.category.__name__}: {w.message}")
