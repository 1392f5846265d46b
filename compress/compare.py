"""Compare finished runs side by side: one table, one accuracy-vs-latency figure, and the Pareto frontier.

Reads each run folder's report.json and nothing else. Writes ``compare.html`` (self-contained, like
report.html), ``compare.md`` and the figure as ``compare_accuracy_latency.png`` into ``out_dir``.

>>> compare([Path("runs/p0"), Path("runs/p50"), Path("runs/p50_int8")], Path("runs/compare"))  # doctest: +SKIP
(PosixPath('runs/compare/compare.html'), PosixPath('runs/compare/compare.md'))
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from compress.errors import CompressError

if TYPE_CHECKING:
    from compress.report import RunReport

FIGURE = "compare_accuracy_latency.png"
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
        return self.report.steps[-1]

    @property
    def top1(self) -> float:
        return self.final.metrics["top1_pct"]

    @property
    def latency_ms(self) -> float:
        return self.final.metrics["latency_ms_median"]


def compare(run_dirs: list[Path], out_dir: Path) -> tuple[Path, Path]:
    """Write ``compare.html`` and ``compare.md`` for ``run_dirs`` into ``out_dir``; returns both paths."""
    from compress import plots
    from compress.checkpoint import atomic_write

    runs = load_runs(run_dirs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CompressError(f"--out {out_dir} is a file: give a folder for compare.html and compare.md")
    flags = pareto([(r.top1, r.latency_ms) for r in runs])
    rows = [row(r, f) for r, f in zip(runs, flags)]
    notes = warnings(runs)
    fig = plots.png(plots.compare_accuracy_latency([_point(r, f) for r, f in zip(runs, flags)]))
    atomic_write(out_dir / FIGURE, lambda p: p.write_bytes(fig))
    md = atomic_write(out_dir / "compare.md", lambda p: p.write_text(render_markdown(runs, rows, notes),
                                                                    encoding="utf-8"))
    html = atomic_write(out_dir / "compare.html", lambda p: p.write_text(render_html(runs, rows, notes, fig),
                                                                        encoding="utf-8"))
    return html, md


def load_runs(run_dirs: list[Path]) -> list[Run]:
    """Each folder's report, checked to hold what the comparison needs, before anything is drawn."""
    from compress.report import RunReport

    if not run_dirs:
        raise CompressError("compare needs at least one run folder (a folder written by `compress run`)")
    paths = [Path(d) for d in run_dirs]
    reports = []
    for path in paths:
        if not path.is_dir():
            raise CompressError(f"{path} is not a folder: give run folders written by `compress run`")
        try:
            report = RunReport.load(path)
        except CompressError:
            raise
        except (OSError, ValueError, AttributeError) as e:  # unreadable, or JSON that is not an object
            raise CompressError(f"{path / 'report.json'} is not a compress report ({type(e).__name__}): "
                                "re-run the job") from None
        if not report.steps:
            raise CompressError(f"{path / 'report.json'} has no steps: the run did not finish; re-run it")
        m = report.steps[-1].metrics
        if not all(isinstance(m.get(k), (int, float)) for k in ("top1_pct", "latency_ms_median")):
            raise CompressError(f"{path / 'report.json'} lacks the final top-1 or latency: re-run the job")
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


def row(run: Run, frontier: bool) -> dict[str, str]:
    """One table row as display strings, formatted by the report's own helpers."""
    from compress.report import delta, fmt_bytes, fmt_co2, fmt_count, fmt_energy

    r, base, final = run.report, run.report.steps[0], run.final
    m = final.metrics
    prune = (r.config.get("prune") or {}).get("ratio")
    d = delta(final, base, "top1_pct")
    carbon = r.carbon or {}
    return {
        "run": run.label, "model": r.model, "data": str(r.dataset.get("name", "n/a")),
        "prune": "n/a" if prune is None else ("none" if not prune else f"{prune:g}"),
        "int8": {True: "yes", False: "no"}.get(r.config.get("int8"), "n/a"),
        "top1": f"{m['top1_pct']:.2f}" + (f" ({d})" if d else ""),
        "size": fmt_bytes(m["size_bytes"]) if m.get("size_bytes") is not None else "n/a",
        "macs": fmt_count(m["macs"]) if m.get("macs") is not None else "n/a",
        "latency": f"{m['latency_ms_median']:.3f}",
        "energy": fmt_energy(m.get("energy_per_inference_j")),
        "co2": fmt_co2(carbon.get("compression_co2_g")) if final is not base else "none (baseline only)",
        "frontier": FRONTIER_MARK if frontier else "",
    }


