"""One rendering layer: the step table's columns, one unit formatter, the ratios against named references,
the headline and the carbon break-even. Markdown (report.md), HTML (report.html), the terminal and
``compress compare`` all take their text from here, so a number reads the same everywhere.

Ratios always name what they are compared with. Speed, size and energy ratios of an ONNX step are
against the **baseline's FP32 ONNX export** (the fair "no compression" reference: same runtime, same
thread count); those of a torch step against the **baseline in PyTorch eager** (measured at its best
memory layout). Accuracy changes are in points against the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from compress.records import Metrics, RunReport, StepReport

REFERENCE_NAMES = {"baseline_onnx": "the baseline's FP32 ONNX export", "baseline_eager": "the baseline in PyTorch eager"}
REFERENCE_SHORT = {"baseline_onnx": "vs baseline ONNX", "baseline_eager": "vs baseline eager"}


@dataclass(frozen=True)
class Column:
    key: str  # Metrics field
    header: str
    unit: str  # how fmt() writes it
    lower_is_better: bool
    better: str = "smaller"  # ratio words when the step is better / worse than its reference
    worse: str = "larger"


COLUMNS = (
    Column("top1_pct", "top-1 %", "pct", False),
    Column("size_bytes", "size", "bytes", True),
    Column("params", "params", "count", True),
    Column("macs", "MACs", "count", True),
    Column("latency_ms_median", "latency ms (p50/p90)", "latency", True, "faster", "slower"),
    Column("throughput_ips", "img/s", "rate", False, "faster", "slower"),
    Column("energy_per_inference_j", "energy/inf", "joules", True, "less", "more"),
)


# ------------------------------------------------------------------------------------------------ units

def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def fmt_energy(j: float | None) -> str:
    if j is None:
        return "n/a"
    for unit, mult in (("J", 1), ("mJ", 1e3), ("µJ", 1e6)):
        if abs(j) * mult >= 1 or unit == "µJ":
            return f"{j * mult:.2f} {unit}"
    return str(j)


def fmt_co2(g: float | None) -> str:
    if g is None:
        return "n/a"
    for unit, mult in (("g", 1), ("mg", 1e3)):
        if abs(g) * mult >= 1:
            return f"{g * mult:.3g} {unit}"
    return f"{g * 1e6:.3g} µg"


def fmt_seconds(s: float | None) -> str:
    return "n/a" if s is None else f"{s:.1f} s"


FORMATTERS: dict[str, Callable[[float], str]] = {
    "pct": lambda v: f"{v:.2f}", "bytes": fmt_bytes, "count": fmt_count, "joules": fmt_energy,
    "rate": lambda v: f"{v:,.0f}", "ms": lambda v: f"{v:.3f}",
}


def fmt(value: float | None, unit: str) -> str:
    """A value in its unit's house format; None is "n/a", never zero."""
    if value is None:
        return "n/a"
    return FORMATTERS[unit](value)


def cell(m: "Metrics", col: Column) -> str:
    if col.unit == "latency":
        p90 = "n/a" if m.latency_ms_p90 is None else f"{m.latency_ms_p90:.3f}"
        return f"{m.latency_ms_median:.3f} / {p90}"
    return fmt(getattr(m, col.key), col.unit)


# ------------------------------------------------------------------------------------------------ ratios

def ratio(value: float | None, ref: float | None, col: Column) -> float | None:
    """How many times better than ``ref`` (> 1 better, < 1 worse); None when either is missing or zero."""
    if value is None or ref is None or not value or not ref:
        return None
    return value / ref if not col.lower_is_better else ref / value


def ratio_text(r: float | None, col: Column) -> str:
    if r is None:
        return ""
    return f"{r:.2f}× {col.better}" if r >= 1 else f"{1 / r:.2f}× {col.worse}"


def timed_text(timed: dict, col: Column) -> str:
    """A speed-up timed in interleaved rounds (:func:`compress.measure.compare_speed`), with its 95% interval in the
    same direction as the words: "2.94× slower at batch 1 (95% interval 2.78–3.12×, timed in turns)"."""
    s, lo, hi = timed["speedup"], timed["speedup_low"], timed["speedup_high"]
    low, high = (lo, hi) if s >= 1 else (1 / hi, 1 / lo)
    return f"{ratio_text(s, col)} at batch 1 (95% interval {low:.2f}–{high:.2f}×, timed in turns)"


def tone(r: float | None) -> str:
    """'good', 'bad' or '' for a ratio (or a point change) against the reference."""
    if r is None or abs(r - 1) < 1e-9:
        return ""
    return "good" if r > 1 else "bad"


