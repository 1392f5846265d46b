"""``report.html``: one self-contained page a person would rather look at than read, plus the figures as PNGs.

The page is a Jinja2 template (``compress/templates/report.html.j2``, styles in ``style.css``), filled from the
:class:`~compress.records.RunReport` alone: nothing is measured while rendering, and every number's text comes
from :mod:`compress.render`, as in report.md and the terminal. The page has no external resource (figures are
base64 PNGs, the CSS is inline, fonts are the reader's system fonts), and its Content-Security-Policy forbids
loading one, so it can be mailed, archived, or opened offline. The figures are also written to ``plots/*.png``.

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

from compress.checkpoint import atomic_write
from compress.errors import CompressError
from compress.records import RunReport, chance_pct
from compress.render import (COLUMNS, ENERGY_BATCH_HEADERS, MIXED_HEADERS, PRUNE_HEADERS, REFERENCE_NAMES,
                             carbon_break_even, cell, energy_batch_rows, energy_method_text, fmt_co2, headline,
                             method_kind, mixed_precision, pruning_allocation, ratio, ratio_note, ratio_text,
                             reference_rows, step_cells, step_label, timed_text, tone, work_time)

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

    def item(self, file: str | None = None) -> dict:
        """What the template's ``figure`` macro needs."""
        w, h = png_size(self.png)
        return {"name": self.name, "title": self.title, "caption": self.caption, "wide": self.wide,
                "src": "data:image/png;base64," + base64.b64encode(self.png).decode("ascii"),
                "width": w // 2, "height": h // 2, "file": file if file is not None else f"plots/{self.name}.png"}


def render_page(template: str, **context) -> str:
    """Fill a page template of ``compress/templates`` (autoescaped) with the house CSS."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("compress", "templates"),
                             autoescape=jinja2.select_autoescape(["j2"]), trim_blocks=True, lstrip_blocks=True)
    css = (Path(__file__).parent / "templates" / "style.css").read_text()
    return env.get_template(template).render(css=css, **context)


def write_html(report: RunReport, run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/plots/*.png`` (each atomically); returns the HTML path."""
    if not report.steps:
        raise CompressError("the report has no steps to render: re-run the job")
    run_dir = Path(run_dir)
    labels = class_labels(report, run_dir)
    figures = draw_figures(report, labels)
    for fig in figures:
        atomic_write(run_dir / "plots" / f"{fig.name}.png", lambda p, data=fig.png: p.write_bytes(data))
    drawn = {fig.name for fig in figures}
    for stale in FIGURE_NAMES:  # a figure an earlier render drew but this report cannot (e.g. no confusion matrix)
        if stale not in drawn:
            (run_dir / "plots" / f"{stale}.png").unlink(missing_ok=True)
    page = render_html(report, figures, labels)
    return atomic_write(run_dir / "report.html", lambda p: p.write_text(page, encoding="utf-8"))


def class_labels(report: RunReport, run_dir: Path) -> list[str]:
    """Class names: report.json's ``dataset.class_names`` when present, else the bundle's labels.json, else indices."""
    k = len(report.deployed().confusion or []) or int(report.dataset.get("classes") or 0)
    candidates = [report.dataset.get("class_names")]
    try:
        candidates.append(json.loads((Path(run_dir) / "edge" / "labels.json").read_text()))
    except (OSError, ValueError):
        pass
    for labels in candidates:
        if isinstance(labels, list) and len(labels) == k and all(isinstance(x, str) for x in labels):
            return labels
    return [str(i) for i in range(k)]


def draw_figures(report: RunReport, labels: list[str]) -> list[Plot]:
    """Every figure the report has data for, in page order."""
    from compress import plots, plots_classes

    steps, base, final = report.steps, report.baseline, report.deployed()
    carbon = carbon_break_even(report)
    out = [Plot("accuracy_latency", "Accuracy vs latency",
                "One point per step, in step order along the arrows. Up and to the left is better.",
                plots.png(plots.accuracy_latency(steps)))]
    if carbon:
        out.append(Plot("carbon_break_even", "Carbon break-even",
                        f"Cumulative CO₂ of serving {carbon.get('reference') or 'the baseline'} vs compressing once "
                        "and serving the deployed model.", plots.png(plots.carbon_break_even(carbon))))
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
                        plots.png(plots_classes.confusion_matrix(final.confusion, labels, step=final.step))))
    if final is not base and base.confusion and len(base.confusion) == len(final.confusion or []):
        out.append(Plot("class_change", "Per-class accuracy change",
                        f"Deployed model vs baseline, per true class; the {HURT_CLASSES} classes hurt most in red.",
                        plots.png(plots_classes.class_change(base.confusion, final.confusion, labels, hurt=HURT_CLASSES))))
    return out


