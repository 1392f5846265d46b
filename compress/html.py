"""``report.html``: one self-contained page a person would rather look at than read, plus the figures as PNGs.

Everything on the page comes from the :class:`~compress.report.RunReport` (that is, from report.json);
nothing is measured while rendering. The page has no external resource of any kind (figures are
base64 PNGs, the CSS is inline, fonts are the reader's system fonts), and its Content-Security-Policy
forbids loading one, so it can be mailed, archived, or opened offline. The figures are also written to
``plots/*.png`` for slides.

>>> write_html(RunReport.load("runs/fmnist"), Path("runs/fmnist"))  # doctest: +SKIP
PosixPath('runs/fmnist/report.html')
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from compress.errors import CompressError

if TYPE_CHECKING:
    from compress.report import RunReport, StepReport

FIGURE_NAMES = ("accuracy_latency", "size_macs_latency", "energy_co2", "carbon_break_even", "confusion_final",
                "class_change")
HURT_CLASSES = 3  # how many of the most-hurt classes the page names


@dataclass(frozen=True)
class Plot:
    """One rendered figure: its PNG, and the words the page puts around it."""

    name: str  # file stem in plots/
    title: str
    caption: str
    png: bytes
    wide: bool = False  # spans both columns of the figure grid


def write_html(report: "RunReport", run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/plots/*.png`` (each atomically); returns the HTML path.

    Class names come from report.json's ``dataset.class_names``, else the run's ``edge/labels.json``, else
    class indices.
    """
    from compress.checkpoint import atomic_write

    if not report.steps:
        raise CompressError("the report has no steps to render: re-run the job")
    run_dir = Path(run_dir)
    labels = class_labels(report, run_dir)
    figures = draw_figures(report, labels)
    plots = run_dir / "plots"
    for fig in figures:
        atomic_write(plots / f"{fig.name}.png", lambda p, data=fig.png: p.write_bytes(data))
    drawn = {fig.name for fig in figures}
    for stale in FIGURE_NAMES:  # a figure an earlier render drew but this report cannot (e.g. no confusion matrix)
        if stale not in drawn:
            (plots / f"{stale}.png").unlink(missing_ok=True)
    page = render_html(report, figures, labels)
    return atomic_write(run_dir / "report.html", lambda p: p.write_text(page, encoding="utf-8"))


def class_labels(report: "RunReport", run_dir: Path) -> list[str]:
    """Class names: report.json's ``dataset.class_names`` when present, else the bundle's labels.json, else indices."""
    k = len(report.steps[-1].confusion or []) or int(report.dataset.get("classes") or 0)
    candidates = [report.dataset.get("class_names")]
    try:
        candidates.append(json.loads((Path(run_dir) / "edge" / "labels.json").read_text()))
    except (OSError, ValueError):
        pass
    for labels in candidates:
        if isinstance(labels, list) and len(labels) == k and all(isinstance(x, str) for x in labels):
            return labels
    return [str(i) for i in range(k)]


def draw_figures(report: "RunReport", labels: list[str]) -> list[Plot]:
    """Every figure the report has data for, in page order."""
    from compress import plots

    steps, base, final = report.steps, report.steps[0], report.steps[-1]
    out = [
        Plot("accuracy_latency", "Accuracy vs latency",
               "One point per step, in step order along the arrows. Up and to the left is better.",
               plots.png(plots.accuracy_latency(steps))),
    ]
    if len(steps) >= 2 and report.carbon:
        out.append(Plot("carbon_break_even", "Carbon break-even",
                          "Cumulative CO₂ of serving the baseline vs compressing once and serving the final model.",
                          plots.png(plots.carbon_break_even(report.carbon))))
    out.append(Plot("size_macs_latency", "Size, compute and latency per step",
                      "The artifact on disk, conv + linear multiply-accumulates per image, and median batch-1 latency.",
                      plots.png(plots.size_macs_latency(steps)), wide=True))
    out.append(Plot("energy_co2", "Energy and CO₂",
                      "Energy per inference of each step's model, and the CO₂ each stage's own work emitted "
                      "(training, pruning, fine-tuning, export, quantization).",
                      plots.png(plots.energy_co2(steps)), wide=True))
    if final.confusion:
        out.append(Plot("confusion_final", f"Confusion matrix: {final.step}",
                          "Test split counts; rows are the true class, columns the prediction.",
                          plots.png(plots.confusion_matrix(final.confusion, labels, step=final.step))))
    if final is not base and base.confusion and len(base.confusion) == len(final.confusion or []):
        out.append(Plot("class_change", "Per-class accuracy change",
                          f"Final model vs baseline, per true class; the {HURT_CLASSES} classes hurt most in red.",
                          plots.png(plots.class_change(base.confusion, final.confusion, labels, hurt=HURT_CLASSES))))
    return out


