"""Figures for the HTML reports, drawn from report.json records only, in one house style.

Every function takes plain report records and returns a matplotlib ``Figure``; :func:`png` turns one
into PNG bytes. Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly,
never through pyplot, so drawing a report changes no global backend or state in the caller's
process (a notebook keeps its own backend). A value that is missing (``None``) is drawn as a
labelled gap ("n/a"), never as a zero.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Sequence

from compress.render import energy_method_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from compress.records import StepReport

# One palette for every figure (Okabe-Ito, safe for colour-blind readers).
GREY = "#8C8C8C"  # the baseline, and "before"
LIGHT = "#56B4E9"  # intermediate steps
BLUE = "#0072B2"  # the final model, and "after"
RED = "#D55E00"  # worse: classes hurt, extra cost
PALE_RED = "#F2A27A"  # worse, but not among the worst
GREEN = "#009E73"  # better
ORANGE = "#E69F00"  # a marked point (break-even, frontier)
INK = "#222222"
MUTED = "#666666"

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlepad": 10,
    "axes.labelsize": 10,
    "axes.labelcolor": INK,
    "axes.edgecolor": "#BBBBBB",
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#E6E6E6",
    "grid.linewidth": 0.8,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
DPI = 150  # sharp on slides and high-density screens, ~50-100 KB a figure
# Widths in inches for a figure in half of the report's two-column grid and one spanning both: in that proportion
# the page shows every figure's text at about the same size.
HALF, WIDE = 5.6, 11.0
MAX_CLASS_ROWS = 30  # per-class change figure: beyond this, the most hurt and the most improved classes


def _figure(width: float, height: float, **subplots) -> tuple["Figure", list["Axes"]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, attached directly: no pyplot, no global backend switch
    axes = fig.subplots(**subplots) if subplots else fig.subplots()
    return fig, list(axes.flat) if hasattr(axes, "flat") else [axes]


def styled(draw):
    """Run a figure function inside the house style (rcParams apply when artists are created)."""
    import functools

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def png(fig: "Figure") -> bytes:
    """The figure as PNG bytes (no metadata, so a re-render of the same report gives the same file)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def step_colors(n: int) -> list[str]:
    """Baseline grey, intermediate steps light blue, the final model blue."""
    if n == 1:
        return [GREY]
    return [GREY] + [LIGHT] * (n - 2) + [BLUE]


def footnote(fig: "Figure", text: str) -> None:
    """A small grey note under the axes, e.g. how an energy figure was obtained, wrapped to the figure's width."""
    chars = int(fig.get_figwidth() * 15)  # ~15 characters of 8 pt DejaVu Sans per inch
    fig.supxlabel("\n".join(textwrap.wrap(text, chars)), fontsize=8, color=MUTED, ha="left", x=0.01)


def scale(values: Sequence[float | None], units: Sequence[tuple[str, float]]) -> tuple[str, float]:
    """The largest unit in which the biggest value is at least 1, as (name, multiplier)."""
    top = max((abs(v) for v in values if v is not None), default=0.0)
    for name, mult in units:
        if top * mult >= 1:
            return name, mult
    return units[-1]


def si(value: float | None, units: Sequence[tuple[str, float]]) -> str:
    """A short figure label: three significant digits in the value's own unit ("442 KB", "69.8 µs")."""
    if value is None:
        return "n/a"
    name, mult = scale([value], units)
    return f"{value * mult:.3g} {name}".strip()


BYTES = [("GB", 1e-9), ("MB", 1e-6), ("KB", 1e-3), ("B", 1.0)]
COUNT = [("G", 1e-9), ("M", 1e-6), ("k", 1e-3), ("", 1.0)]
JOULES = [("J", 1.0), ("mJ", 1e3), ("µJ", 1e6), ("nJ", 1e9)]
MILLISECONDS = [("s", 1e-3), ("ms", 1.0), ("µs", 1e3)]  # for values stored in ms
GRAMS = [("kg", 1e-3), ("g", 1.0), ("mg", 1e3), ("µg", 1e6)]