def render_html(report: RunReport, figures: list[Plot], labels: list[str]) -> str:
    """The whole page as a string (no I/O)."""
    d = report.dataset
    title = f"{report.model} on {d.get('name', 'n/a')}"
    rows = [{"label": step_label(s), "kind": s.kind, "deployed": s.deployed and s is not report.baseline,
             "cells": step_cells(report, s), "work_time": work_time(s), "work_co2": fmt_co2(s.work.co2_g)}
            for s in report.steps]
    refs = [{"label": name, "cells": [cell(m, c) for c in COLUMNS]} for name, m in reference_rows(report)]
    changes = class_changes(report, labels)
    chain = " → ".join(s.step for s in report.steps)
    return render_page(
        "report.html.j2", title=f"compress: {title}", heading=title,
        sub=f"{d.get('name', 'n/a')} · {_n(d.get('classes'))} classes · {_n(d.get('test_images'))} test images · "
            f"input {_n(d.get('input_size'))}×{_n(d.get('input_size'))} · {chain}",
        verdict=_md_inline(headline(report)), warning_items=[(s.step, w) for s in report.steps for w in s.warnings],
        cards=cards(report), ratio_note=ratio_note(report), headers=[c.header for c in COLUMNS], rows=rows,
        reference_rows=refs, figures=[f.item() for f in figures], classes=bool(changes),
        hurt=[r for r in changes[:HURT_CLASSES] if r["change_pt"] < 0],
        small_class=_small_class(changes), how=how_measured(report), environment=environment_items(report),
        pruning=pruning_allocation(report), prune_headers=PRUNE_HEADERS,
        mixed=mixed_precision(report), mixed_headers=MIXED_HEADERS, energy_rows=energy_batch_rows(report),
        energy_headers=ENERGY_BATCH_HEADERS,
        notes=[(s.step, k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
               for s in report.steps for k, v in s.notes.items() if k != "cache"],
        schema_version=report.schema_version, created=report.created_utc)


def _small_class(changes: list[dict]) -> int | None:
    small = min((r["test_images"] for r in changes), default=0)
    return small if small and small < 200 else None


def _md_inline(text: str):
    """Escape, then turn the headline's ``**bold**`` into <strong>."""
    from markupsafe import Markup

    return Markup(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escape(text)))


def _n(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:,}" if isinstance(v, int) else str(v)


def cards(report: RunReport) -> list[dict]:
    """The headline figures of the deployed model, each against its fair reference and the eager baseline."""
    base, final = report.baseline, report.deployed()
    wanted = {"top1_pct": "Top-1 accuracy", "size_bytes": "Size on disk", "latency_ms_median": "Latency p50, batch 1",
              "energy_per_inference_j": "Energy per inference"}
    onnx = report.references.get("baseline_onnx") if final.kind == "onnx" else None
    out = []
    for col in COLUMNS:
        if col.key not in wanted:
            continue
        value = cell(final.metrics, col)
        card = {"label": wanted[col.key], "value": value, "sub": "", "tone": "", "sub2": "", "tone2": "", "note": ""}
        if col.key == "top1_pct":
            card["value"] = value + " %"
            if final is not base:
                dpt = final.metrics.top1_pct - base.metrics.top1_pct
                card.update(sub=f"{dpt:+.2f} pt vs baseline", tone="good" if dpt > 0 else "bad" if dpt < 0 else "")
                chance = chance_pct(final.confusion)
                if chance is not None:
                    card["note"] = f"chance (most common class): {chance:.1f}%"
        else:
            if col.key == "latency_ms_median":
                card["value"] = value.split(" / ")[0] + " ms"
            v = getattr(final.metrics, col.key)
            timed = final.notes.get("speed_vs_reference") if col.key == "latency_ms_median" else None
            if onnx is not None and isinstance(timed, dict):  # timed in turns with the reference, as the headline
                card.update(sub=f"{timed_text(timed, col)} vs {REFERENCE_NAMES['baseline_onnx']}",
                            tone=tone(timed["speedup"]))
            elif onnx is not None:
                r = ratio(v, getattr(onnx, col.key), col)
                card.update(sub=f"{ratio_text(r, col)} vs {REFERENCE_NAMES['baseline_onnx']}" if r else "",
                            tone=tone(r))
            if final is not base:
                r = ratio(v, getattr(base.metrics, col.key), col)
                card.update(sub2=f"{ratio_text(r, col)} vs {REFERENCE_NAMES['baseline_eager']}" if r else "",
                            tone2=tone(r))
            if col.key == "energy_per_inference_j":
                card["note"] = method_kind(final.metrics.energy_method)
        out.append(card)
    out.append(_carbon_card(report))
    return out