def reference_for(report: "RunReport", step: "StepReport") -> tuple[str, "Metrics"] | None:
    """The reference a step's ratios are against: same runtime, unpruned, FP32."""
    if step.kind == "onnx" and "baseline_onnx" in report.references:
        return "baseline_onnx", report.references["baseline_onnx"]
    if step is report.baseline:
        return None
    return "baseline_eager", report.baseline.metrics


@dataclass(frozen=True)
class Cell:
    text: str
    delta: str = ""
    tone: str = ""


def step_cells(report: "RunReport", step: "StepReport") -> list[Cell]:
    """One table row's metric cells: value, and the change against the step's reference."""
    ref = reference_for(report, step)
    base = report.baseline.metrics
    out = []
    for col in COLUMNS:
        text = cell(step.metrics, col)
        if col.key == "top1_pct":
            if step is report.baseline:
                out.append(Cell(text))
                continue
            d = step.metrics.top1_pct - base.top1_pct
            out.append(Cell(text, f"{d:+.2f} pt", "" if abs(d) < 0.005 else ("good" if d > 0 else "bad")))
            continue
        if ref is None:
            out.append(Cell(text))
            continue
        r = ratio(getattr(step.metrics, col.key), getattr(ref[1], col.key), col)
        out.append(Cell(text, ratio_text(r, col), tone(r)))
    return out


def reference_rows(report: "RunReport") -> list[tuple[str, "Metrics"]]:
    return [(REFERENCE_NAMES[k], m) for k, m in report.references.items() if k in REFERENCE_NAMES
            and k != "baseline_eager"]


def work_time(step: "StepReport") -> str:
    return "cached" if step.cache_hit else fmt_seconds(step.work.seconds)


def step_label(step: "StepReport") -> str:
    return step.step + (" (deployed)" if step.deployed else "") + (" (not deployed: slower)" if step.fallback else "")


def table_rows(report: "RunReport") -> list[list[str]]:
    """The step table as plain text rows, each cell "value (change)": Markdown and non-TTY terminals use it."""
    rows = []
    for s in report.steps:
        cells = [c.text + (f" ({c.delta})" if c.delta else "") for c in step_cells(report, s)]
        rows.append([step_label(s), *cells, work_time(s), fmt_co2(s.work.co2_g)])
    for name, m in reference_rows(report):
        rows.append([f"reference: {name}", *[cell(m, c) for c in COLUMNS], "", ""])
    return rows


TABLE_HEADERS = ["step", *[c.header for c in COLUMNS], "work time", "work CO2"]
RATIO_NOTE = ("Changes: accuracy in points against the baseline; other ratios of ONNX steps against the baseline's "
              "FP32 ONNX export (the reference row), of torch steps against the baseline in PyTorch eager.")


def ratio_note(report: "RunReport") -> str:
    """What the table's changes are against, for this report."""
    if "baseline_onnx" in report.references:
        return RATIO_NOTE
    return ("Changes: accuracy in points, every other ratio against the baseline in PyTorch eager (this report has "
            "no FP32 ONNX reference: it was made by an earlier compress).")