# ------------------------------------------------------------------------------------------------ page


def render_html(report: "RunReport", figures: list[Plot], labels: list[str]) -> str:
    """The whole page as a string (no I/O)."""
    title = f"{report.model} on {report.dataset.get('name', 'n/a')}"
    body = "\n".join([
        _header(report, title),
        _warnings(report),
        _cards(report),
        _table(report),
        _figures(figures),
        _classes(report, labels),
        _how_measured(report),
        _environment(report),
        _notes(report),
        f'<footer>compress report · schema v{report.schema_version} · created {escape(report.created_utc)} · '
        "every number and figure on this page comes from this run's report.json</footer>",
    ])
    return PAGE.format(title=escape(f"compress: {title}"), css=CSS, body=body)


def _safe(fn, *args, default: str = "n/a") -> str:
    """A report helper's text, or ``default`` when a value it needs is missing (None) in report.json."""
    try:
        return fn(*args)
    except (TypeError, KeyError, ValueError, ZeroDivisionError, StopIteration):
        return default


def _md_inline(text: str) -> str:
    """Escape, then turn the report helpers' ``**bold**`` into <strong>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escape(text))


def _header(report: "RunReport", title: str) -> str:
    from compress.report import verdict

    d = report.dataset
    final = report.steps[-1]
    chain = " → ".join(s.step for s in report.steps)
    sub = (f"{escape(str(d.get('name', 'n/a')))} · {_n(d.get('classes'))} classes · "
           f"{_n(d.get('test_images'))} test images · input {_n(d.get('input_size'))}×{_n(d.get('input_size'))} · "
           f"{escape(chain)}")
    return (f'<header><p class="eyebrow">compress run report</p><h1>{escape(title)}</h1>'
            f'<p class="sub">{sub}</p>'
            f'<p class="verdict">{_md_inline(_safe(verdict, report, default=f"{final.step}: see the table below."))}'
            "</p></header>")


def _n(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:,}" if isinstance(v, int) else escape(str(v))


def _warnings(report: "RunReport") -> str:
    items = [(s.step, w) for s in report.steps for w in (s.notes.get("warnings") or [])]
    if not items:
        return ""
    lis = "".join(f"<li><strong>{escape(step)}</strong>: {escape(str(w))}</li>" for step, w in items)
    return f'<section class="warn"><h2>Warnings</h2><ul>{lis}</ul></section>'


def _direction(step: "StepReport", base: "StepReport", key: str, lower_better: bool) -> str:
    """'good', 'bad' or '' (no change, no baseline, or a value missing)."""
    v, b = step.metrics.get(key), base.metrics.get(key)
    if step is base or v is None or b is None or v == b:
        return ""
    return "good" if (v < b) == lower_better else "bad"


def _cards(report: "RunReport") -> str:
    from compress.report import COLUMNS, cell, delta, fmt_co2

    base, final = report.steps[0], report.steps[-1]
    wanted = {"top1_pct": "Top-1 accuracy", "size_bytes": "Size on disk", "latency_ms_median": "Latency p50, batch 1",
              "energy_per_inference_j": "Energy per inference"}
    cards = []
    for _, key, kind, lower in COLUMNS:
        if key not in wanted:
            continue
        value = _safe(cell, final, key, kind)
        if key == "top1_pct" and value != "n/a":
            value += " %"
        if key == "latency_ms_median" and value != "n/a":
            value = value.split(" / ")[0] + " ms"  # the table's "p50 / p90" cell; the card shows the median
        d = _safe(delta, final, base, key, default="")
        sub = f"{d} vs baseline" if d else ("baseline only" if final is base else "")
        note = method_kind(final.metrics.get("energy_method")) if key == "energy_per_inference_j" else ""
        cards.append(_card(wanted[key], value, sub, _direction(final, base, key, lower), note))
    c = report.carbon or {}
    be = c.get("break_even_inferences")
    if final is base or not c:
        cards.append(_card("Carbon break-even", "n/a", "nothing was compressed", ""))
    elif be is not None:
        cards.append(_card("Carbon break-even", f"{be:,.0f}",
                           f"inferences repay the {fmt_co2(c.get('compression_co2_g'))} CO₂ of compressing", "good"))
    elif c.get("saved_co2_g_per_inference") is None:
        cards.append(_card("Carbon break-even", "n/a", "no CO₂ per-inference figure", ""))
    else:
        cards.append(_card("Carbon break-even", "never pays back",
                           f"compressing emitted {fmt_co2(c.get('compression_co2_g'))}", "bad"))
    return f'<section class="cards" aria-label="final model vs baseline">{"".join(cards)}</section>'


def method_kind(label: str | None) -> str:
    """The energy method in a few words, so a headline figure never reads as measured when it was estimated."""
    kind = (label or "").split(":")[0]
    return {"codecarbon-estimate": "estimated from time, not measured", "rapl": "measured (RAPL counters)",
            "user-power": "from your power figure × time"}.get(kind, kind)


def _card(label: str, value: str, sub: str, tone: str, note: str = "") -> str:
    return (f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div>'
            f'<div class="delta {tone}">{escape(sub)}</div>'
            + (f'<div class="note">{escape(note)}</div>' if note else "") + "</div>")


def work_time(step: "StepReport") -> str:
    if step.notes.get("cache_hit"):
        return "cached"
    s = step.work.get("seconds")
    return "n/a" if s is None else f"{s:.1f} s"


def _table(report: "RunReport") -> str:
    from compress.report import COLUMNS, cell, delta, fmt_co2

    base = report.steps[0]
    head = "".join(f"<th>{escape(h)}</th>" for h, *_ in COLUMNS)
    rows = []
    for s in report.steps:
        tds = []
        for _, key, kind, lower in COLUMNS:
            d = _safe(delta, s, base, key, default="")
            tone = _direction(s, base, key, lower)
            tds.append(f'<td>{escape(_safe(cell, s, key, kind))}'
                       + (f'<span class="delta {tone}">{escape(d)}</span>' if d else "") + "</td>")
        final = ' class="final"' if s is report.steps[-1] and s is not base else ""
        rows.append(f'<tr{final}><th scope="row">{escape(s.step)}<span class="kind">{escape(s.kind)}</span></th>'
                    + "".join(tds) + f"<td>{escape(work_time(s))}</td><td>{escape(fmt_co2(s.work.get('co2_g')))}</td>"
                    "</tr>")
    return ('<section><h2>Step by step</h2><p class="hint">Changes are against the baseline (first row): points for '
            "accuracy, ratios for the rest. Work time and CO₂ are each stage's own work, not its measurement.</p>"
            f'<div class="scroll"><table><thead><tr><th>step</th>{head}<th>work time</th><th>work CO₂</th></tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table></div></section>")


def _figures(figures: list[Plot]) -> str:
    items = []
    for f in figures:
        src = "data:image/png;base64," + base64.b64encode(f.png).decode("ascii")
        w, h = _png_size(f.png)
        items.append(f'<figure class="{"wide" if f.wide else ""}" id="fig-{f.name}">'
                     f'<img src="{src}" alt="{escape(f.title)}" width="{w // 2}" height="{h // 2}">'
                     f"<figcaption><strong>{escape(f.title)}.</strong> {escape(f.caption)} "
                     f'<span class="file">plots/{f.name}.png</span></figcaption></figure>')
    return f'<section><h2>Figures</h2><div class="figures">{"".join(items)}</div></section>'


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def class_changes(report: "RunReport", labels: list[str]) -> list[dict]:
    """Per-class accuracy (%) of the baseline and the final model, most hurt first; [] when not comparable."""
    from compress.plots import class_accuracy

    base, final = report.steps[0], report.steps[-1]
    if final is base or not base.confusion or len(base.confusion) != len(final.confusion or []):
        return []
    a, b = class_accuracy(base.confusion), class_accuracy(final.confusion)
    rows = [{"label": labels[i], "baseline_pct": a[i], "final_pct": b[i], "change_pt": b[i] - a[i],
             "test_images": sum(final.confusion[i])}
            for i in range(len(labels)) if a[i] is not None and b[i] is not None]
    return sorted(rows, key=lambda r: r["change_pt"])


def _classes(report: "RunReport", labels: list[str]) -> str:
    rows = class_changes(report, labels)
    if not rows:
        return ""
    hurt = [r for r in rows[:HURT_CLASSES] if r["change_pt"] < 0]
    if hurt:
        items = "".join(f"<li><strong>{escape(r['label'])}</strong> {r['change_pt']:+.1f} pt "
                        f"({r['baseline_pct']:.1f}% → {r['final_pct']:.1f}%, {r['test_images']} test images)</li>"
                        for r in hurt)
        text = f"<p>Classes hurt most by compression:</p><ol class=\"hurt\">{items}</ol>"
    else:
        text = "<p>No class lost accuracy against the baseline.</p>"
    small = min(r["test_images"] for r in rows)
    caveat = (f'<p class="hint">With as few as {small} test images in a class, one image moves its accuracy by '
              f"{100 / small:.1f} points.</p>" if small and small < 200 else "")
    return f'<section id="classes"><h2>Per class</h2>{text}{caveat}</section>'


def _how_measured(report: "RunReport") -> str:
    from compress.plots import energy_method_text

    final = report.steps[-1]
    m = final.metrics
    mc = report.config.get("measure") or {}
    env = report.environment
    runs = [s.metrics.get("latency_runs") for s in report.steps if s.metrics.get("latency_runs") is not None]
    runs_text = "n/a" if not runs else f"{min(runs):,}" if min(runs) == max(runs) else f"{min(runs):,}–{max(runs):,}"
    c = report.carbon or {}
    items = [
        ("Accuracy", f"top-1 on the full held-out test split: {_n(report.dataset.get('test_images'))} images "
                     f"(never the training or calibration images); data from {report.dataset.get('source', 'n/a')}."),
        ("Latency", f"batch {_n(m.get('latency_batch'))}, {_n(m.get('threads'))} intra-op thread(s), on the CPU "
                    f"({env.get('cpu', 'n/a')}); median (p50) and p90 of {runs_text} timed runs per step after "
                    f"{_n(mc.get('warmup_runs'))} warm-up runs. Throughput (img/s) at batch "
                    f"{_n(m.get('throughput_batch'))}."),
        ("Size and compute", "size is the artifact on disk (ONNX file, or the serialised state_dict for torch "
                             "steps); MACs count conv and linear multiply-accumulates for one image."),
        ("Energy", f"{energy_method_text(report.steps)}. Energy per inference is the timed batch-1 loop's energy "
                   "divided by its inferences."),
        ("CO₂", f"energy × the carbon intensity of {report.config.get('country', 'n/a')} (codecarbon's offline "
                "table; nothing is looked up over the network)."),
    ]
    if c.get("definition"):
        items.append(("Break-even", c["definition"] + "."))
    items.append(("Source", "every number and figure on this page is computed from this run folder's report.json "
                            f"(schema version {report.schema_version}); nothing is measured while rendering. The "
                            "figures are also saved as PNG files under plots/."))
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items)
    return f'<section id="how"><h2>How this was measured</h2><dl>{dl}</dl></section>'


def _environment(report: "RunReport") -> str:
    env = report.environment
    flags = ", ".join(env.get("cpu_flags") or []) or "n/a"
    items = [
        ("CPU", f"{env.get('cpu', 'n/a')} · {_n(env.get('cores'))} cores · {env.get('machine', 'n/a')} · {flags}"),
        ("OS", env.get("os", "n/a")), ("Python", env.get("python", "n/a")),
        ("Measured on", f"{env.get('measure_device', 'n/a')}, {_n(env.get('measure_threads'))} thread(s)"),
        ("Trained on", env.get("train_device", "n/a")),
        ("Versions", ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v) or "n/a"),
    ]
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in items)
    return f'<section id="env"><h2>Environment</h2><dl>{dl}</dl></section>'


def _notes(report: "RunReport") -> str:
    rows = [(s.step, k, v) for s in report.steps for k, v in s.notes.items() if k not in ("cache", "warnings")]
    if not rows:
        return ""
    lis = "".join(f"<li><strong>{escape(step)}</strong> {escape(k)}: "
                  f"{escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))}</li>" for step, k, v in rows)
    return f'<section id="notes"><details><summary>Step notes ({len(rows)})</summary><ul>{lis}</ul></details></section>'


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<main>
{body}
</main>
</body>
</html>
"""