def warnings(runs: list[Run]) -> list[str]:
    """What makes these numbers less comparable than they look, one line each."""
    out = []
    data = {(r.report.dataset.get("name"), r.report.dataset.get("fingerprint"), r.report.dataset.get("test_images"))
            for r in runs}
    names = sorted({str(d[0]) for d in data})
    if len(names) > 1:
        out.append(f"These runs use different data sets ({', '.join(names)}): their accuracies are measured on "
                   "different images and do not compare.")
    elif len(data) > 1:
        out.append(f"These runs use different subsets or splits of {names[0]} (another fingerprint or test size): "
                   "their accuracies are measured on different images.")
    setups = {(r.report.environment.get("cpu"), r.final.metrics.get("threads"), r.final.metrics.get("latency_batch"))
              for r in runs}
    if len(setups) > 1:
        out.append("Latency was measured on different CPUs, thread counts or batch sizes: "
                   + "; ".join(f"{cpu}, {t} thread(s), batch {b}" for cpu, t, b in sorted(setups, key=str)) + ".")
    methods = {r.final.metrics.get("energy_method") for r in runs}
    if len(methods) > 1:
        out.append("Energy per inference comes from different methods in these runs: "
                   + "; ".join(sorted(str(x) for x in methods)) + ".")
    return out


def _point(run: Run, frontier: bool) -> dict:
    base = run.report.steps[0]
    p = {"label": run.label, "top1": run.top1, "latency_ms": run.latency_ms, "frontier": frontier}
    if base is not run.final:
        p["base_top1"] = base.metrics.get("top1_pct")
        p["base_latency_ms"] = base.metrics.get("latency_ms_median")
    return p


def render_markdown(runs: list[Run], rows: list[dict[str, str]], notes: list[str]) -> str:
    lines = [f"# compress: {len(runs)} run{'s' if len(runs) != 1 else ''} compared", ""]
    lines += [f"> **Warning:** {n}" for n in notes] + ([""] if notes else [])
    lines += ["| " + " | ".join(h for h, _ in TABLE) + " |", "|" + ":---|" * LEFT + "---:|" * (len(TABLE) - LEFT)]
    lines += ["| " + " | ".join(r[k].replace("|", "\\|") for _, k in TABLE) + " |" for r in rows]
    lines += ["", f"{FRONTIER_MARK} = on the Pareto frontier: no other run is both at least as accurate and at least "
              "as fast (final models, top-1 vs latency p50 at batch 1). top-1 in brackets: change against the run's "
              "own baseline.", "", f"![accuracy vs latency]({FIGURE})", "", "Runs:", ""]
    lines += [f"- **{r.label}**: `{r.path}` (created {r.report.created_utc})" for r in runs]
    return "\n".join(lines) + "\n"


def render_html(runs: list[Run], rows: list[dict[str, str]], notes: list[str], figure_png: bytes) -> str:
    from compress.html import CSS, PAGE, _png_size

    title = f"{len(runs)} run{'s' if len(runs) != 1 else ''} compared"
    warn = ("" if not notes else '<section class="warn"><h2>Warning</h2><ul>'
            + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul></section>")
    head = "".join(f"<th>{escape(h)}</th>" for h, _ in TABLE)
    trs = []
    for r in rows:
        cls = ' class="final"' if r["frontier"] else ""
        cells = "".join(f"<td>{escape(r[k])}</td>" for _, k in TABLE[1:])
        trs.append(f'<tr{cls}><th scope="row">{escape(r["run"])}</th>{cells}</tr>')
    w, h = _png_size(figure_png)
    src = "data:image/png;base64," + base64.b64encode(figure_png).decode("ascii")
    runs_dl = "".join(f"<dt>{escape(r.label)}</dt><dd>{escape(str(r.path))} · created "
                      f"{escape(r.report.created_utc)}</dd>" for r in runs)
    body = (f'<header><p class="eyebrow">compress comparison</p><h1>{escape(title)}</h1>'
            f'<p class="sub">{escape(", ".join(sorted({r.report.model for r in runs})))} · '
            f'{escape(", ".join(sorted({str(r.report.dataset.get("name")) for r in runs})))}</p></header>'
            f"{warn}"
            '<section><h2>Final models</h2><p class="hint">Highlighted rows, marked ★, are on the Pareto frontier: '
            "no other run is both at least as accurate and at least as fast (top-1 vs latency p50 at batch 1). "
            "top-1 in brackets: change against the run's own baseline.</p>"
            f'<div class="scroll"><table class="compare"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(trs)}</tbody></table></div></section>"
            f'<section><div class="figures"><figure class="wide" id="fig-compare"><img src="{src}" '
            f'alt="Runs compared: accuracy vs latency" width="{w // 2}" height="{h // 2}"><figcaption><strong>Accuracy '
            "vs latency.</strong> Each run's final model (filled) and its baseline (hollow); the orange line is the "
            f'Pareto frontier. <span class="file">{FIGURE}</span></figcaption></figure></div></section>'
            f'<section><h2>Runs</h2><dl>{runs_dl}</dl></section>'
            "<footer>every number and figure on this page comes from the runs' report.json files</footer>")
    css = CSS + (f"table.compare tr > :nth-child(-n+{LEFT}) {{ text-align: left; }} "
                 "table.compare tr > :nth-child(2) { text-align: center; } "
                 "table.compare td:nth-child(2) { color: #e69f00; font-size: 16px; line-height: 1; } "
                 "table.compare th, table.compare td { padding: 8px 9px; font-size: 13px; } "
                 "table.compare thead th { white-space: normal; vertical-align: bottom; } "
                 "figure#fig-compare { max-width: 860px; }")
    return PAGE.format(title=escape(f"compress: {title}"), css=css, body=body)
