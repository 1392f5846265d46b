"""What the terminal shows during a run: a live step table and progress bars on a TTY (rich),
plain one-line updates when piped, and nothing with ``--quiet`` or ``--json``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.report import RunReport, StepReport

def step_table(report: "RunReport"):
    """A compact rich Table of the steps so far: values, and changes against each step's reference."""
    from rich.table import Table

    from compress.render import COLUMNS, step_cells, step_label

    t = Table(title=f"{report.model} on {report.dataset['name']}", title_justify="left", pad_edge=False,
              caption="changes: accuracy vs the baseline; ONNX steps vs the baseline's FP32 ONNX export, torch steps "
                      "vs the baseline in eager", caption_justify="left")
    t.add_column("step", justify="left", no_wrap=True)
    for col in COLUMNS:
        if col.key == "params":
            continue
        t.add_column(col.header, justify="right", no_wrap=True)
    skip = [i for i, col in enumerate(COLUMNS) if col.key == "params"]
    for s in report.steps:
        cells = [c for i, c in enumerate(step_cells(report, s)) if i not in skip]
        t.add_row(step_label(s), *[_rich_cell(c) for c in cells])
    return t


def _rich_cell(c) -> str:
    from rich.markup import escape

    color = {"good": "green", "bad": "red"}.get(c.tone, "dim")
    return escape(c.text) + (f"\n[{color}]{escape(c.delta)}[/]" if c.delta else "")


class Progress:
    """Progress hooks called by the pipeline (``step_started``, ``epoch``, ``tick``, ``step_done``)."""

    def __init__(self, *, mode: str = "auto", stream=None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "rich" if self.stream.isatty() else "plain"
        self.mode = mode  # rich | plain | quiet
        self._live = None
        self._bar = None
        self._task = None
        self._task_name = None
        self._report = None
        self._step = ""
        self._done = 0

    # -- lifecycle
    def __enter__(self) -> "Progress":
        if self.mode == "rich":
            from rich.console import Console, Group
            from rich.live import Live
            from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._console = Console(file=self.stream)
            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=self._console)
            self._group = Group
            self._live = Live(self._bar, console=self._console, refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def _render(self) -> None:
        if self._live is not None and self._report is not None:
            self._live.update(self._group(step_table(self._report), self._bar))

    def _plain(self, text: str) -> None:
        if self.mode == "plain":
            print(text, file=self.stream, flush=True)

    # -- hooks
    def step_started(self, step: str, title: str) -> None:
        self._step = step
        self._plain(f"[{step}] {title} ...")
        self._set_task(f"{step}: {title}", None)

    def resumed(self, steps: list[str]) -> None:
        msg = f"resuming: {', '.join(steps)} already done and verified (sha256)"
        self._plain(msg)
        if self._bar is not None:
            self._bar.console.print(f"[dim]{msg}[/dim]")

    def step_measuring(self, step: str) -> None:
        self._plain(f"[{step}] measuring accuracy, latency and energy ...")
        self._set_task(f"{step}: measuring", None)

    def epoch(self, info: dict) -> None:
        head = " (head only)" if info.get("head_only") else " (quantization-aware)" if info.get("quant_aware") else ""
        self._plain(f"[{self._step}] epoch {info['epoch']}/{info['epochs']}{head}: loss {info['loss']:.4f}, "
                    f"train acc {info['train_acc_pct']:.2f}%, {info['seconds']:.0f} s")
        if self._bar is not None:
            self._bar.console.print(f"  [dim]{self._step} epoch {info['epoch']}/{info['epochs']}{head}: "
                                    f"loss {info['loss']:.4f}  train acc {info['train_acc_pct']:.2f}%  "
                                    f"{info['seconds']:.0f} s[/dim]")

    def warn(self, step: str, message: str) -> None:
        if self.mode == "quiet":
            return
        if self._bar is not None:
            self._bar.console.print(f"[bold yellow]WARNING[/] [{step}] {message}")
        else:
            print(f"WARNING [{step}] {message}", file=self.stream, flush=True)

    def tick(self, task: str, done: int, total: int) -> None:
        if self._bar is None:
            return
        name = f"{self._step}: {task}"
        if self._task_name != name or done < self._done:
            # A new task, or the same one starting over (the next epoch): a fresh bar, so the time-left estimate
            # is never computed across a counter that went backwards (it read "0:00:00" mid-epoch).
            self._set_task(name, total)
        self._done = done
        self._bar.update(self._task, completed=min(done, total), total=total)

    def step_done(self, step: "StepReport", report: "RunReport") -> None:
        self._report = report
        m = step.metrics
        self._plain(f"[{step.step}] done: top-1 {m.top1_pct:.2f}%, {m.size_bytes:,} bytes, "
                    f"{m.latency_ms_median:.3f} ms at batch 1 ({m.runtime})" + (" (cached)" if step.cache_hit else ""))
        self._render()

    def _set_task(self, name: str, total: int | None) -> None:
        if self._bar is None:
            return
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(name, total=total)
        self._task_name = name
        self._done = 0


def print_summary(report: "RunReport", run_dir: Any, stream=None) -> None:
    """The final table and where things are. On a terminal, a rich table; anywhere else (a file, a pipe, a CI
    log), the Markdown table of report.md, which is complete at any width."""
    from compress.render import TABLE_HEADERS, headline, markdown_table, ratio_note, table_rows

    stream = stream or sys.stdout
    if stream.isatty():
        from rich.console import Console

        console = Console(file=stream, highlight=False)
        console.print(step_table(report))
        console.print(headline(report).replace("**", ""))
        console.print(f"Run folder: {run_dir}  (report.md, report.html, report.json, edge/)")
        return
    print(markdown_table(TABLE_HEADERS, table_rows(report)), file=stream)
    print(f"\n{ratio_note(report)}\n\n{headline(report).replace('**', '')}", file=stream)
    print(f"Run folder: {run_dir}  (report.md, report.html, report.json, edge/)", file=stream, flush=True)


class library_output_to:
    """Send library warnings and log records to ``log_file`` instead of the user's terminal.

    Deprecation notes from exporters and quantizers, and codecarbon's hardware chatter, mean nothing
    to a user mid-run; they stay in ``RUN_DIR/compress.log`` for whoever needs them.
    """

    NOISY = ("codecarbon", "ort_format_model", "onnxruntime", "torch.onnx", "torch_pruning", "onnxscript", "py.warnings")

    def __init__(self, log_file):
        self.log_file = log_file

    def __enter__(self):
        import logging
        import warnings

        self._handler = logging.FileHandler(self.log_file)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        self._root_state = (root.level, list(root.handlers))
        root.handlers = [self._handler]
        root.setLevel(logging.INFO)
        self._saved = {}
        for name in self.NOISY:
            lg = logging.getLogger(name)
            self._saved[name] = (lg.handlers[:], lg.propagate)
            lg.handlers = []
            lg.propagate = True
        self._warn_ctx = warnings.catch_warnings()
        self._warn_ctx.__enter__()
        warnings.simplefilter("default")
        logging.captureWarnings(True)
        return self

    def __exit__(self, *exc):
        import logging

        logging.captureWarnings(False)
        self._warn_ctx.__exit__(*exc)
        for name, (handlers, propagate) in self._saved.items():
            lg = logging.getLogger(name)
            lg.handlers, lg.propagate = handlers, propagate
        root = logging.getLogger()
        root.setLevel(self._root_state[0])
        root.handlers = self._root_state[1]
        self._handler.close()