def markdown_table(headers: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    """A GitHub Markdown table, complete at any width; columns from ``right_from`` on are right-aligned."""
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "---|" * right_from + "---:|" * (len(headers) - right_from)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ headline

def headline(report: "RunReport") -> str:
    """One line on the deployed model, against the baseline's FP32 ONNX export first and eager second."""
    base, final = report.baseline, report.deployed()
    b, f = base.metrics, final.metrics
    if final is base:
        return f"Baseline only: {f.top1_pct:.2f}% top-1."
    parts = [f"**{final.step}** (deployed): {f.top1_pct:.2f}% top-1 ({f.top1_pct - b.top1_pct:+.2f} pt vs the "
             "baseline)"]
    onnx = report.references.get("baseline_onnx")
    size_col, lat_col = COLUMNS[1], COLUMNS[4]
    if onnx is not None and final.kind == "onnx":
        timed = final.notes.get("speed_vs_reference")  # interleaved with the reference: the steadier ratio
        speed = (timed_text(timed, lat_col) if isinstance(timed, dict) else
                 f"{ratio_text(ratio(f.latency_ms_median, onnx.latency_ms_median, lat_col), lat_col)} at batch 1")
        parts.append(f"{ratio_text(ratio(f.size_bytes, onnx.size_bytes, size_col), size_col)} and {speed} "
                     f"than {REFERENCE_NAMES['baseline_onnx']}")
    eager = ratio(f.latency_ms_median, b.latency_ms_median, lat_col)
    parts.append(f"{ratio_text(eager, lat_col)} than {REFERENCE_NAMES['baseline_eager']}")
    line = ", ".join(parts[:2]) + ("; " + parts[2] if len(parts) > 2 else "") + "."
    last = report.steps[-1]
    if final is not last and last.fallback:
        line += f" {last.step} was made but not deployed: it ran slower than {final.step} on this CPU."
    elif final is not last:
        line += (f" Deployed under --max-drop {report.config.get('max_drop'):g} pt; {last.step} reached "
                 f"{last.metrics.top1_pct:.2f}%.")
    slow = [w for w in final.warnings if "slower" in w]
    if slow:
        line += " Warning: " + slow[0]
    return line


# ------------------------------------------------------------------------------------------------ carbon

def carbon_break_even(report: "RunReport") -> dict:
    """CO2 spent compressing ÷ CO2 saved per inference by the deployed model, against each reference.

    Compressing counts every stage's own work after the baseline; the baseline training is reported apart,
    since a user pays for it either way. ``break_even_inferences`` is against the baseline's FP32 ONNX export
    when it was measured (the fair reference), else against the baseline in PyTorch eager.
    """
    if len(report.steps) < 2:
        return {}
    base, final = report.baseline, report.deployed()
    spent = sum(s.work.co2_g or 0.0 for s in report.steps[1:])
    training = (base.notes.get("original_training") or {}).get("co2_g") if base.cache_hit else base.work.co2_g
    refs = {"baseline_onnx": report.references.get("baseline_onnx"), "baseline_eager": base.metrics}
    f = final.metrics.co2_per_inference_g
    against = {}
    for name, m in refs.items():
        if m is None:
            continue
        b = m.co2_per_inference_g
        saved = (b - f) if (b is not None and f is not None) else None
        against[name] = {"reference": REFERENCE_NAMES[name], "co2_per_inference_g_reference": b,
                         "saved_co2_g_per_inference": saved,
                         "break_even_inferences": (spent / saved) if saved and saved > 0 else None}
    primary = against.get("baseline_onnx") or against.get("baseline_eager") or {}
    return {
        "deployed_step": final.step, "compression_co2_g": spent, "baseline_training_co2_g": training or 0.0,
        "reference": primary.get("reference"),
        "co2_per_inference_g_baseline": primary.get("co2_per_inference_g_reference"),
        "co2_per_inference_g_final": f, "saved_co2_g_per_inference": primary.get("saved_co2_g_per_inference"),
        "break_even_inferences": primary.get("break_even_inferences"), "against": against,
        "energy_method": final.metrics.energy_method,
        "definition": "break_even_inferences = compression_co2_g / saved_co2_g_per_inference of the deployed model "
                      "against the reference; null when it saves nothing per inference",
    }


def carbon_sentence(report: "RunReport") -> str:
    c = carbon_break_even(report)
    if not c:
        return ""
    text = (f"Carbon: compressing emitted {fmt_co2(c['compression_co2_g'])} (baseline training "
            f"{fmt_co2(c['baseline_training_co2_g'])}). ")
    for name, a in c["against"].items():
        be = a["break_even_inferences"]
        text += (f"Against {a['reference']}, the deployed model pays for itself after {be:,.0f} inferences. " if be
                 else f"Against {a['reference']}, it saves no CO2 per inference, so it never pays back in carbon. ")
    return text.strip()


def energy_method_text(steps: list["StepReport"]) -> str:
    """The energy method label(s) of a run: one label, or each distinct one with the steps it applies to."""
    methods: dict[str, list[str]] = {}
    for s in steps:
        for label in (s.metrics.energy_method, s.work.energy_method):
            if label and label != "n/a":
                names = methods.setdefault(label, [])
                if s.step not in names:
                    names.append(s.step)
    if not methods:
        return "n/a"
    if len(methods) == 1:
        return next(iter(methods))
    return "; ".join(f"{label} ({', '.join(names)})" for label, names in methods.items())


def method_kind(label: str | None) -> str:
    """The energy method in a few words, so a headline figure never reads as measured when it was estimated."""
    kind = (label or "").split(":")[0]
    return {"codecarbon-estimate": "estimated from time, not measured", "rapl": "measured (RAPL counters)",
            "user-power": "from your power figure × time"}.get(kind, kind)


MIXED_HEADERS = ["node", "op", "SQNR dB", "fidelity lost dB", "kept FP32"]


def mixed_precision(report: "RunReport") -> tuple[str, list[list[str]]] | None:
    """INT8's mixed-precision search (:mod:`compress.mixed`): one sentence, and the ten most harmful nodes as
    rows of :data:`MIXED_HEADERS`; None when the run had no budget for it."""
    if not report.has_step("quantize"):
        return None
    record = report.step("quantize").notes.get("mixed_precision")
    if not isinstance(record, dict) or "outcome" not in record:
        return None
    if "worst_nodes" not in record:  # not tried (the steps before INT8 spent the budget)
        return "Mixed precision " + record["outcome"] + ".", []
    kept = set(record["kept_fp32"])
    tried = ", ".join(f"{a['kept_fp32']} node(s) FP32 → {a['drop_pt']:+.2f} pt" for a in record["attempts"])
    text = (f"Mixed precision under a {record['budget_pt']:g}-point budget (what --max-drop left for INT8), judged on "
            f"{record['held_out_images']:,} held-out training images: FP32 {record['fp32_top1_pct']:.2f}%, plain INT8 "
            f"{record['plain_int8_top1_pct']:.2f}%, shipped INT8 {record['int8_top1_pct']:.2f}%. "
            + _second_calibration(record.get("calibration")) + (f"Tried: {tried}. " if tried else "")
            + record["outcome"][0].upper() + record["outcome"][1:] + ".")
    rows = [[r["node"], r["op"], f"{r['sqnr_db']:.1f}", f"{r['harm_db']:.2f}", "yes" if r["node"] in kept else ""]
            for r in record["worst_nodes"]]
    return text, rows


PRUNE_HEADERS = ["layer group", "channels", "top-1 lost alone (pt)", "MACs saved alone", "kept whole"]


def pruning_allocation(report: "RunReport") -> tuple[str, list[list[str]]] | None:
    """The prune stage's sensitivity allocation (:mod:`compress.allocation`): one sentence, and the scan's most
    sensitive groups as rows of :data:`PRUNE_HEADERS`; None when the run pruned uniformly or not at all."""
    r = report.step("prune").notes if report.has_step("prune") else {}
    if r.get("allocation") != "sensitivity":
        return None
    text = (f"Sensitivity allocation: each of {r['groups_scanned']} layer groups was pruned alone at ratio "
            f"{r['budget_ratio']:g} and scored on training images. The {len(r['kept_groups'])} that lost more than "
            f"{r['protect_above_pt']:g} point(s) kept every channel; the others lost {r['others_ratio']:.1%} of "
            f"theirs. Budget (uniform pruning at {r['budget_ratio']:g}): {fmt_count(r['budget_macs'])} MACs, "
            f"{fmt_count(r['budget_params'])} params; spent: {fmt_count(r['macs'])} MACs, "
            f"{fmt_count(r['params'])} params.")
    kept = set(r["kept_groups"])
    rows = [[g["group"], str(g["channels"]), f"{g['drop_pt']:.2f}", fmt_count(g["macs_saved"]),
             "yes" if g["group"] in kept else ""] for g in r["most_sensitive"]]
    return text, rows


def _second_calibration(record: dict | None) -> str:
    """The sentence on :func:`compress.mixed.second_calibration`'s try ("" when minmax INT8 lost nothing there)."""
    if not record:
        return ""
    theirs = record.get("percentile_top1_pct")
    return (f"INT8 from minmax ranges got {record['minmax_top1_pct']:.2f}% there"
            + (f", from percentile ranges {theirs:.2f}%" if theirs is not None else "") + f": {record['outcome']}. ")


ENERGY_BATCH_HEADERS = ["batch", "deployed", "baseline FP32 ONNX", "baseline eager", "deployed vs baseline ONNX",
                        "deployed vs baseline eager"]


def energy_batch_rows(report: "RunReport") -> list[list[str]]:
    """Energy per inference (image) by batch size, the deployed model against both references; [] when the run
    has no such measurement (older reports)."""
    e = report.energy_by_batch
    if not e.get("deployed"):
        return []
    col = next(c for c in COLUMNS if c.key == "energy_per_inference_j")
    rows = []
    for batch in sorted(e["deployed"], key=int):
        j = {name: (e.get(name, {}).get(batch) or {}).get("energy_per_inference_j")
             for name in ("deployed", "baseline_onnx", "baseline_eager")}
        rows.append([batch, *(fmt_energy(j[n]) for n in ("deployed", "baseline_onnx", "baseline_eager")),
                     ratio_text(ratio(j["deployed"], j["baseline_onnx"], col), col) or "n/a",
                     ratio_text(ratio(j["deployed"], j["baseline_eager"], col), col) or "n/a"])
    return rows