def _carbon_card(report: RunReport) -> dict:
    c = carbon_break_even(report)
    card = {"label": "Carbon break-even", "value": "n/a", "sub": "", "tone": "", "sub2": "", "tone2": "", "note": ""}
    if not c:
        card["sub"] = "nothing was compressed"
    elif c.get("break_even_inferences") is not None:
        card.update(value=f"{c['break_even_inferences']:,.0f}", tone="good",
                    sub=f"inferences repay the {fmt_co2(c['compression_co2_g'])} CO₂ of compressing, against "
                        f"{c['reference']}")
    elif c.get("saved_co2_g_per_inference") is None:
        card["sub"] = "no CO₂ per-inference figure"
    else:
        card.update(value="never pays back", tone="bad",
                    sub=f"against {c['reference']}; compressing emitted {fmt_co2(c['compression_co2_g'])}")
    return card


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def class_changes(report: RunReport, labels: list[str]) -> list[dict]:
    """Per-class accuracy (%) of the baseline and the deployed model, most hurt first; [] when not comparable."""
    from compress.plots_classes import class_accuracy

    base, final = report.baseline, report.deployed()
    if final is base or not base.confusion or len(base.confusion) != len(final.confusion or []):
        return []
    a, b = class_accuracy(base.confusion), class_accuracy(final.confusion)
    rows = [{"label": labels[i], "baseline_pct": a[i], "final_pct": b[i], "change_pt": b[i] - a[i],
             "test_images": sum(final.confusion[i])}
            for i in range(len(labels)) if a[i] is not None and b[i] is not None]
    return sorted(rows, key=lambda r: r["change_pt"])


def how_measured(report: RunReport) -> list[tuple[str, str]]:
    m = report.deployed().metrics
    mc = report.config.get("measure") or {}
    runs = [s.metrics.latency_runs for s in report.steps]
    runs_text = f"{min(runs):,}" if min(runs) == max(runs) else f"{min(runs):,}–{max(runs):,}"
    c = carbon_break_even(report)
    items = [
        ("Accuracy", f"top-1 on the full held-out test split: {_n(report.dataset.get('test_images'))} images "
                     f"(never the training or calibration images); data from {report.dataset.get('source', 'n/a')}."),
        ("Latency", f"batch {m.latency_batch}, {m.threads} intra-op thread(s), on the CPU "
                    f"({report.environment.get('cpu', 'n/a')}); median (p50) and p90 of {runs_text} timed runs per step "
                    f"after {_n(mc.get('warmup_runs'))} warm-up runs. Throughput (img/s) at batch {m.throughput_batch}. "
                    "PyTorch eager runs in the faster of NCHW and channels_last."),
        ("References", "ratios of ONNX steps are against the baseline's FP32 ONNX export, measured in the same run "
                       "with the same settings; ratios of torch steps against the baseline in PyTorch eager."),
        ("Size and compute", "size is the artifact on disk (ONNX file, or the serialised state_dict for torch "
                             "steps); MACs count conv and linear multiply-accumulates for one image, as executed "
                             "(INT8 kernel padding included)."),
        ("Energy", f"{energy_method_text(report.steps)}. Energy per inference is the timed batch-1 loop's energy "
                   "divided by its inferences."),
        ("CO₂", f"energy × the carbon intensity of {report.config.get('country', 'n/a')} (codecarbon's offline "
                "table; nothing is looked up over the network)."),
    ]
    if c.get("definition"):
        items.append(("Break-even", c["definition"] + "."))
    items.append(("Source", "every number and figure on this page is computed from this run folder's report.json "
                            f"(schema version {report.schema_version}); nothing is measured while rendering."))
    return items


def environment_items(report: RunReport) -> list[tuple[str, str]]:
    env = report.environment
    flags = ", ".join(env.get("cpu_flags") or []) or "n/a"
    return [
        ("CPU", f"{env.get('cpu', 'n/a')} · {_n(env.get('cores'))} cores · {env.get('machine', 'n/a')} · {flags}"),
        ("OS", env.get("os", "n/a")), ("Python", env.get("python", "n/a")),
        ("Measured on", f"{env.get('measure_device', 'n/a')}, {_n(env.get('measure_threads'))} thread(s)"),
        ("Trained on", env.get("train_device", "n/a")),
        ("Versions", ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v) or "n/a"),
    ]
