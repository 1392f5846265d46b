"""Compare finished runs side by side: one table, an accuracy-vs-latency figure, and the Pareto frontier.

Reads each run folder's report.json and nothing else. Writes ``compare.html`` (self-contained, like
report.html), ``compare.md`` and the figure as ``compare_accuracy_latency.png`` into ``out_dir``.

Accuracies only compare on the same test images, so the Pareto frontier is computed per data set (its
fingerprint): with runs on several data sets, each run is judged against the runs on its own data, and each data
set gets its own figure (``compare_accuracy_latency_<data>.png``).

>>> compare([Path("runs/p0"), Path("runs/p50"), Path("runs/p50_int8")], Path("runs/compare"))  # doctest: +SKIP
Comparison(html=PosixPath('runs/compare/compare.html'), md=PosixPath('runs/compare/compare.md'), table='| run | ...')
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from compress.errors import CompressError

if TYPE_CHECKING:
    from compress.records import RunReport

FIGURE = "compare_accuracy_latency.png"
PROGRESS = "progress.json"  # an unfinished run's record (compress.resume.PROGRESS)
FRONTIER_MARK = "★"

# (header, key in Row.cells); the table both outputs share
TABLE = [
    ("run", "run"), ("Pareto", "frontier"), ("model", "model"), ("data", "data"), ("prune", "prune"),
    ("int8", "int8"), ("top-1 %", "top1"), ("size", "size"), ("MACs", "macs"), ("latency p50 ms", "latency"),
    ("energy/inf", "energy"), ("CO₂ compressing", "co2"),
]
LEFT = 6  # the first six columns are text


@dataclass(frozen=True)
class Run:
    label: str  # the shortest path suffix that tells this run folder from the others
    path: Path
    report: "RunReport"

    @property
    def final(self):
        return self.report.deployed()

    @property
    def top1(self) -> float:
        return self.final.metrics.top1_pct

    @property
    def latency_ms(self) -> float:
        return self.final.metrics.latency_ms_median

    @property
    def data_key(self) -> tuple:
        """Which test images the accuracy is measured on: the data set's fingerprint (name and size if absent)."""
        d = self.report.dataset
        return (d.get("fingerprint"),) if d.get("fingerprint") else (d.get("name"), d.get("test_images"))


class Comparison(NamedTuple):
    html: Path  # compare.html
    md: Path  # compare.md
    table: str  # the Markdown table with its warnings and legend, for the terminal