def _latency_axis(ax: "Axes", values: Sequence[float], axis: str = "x") -> str:
    """Log scale when latencies span more than 10×, so a 50× speed-up and a 1.1× one both stay readable."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    vals = [v for v in values if v and v > 0]
    if vals and max(vals) / min(vals) > 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        target = ax.xaxis if axis == "x" else ax.yaxis
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_formatter(NullFormatter())
        return "log scale"
    return ""


def _label_points(ax: "Axes", xs: Sequence[float], ys: Sequence[float], labels: Sequence[str],
                  colors: Sequence[str]) -> None:
    """Name each point; a point close to an earlier one gets its label on the other side."""
    placed: list[tuple[float, float]] = []
    ax.get_figure().canvas.draw()  # limits and layout are final only after a draw
    to_px = ax.transData.transform
    for x, y, text, color in zip(xs, ys, labels, colors):
        px = to_px((x, y))
        crowded = sum(1 for q in placed if abs(q[0] - px[0]) < 90 and abs(q[1] - px[1]) < 22)
        offset = [(8, 7), (8, -14), (-8, 7), (-8, -14)][crowded % 4]
        ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=9, color=INK,
                    ha="left" if offset[0] > 0 else "right", va="bottom" if offset[1] > 0 else "top")
        placed.append(tuple(px))


@styled
def accuracy_latency(steps: Sequence["StepReport"]) -> "Figure":
    """Top-1 against batch-1 latency, one labelled point per step, joined by arrows in step order."""
    fig, (ax,) = _figure(HALF, 4.0)
    pts = [(f"{i}. {s.step}", getattr(s.metrics, "latency_ms_median"), getattr(s.metrics, "top1_pct"))
           for i, s in enumerate(steps, 1)]
    colors = step_colors(len(steps))
    shown = [(n, x, y, c) for (n, x, y), c in zip(pts, colors) if x is not None and y is not None]
    log = _latency_axis(ax, [x for _, x, _, _ in shown])
    for (_, x0, y0, _), (_, x1, y1, _) in zip(shown, shown[1:]):
        # Curved, so a step that comes back along an earlier path stays visible as its own arrow.
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="-|>", color="#AAAAAA", lw=1.2,
                                                            shrinkA=6, shrinkB=6, mutation_scale=12,
                                                            connectionstyle="arc3,rad=-0.2"))
    for n, x, y, c in shown:
        ax.scatter([x], [y], s=70 if c != LIGHT else 45, color=c, zorder=3, edgecolor="white", linewidth=1)
    if shown:
        ax.margins(x=0.18, y=0.15)
        _label_points(ax, [x for _, x, _, _ in shown], [y for _, _, y, _ in shown],
                      [n for n, *_ in shown], [c for *_, c in shown])
    missing = [n for n, x, y in pts if x is None or y is None]
    if missing:
        ax.text(0.99, 0.02, "n/a: " + ", ".join(missing), transform=ax.transAxes, ha="right", color=MUTED, fontsize=8)
    ax.set_title("Accuracy vs latency, step by step")
    ax.set_xlabel("latency p50, batch 1 (ms" + (f", {log})" if log else ")"))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.text(0.01, 0.98, "better: ← faster, ↑ more accurate", transform=ax.transAxes, va="top", color=MUTED,
            fontsize=8)
    return fig


def _bars(ax: "Axes", names: Sequence[str], values: Sequence[float | None], labels: Sequence[str],
          colors: Sequence[str]) -> None:
    """Vertical bars with their value printed on top; a missing value is written as n/a at the base."""
    xs = range(len(names))
    ax.bar(xs, [v or 0 for v in values], color=colors, width=0.65)
    top = max((v for v in values if v is not None), default=0) or 1
    for x, v, text in zip(xs, values, labels):
        ax.text(x, (v or 0) + top * 0.02, text if v is not None else "n/a", ha="center", va="bottom", fontsize=8,
                color=INK if v is not None else MUTED)
    ax.set_xticks(list(xs), names, rotation=30 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
    ax.set_ylim(0, top * 1.15)
    ax.grid(axis="x", visible=False)


@styled
def size_macs_latency(steps: Sequence["StepReport"]) -> "Figure":
    """Three bar panels: artifact size, MACs per image and batch-1 latency, one bar per step."""
    fig, axes = _figure(WIDE, 3.8, ncols=3)
    names = [s.step for s in steps]
    colors = step_colors(len(steps))
    panels = [
        ("Size on disk", "size_bytes", BYTES, "size"),
        ("Compute per image", "macs", COUNT, "MACs"),
        ("Latency p50, batch 1", "latency_ms_median", MILLISECONDS, "latency"),
    ]
    for ax, (title, key, units, what) in zip(axes, panels):
        raw = [getattr(s.metrics, key) for s in steps]
        unit = scale(raw, units)
        _bars(ax, names, [v * unit[1] if v is not None else None for v in raw],
              [si(v, units) for v in raw], colors)  # each label in its own unit: short, no overlap
        ax.set_title(title)
        ax.set_ylabel(f"{what} ({unit[0] or 'count'})")
    return fig


@styled
def energy_co2(steps: Sequence["StepReport"]) -> "Figure":
    """Energy per inference per step, and the CO2 each stage's own work emitted; the method is printed under both."""
    fig, axes = _figure(WIDE, 4.0, ncols=2)
    names = [s.step for s in steps]
    colors = step_colors(len(steps))
    energy = [getattr(s.metrics, "energy_per_inference_j") for s in steps]
    unit = scale(energy, JOULES)
    _bars(axes[0], names, [v * unit[1] if v is not None else None for v in energy],
          [si(v, JOULES) for v in energy], colors)
    axes[0].set_title("Energy per inference (batch 1)")
    axes[0].set_ylabel(f"energy per inference ({unit[0]})")
    co2 = [s.work.co2_g for s in steps]
    unit = scale(co2, GRAMS)
    stage_names = [n + (" (cached)" if s.cache_hit else "") for n, s in zip(names, steps)]
    _bars(axes[1], stage_names, [v * unit[1] if v is not None else None for v in co2],
          [si(v, GRAMS) for v in co2], colors)
    axes[1].set_title("CO₂ emitted by each stage's work")
    axes[1].set_ylabel(f"CO₂ ({unit[0]})")
    footnote(fig, "How energy was obtained: " + energy_method_text(list(steps)))
    return fig