CSS = """
:root { --ink: #222; --muted: #666; --line: #e4e4e4; --bg: #f7f7f5; --card: #fff;
        --good: #007a5a; --bad: #c24e00; --accent: #0072b2; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 32px 24px 48px; }
h1 { font-size: 28px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 18px; margin: 0 0 12px; }
section { margin-top: 28px; }
.eyebrow { text-transform: uppercase; letter-spacing: .08em; font-size: 12px; color: var(--accent); margin: 0;
           font-weight: 600; }
.sub { color: var(--muted); margin: 0 0 12px; }
.verdict { font-size: 17px; margin: 0; padding: 12px 16px; background: var(--card);
           border-left: 4px solid var(--accent); border-radius: 4px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 12px; margin-top: 20px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; }
.card .label { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .05em; }
.card .value { font-size: 24px; font-weight: 650; margin: 2px 0; font-variant-numeric: tabular-nums; }
.delta { font-size: 12.5px; color: var(--muted); }
.delta.good { color: var(--good); }
.card .note { font-size: 12px; color: var(--muted); font-style: italic; margin-top: 2px; }
.delta.bad { color: var(--bad); }
.hint { color: var(--muted); font-size: 13px; margin: -6px 0 10px; }
.scroll { overflow-x: auto; background: var(--card); border: 1px solid var(--line); border-radius: 8px; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 8px 12px; text-align: right; border-bottom: 1px solid var(--line); white-space: nowrap;
         vertical-align: top; }
thead th { font-size: 12px; color: var(--muted); font-weight: 600; background: #fafafa; }
th:first-child, tbody th { text-align: left; }
tbody tr:last-child > * { border-bottom: none; }
tr.final { background: #eef6fb; }
td .delta, th .kind { display: block; font-size: 11.5px; }
th .kind { color: var(--muted); font-weight: 400; }
.figures { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
figure.wide { grid-column: 1 / -1; }
figure img { display: block; width: 100%; height: auto; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 8px; }
figcaption strong { color: var(--ink); }
.file { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 11.5px; color: #999; margin-left: 4px; }
.warn { background: #fff4ec; border: 1px solid #f3c9a8; border-radius: 8px; padding: 12px 16px; }
.warn h2 { color: var(--bad); }
ol.hurt li strong { color: var(--bad); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 6px 18px; margin: 0; background: var(--card);
     border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; font-size: 14px; }
dt { font-weight: 600; }
dd { margin: 0; color: #333; }
details { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px;
          font-size: 13.5px; }
summary { cursor: pointer; font-weight: 600; }
footer { margin-top: 36px; color: #999; font-size: 12px; }
@media (max-width: 800px) { .figures { grid-template-columns: 1fr; } dl { grid-template-columns: 1fr; } }
@media print { body { background: #fff; } figure, .card, table { break-inside: avoid; } }
"""