def compare(run_dirs: list[Path], out_dir: Path) -> Comparison:
    """Write ``compare.html``, ``compare.md`` and the figures for ``run_dirs`` into ``out_dir``."""
    from compress import plots
    from compress.checkpoint import atomic_write

    runs = load_runs(run_dirs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CompressError(f"--out {out_dir} is a file: give a folder for compare.html and compare.md")
    flags = pareto_per_data_set(runs)
    rows = [row(r, f) for r, f in zip(runs, flags)]
    notes = warnings(runs)
    groups = data_sets(runs)
    figures = []  # (file name, data set label, png)
    for label, members in groups.items():
        points = [_point(runs[i], flags[i]) for i in members]
        name = FIGURE if len(groups) == 1 else f"compare_accuracy_latency_{_slug(label)}.png"
        figures.append((name, label, plots.png(plots.compare_accuracy_latency(points))))
    for name, _, png in figures:
        atomic_write(out_dir / name, lambda p, data=png: p.write_bytes(data))
    table = render_table(rows, notes, several=len(groups) > 1)
    md = atomic_write(out_dir / "compare.md", lambda p: p.write_text(render_markdown(runs, table, figures),
                                                                    encoding="utf-8"))
    html = atomic_write(out_dir / "compare.html", lambda p: p.write_text(render_html(runs, rows, notes, figures),
                                                                        encoding="utf-8"))
    return Comparison(html, md, table)


def load_runs(run_dirs: list[Path]) -> list[Run]:
    """Each folder's report, checked to hold what the comparison needs, before anything is drawn."""
    from compress.records import RunReport

    if not run_dirs:
        raise CompressError("compare needs at least one run folder (a folder written by `compress run`)")
    paths = [Path(d) for d in run_dirs]
    seen: dict[Path, Path] = {}
    for path in paths:
        if not path.is_dir():
            raise CompressError(f"{path} is not a folder: give run folders written by `compress run`")
        if path.resolve() in seen:
            raise CompressError(f"{path} is given twice (as {seen[path.resolve()]} and {path}): give each run once")
        seen[path.resolve()] = path
        if not (path / "report.json").exists() and (path / PROGRESS).exists():
            raise CompressError(f"{path} is an unfinished run (it has {PROGRESS} but no report.json yet): finish it "
                                f"with `compress run --out {path} --resume`, then compare")
    same: dict[str, Path] = {}
    for path in paths:
        f = path / "report.json"
        if f.is_file():
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            if digest in same:
                raise CompressError(f"{same[digest]} and {path} hold the same run (identical report.json): give each "
                                    "run once")
            same[digest] = path
    reports = []
    for path in paths:
        try:
            report = RunReport.load(path)
        except CompressError:
            raise
        except (OSError, ValueError, AttributeError) as e:  # unreadable, or JSON that is not an object
            raise CompressError(f"{path / 'report.json'} is not a compress report ({type(e).__name__}): "
                                "re-run the job") from None
        if not report.steps:
            raise CompressError(f"{path / 'report.json'} has no steps: the run did not finish; re-run it")
        reports.append(report)
    return [Run(label, path, report) for label, path, report in zip(labels(paths), paths, reports)]


def labels(paths: list[Path]) -> list[str]:
    """Folder names, lengthened to ``parent/name`` (and so on) only where two runs would share a name."""
    parts = [Path(p).resolve().parts for p in paths]
    out = []
    for i, p in enumerate(parts):
        n = 1
        while n < len(p) and any(q[-n:] == p[-n:] for j, q in enumerate(parts) if j != i and q != p):
            n += 1
        out.append("/".join(p[-n:]))
    return out


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For each (top-1, latency) point: True when no other point is at least as accurate and at least as fast,
    and strictly better in one of the two. Equal points are all on the frontier."""
    return [not any(a2 >= a and l2 <= l and (a2 > a or l2 < l) for a2, l2 in points) for a, l in points]


def data_sets(runs: list[Run]) -> dict[str, list[int]]:
    """Run indices grouped by data set (fingerprint), in first-seen order, labelled by the data set's name (with
    its fingerprint where two groups share a name)."""
    keys: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        keys.setdefault(r.data_key, []).append(i)
    names = [str(runs[m[0]].report.dataset.get("name", "data")) for m in keys.values()]
    out = {}
    for (key, members), name in zip(keys.items(), names):
        label = name if names.count(name) == 1 else f"{name} ({str(key[0])[:8]})"
        out[label] = members
    return out


def pareto_per_data_set(runs: list[Run]) -> list[bool]:
    """The Pareto flag of each run, among the runs on the same data set only: accuracies on other test images
    say nothing about this one."""
    flags = [False] * len(runs)
    for members in data_sets(runs).values():
        for i, f in zip(members, pareto([(runs[i].top1, runs[i].latency_ms) for i in members])):
            flags[i] = f
    return flags


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "data"


def row(run: Run, frontier: bool) -> dict[str, str]:
    """One table row as display strings, formatted by the report's own helpers."""
    from compress.render import carbon_break_even, fmt_bytes, fmt_co2, fmt_count, fmt_energy

    r, base, final = run.report, run.report.baseline, run.final
    m = final.metrics
    prune = 0 if "prune" in r.config and r.config["prune"] is None else (r.config.get("prune") or {}).get("ratio")
    d = f"{m.top1_pct - base.metrics.top1_pct:+.2f} pt" if final is not base else ""
    carbon = carbon_break_even(r)
    return {
        "run": run.label, "model": r.model, "data": str(r.dataset.get("name", "n/a")),
        "prune": "n/a" if prune is None else ("none" if not prune else f"{prune:g}"),
        "int8": int8_state(r),
        "top1": f"{m.top1_pct:.2f}" + (f" ({d})" if d else ""),
        "size": fmt_bytes(m.size_bytes),
        "macs": fmt_count(m.macs),
        "latency": f"{m.latency_ms_median:.3f}",
        "energy": fmt_energy(m.energy_per_inference_j),
        "co2": fmt_co2(carbon.get("compression_co2_g")) if final is not base else "none (baseline only)",
        "frontier": FRONTIER_MARK if frontier else "",
    }


def int8_state(report: "RunReport") -> str:
    """Whether the deployed model is INT8: "yes", "no", or "no (INT8 slower, not deployed)"."""
    if report.deployed().step == "quantize":
        return "yes"
    if report.has_step("quantize"):
        return "no (INT8 slower, not deployed)" if report.step("quantize").fallback else "no (outside --max-drop)"
    return "no"