@styled
def carbon_break_even(carbon: dict) -> "Figure":
    """Cumulative CO2 against inferences served: the baseline from zero, the final model from the compression cost."""
    from matplotlib.ticker import EngFormatter

    fig, (ax,) = _figure(HALF, 4.0)
    ax.set_title("Carbon break-even")
    spent = carbon.get("compression_co2_g")
    b, f = carbon.get("co2_per_inference_g_baseline"), carbon.get("co2_per_inference_g_final")
    be = carbon.get("break_even_inferences")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel("inferences served (batch 1)")
    if spent is None or b is None or f is None:
        ax.set_ylabel("cumulative CO₂")
        ax.text(0.5, 0.5, "n/a: this run has no CO₂ per-inference figure\n(the energy meter reported nothing)",
                transform=ax.transAxes, ha="center", va="center", color=MUTED)
        ax.set_xticks([])
        ax.set_yticks([])
        footnote(fig, "Energy method: " + (carbon.get("energy_method") or "n/a"))
        return fig
    if be is not None:
        x_max = be * 2.2
    else:  # never pays back: show long enough for the gap to read as growing, not closing
        x_max = 3 * spent / max(f, b, 1e-30)
    ys = [spent, b * x_max, spent + f * x_max]
    unit, mult = scale(ys, GRAMS)
    xs = [0, x_max]
    ax.plot(xs, [0, b * x_max * mult], color=GREY, lw=2, label=f"baseline: {si(b, GRAMS)} per inference")
    ax.plot(xs, [spent * mult, (spent + f * x_max) * mult], color=BLUE, lw=2,
            label=f"final: {si(spent, GRAMS)} to compress + {si(f, GRAMS)} per inference")
    ax.scatter([0], [spent * mult], color=BLUE, s=25, zorder=3, clip_on=False)
    ax.annotate(f"compression cost {si(spent, GRAMS)}", (0, spent * mult), xytext=(8, 6), textcoords="offset points",
                fontsize=8, color=BLUE)
    if be is not None:
        y = spent + f * be
        ax.axvline(be, color=ORANGE, lw=1, ls="--", zorder=1)
        ax.scatter([be], [y * mult], color=ORANGE, s=60, zorder=4, edgecolor="white")
        ax.annotate(f"pays back after {be:,.0f} inferences", (be, y * mult), xytext=(10, -16),
                    textcoords="offset points", fontsize=9, color=INK, fontweight="bold")
        ax.fill_between([be, x_max], [b * be * mult, b * x_max * mult], [y * mult, (spent + f * x_max) * mult],
                        color=GREEN, alpha=0.12, lw=0, label="CO₂ saved after break-even")
    else:
        ax.text(0.6, 0.4, "never pays back:\nthe final model saves no CO₂ per inference", transform=ax.transAxes,
                ha="center", va="center", fontsize=11, color=RED, fontweight="bold", zorder=5,
                bbox=dict(facecolor="white", edgecolor=RED, boxstyle="round,pad=0.5", alpha=0.95))
    ax.set_xlim(0, x_max)
    ax.set_ylim(0, None)
    ax.set_ylabel(f"cumulative CO₂ ({unit})")
    ax.legend(loc="upper left")
    footnote(fig, "Per-inference CO₂ from the energy method: " + (carbon.get("energy_method") or "n/a")
             + ". Baseline training is paid either way and is left out.")
    return fig