def warnings(runs: list[Run]) -> list[str]:
    """What makes these numbers less comparable than they look, one line each."""
    out = []
    data = {(r.report.dataset.get("name"), r.report.dataset.get("fingerprint"), r.report.dataset.get("test_images"))
            for r in runs}
    names = sorted({str(d[0]) for d in data})
    if len(names) > 1:
        out.append(f"These runs use different data sets ({', '.join(names)}): their accuracies are measured on "
                   "different images and do not compare, so each data set has its own Pareto frontier.")
    elif len(data) > 1:
        out.append(f"These runs use different subsets or splits of {names[0]} (another fingerprint or test size): "
                   "their accuracies are measured on different images, so each has its own Pareto frontier.")
    setups = {(r.report.environment.get("cpu"), r.final.metrics.threads, r.final.metrics.latency_batch)
              for r in runs}
    if len(setups) > 1:
        out.append("Latency was measured on different CPUs, thread counts or batch sizes: "
                   + "; ".join(f"{cpu}, {t} thread(s), batch {b}" for cpu, t, b in sorted(setups, key=str)) + ".")
    methods = {r.final.metrics.energy_method for r in runs}
    if len(methods) > 1:
        out.append("Energy per inference comes from different methods in these runs: "
                   + "; ".join(sorted(str(x) for x in methods)) + ".")
    return out


def _point(run: Run, frontier: bool) -> dict:
    base = run.report.steps[0]
    p = {"label": run.label, "top1": run.top1, "latency_ms": run.latency_ms, "frontier": frontier}
    if base is not run.final:
        p["base_top1"] = base.metrics.top1_pct
        p["base_latency_ms"] = base.metrics.latency_ms_median
    return p


def legend(several: bool) -> str:
    scope = "on the same data set " if several else ""
    return (f"{FRONTIER_MARK} = on the Pareto frontier{' of its data set' if several else ''}: no other run "
            f"{scope}is both at least as accurate and at least as fast (deployed models, top-1 vs latency p50 at "
            "batch 1). top-1 in brackets: change against the run's own baseline.")


def render_table(rows: list[dict[str, str]], notes: list[str], *, several: bool = False) -> str:
    """The warnings, the Markdown table and its legend: compare.md's core, and what the terminal shows."""
    lines = [f"> **Warning:** {n}" for n in notes] + ([""] if notes else [])
    lines += ["| " + " | ".join(h for h, _ in TABLE) + " |", "|" + ":---|" * LEFT + "---:|" * (len(TABLE) - LEFT)]
    lines += ["| " + " | ".join(r[k].replace("|", "\\|") for _, k in TABLE) + " |" for r in rows]
    lines += ["", legend(several)]
    return "\n".join(lines)


def render_markdown(runs: list[Run], table: str, figures: list[tuple[str, str, bytes]]) -> str:
    lines = [f"# compress: {len(runs)} run{'s' if len(runs) != 1 else ''} compared", "", table, ""]
    for name, label, _ in figures:
        lines += [f"![accuracy vs latency{', ' + label if len(figures) > 1 else ''}]({name})", ""]
    lines += ["Runs:", ""]
    lines += [f"- **{r.label}**: `{r.path}` (created {r.report.created_utc})" for r in runs]
    return "\n".join(lines) + "\n"


def render_html(runs: list[Run], rows: list[dict[str, str]], notes: list[str],
                figures: list[tuple[str, str, bytes]]) -> str:
    from compress.html import Plot, render_page

    title = f"{len(runs)} run{'s' if len(runs) != 1 else ''} compared"
    caption = "Each run's final model (filled) and its baseline (hollow); the orange line is the Pareto frontier."
    if len(figures) == 1:
        fig = Plot("compare", "Accuracy vs latency", caption, figures[0][2], wide=True).item(file=figures[0][0])
    else:  # one panel per data set, stacked: a frontier never joins runs measured on different images
        fig = Plot("compare", "Accuracy vs latency, per data set", caption[:-1] + " of each data set. Panels top to "
                   "bottom: " + ", ".join(label for _, label, _ in figures) + ".", _stack([png for *_, png in figures]),
                   wide=True).item(file=", ".join(name for name, *_ in figures))
    return render_page(
        "compare.html.j2", title=f"compress: {title}", heading=title, left=LEFT,
        sub=f"{', '.join(sorted({r.report.model for r in runs}))} · "
            f"{', '.join(sorted({str(r.report.dataset.get('name')) for r in runs}))}",
        warning_items=[("", n) for n in notes],
        hint="Highlighted rows, marked " + legend(len(figures) > 1),
        headers=[h for h, _ in TABLE], rows=[{"frontier": bool(r["frontier"]), "cells": [r[k] for _, k in TABLE]}
                                             for r in rows],
        fig=fig, runs=[(r.label, f"{r.path} · created {r.report.created_utc}") for r in runs])


def _stack(pngs: list[bytes]) -> bytes:
    """PNG panels one above the other, as one PNG."""
    import io

    from PIL import Image

    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    y = 0
    for i in images:
        out.paste(i, (0, y))
        y += i.height
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