@styled
def compare_accuracy_latency(runs: Sequence[dict]) -> "Figure":
    """Final (filled) and baseline (hollow) point of each run, with the Pareto frontier of the final points.

    ``runs``: dicts with ``label``, ``top1``, ``latency_ms``, ``frontier`` and optionally ``base_top1`` and
    ``base_latency_ms``.
    """
    fig, (ax,) = _figure(8.0, 5.0)
    log = _latency_axis(ax, [r["latency_ms"] for r in runs] + [r.get("base_latency_ms") for r in runs])
    for r in runs:
        if r.get("base_latency_ms") is not None and r.get("base_top1") is not None:
            ax.plot([r["base_latency_ms"], r["latency_ms"]], [r["base_top1"], r["top1"]], color="#CCCCCC", lw=1,
                    ls=":", zorder=1)
            ax.scatter([r["base_latency_ms"]], [r["base_top1"]], s=40, facecolor="white", edgecolor=GREY, zorder=2)
    front = sorted((r for r in runs if r["frontier"]), key=lambda r: r["latency_ms"])
    if front:
        xs, ys = [r["latency_ms"] for r in front], [r["top1"] for r in front]
        ax.step(xs, ys, where="post", color=ORANGE, lw=2, zorder=2, label="Pareto frontier (final models)")
    for r in runs:
        ax.scatter([r["latency_ms"]], [r["top1"]], s=80 if r["frontier"] else 55, zorder=3,
                   color=BLUE if r["frontier"] else LIGHT, edgecolor=ORANGE if r["frontier"] else "white",
                   linewidth=1.5)
    ax.scatter([], [], s=55, color=BLUE, edgecolor=ORANGE, label="final model (on the frontier)")
    if not all(r["frontier"] for r in runs):
        ax.scatter([], [], s=55, color=LIGHT, label="final model")
    if any(r.get("base_latency_ms") is not None for r in runs):
        ax.scatter([], [], s=40, facecolor="white", edgecolor=GREY, label="its baseline")
    ax.margins(x=0.2, y=0.15)
    _label_points(ax, [r["latency_ms"] for r in runs], [r["top1"] for r in runs], [r["label"] for r in runs],
                  [BLUE] * len(runs))
    ax.set_title("Runs compared: accuracy vs latency")
    ax.set_xlabel("latency p50, batch 1 (ms" + (f", {log})" if log else ")"))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(loc="lower right")
    ax.text(0.01, 0.98, "better: ← faster, ↑ more accurate", transform=ax.transAxes, va="top", color=MUTED,
            fontsize=8)
    return fig
