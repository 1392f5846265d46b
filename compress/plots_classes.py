"""Per-class figures for the HTML report: the confusion matrix and the per-class accuracy change, in the house style
of :mod:`compress.plots`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from compress.plots import GREEN, GREY, HALF, INK, MAX_CLASS_ROWS, PALE_RED, RED, _figure, styled

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def class_accuracy(confusion: Sequence[Sequence[int]]) -> list[float | None]:
    """Per-class accuracy (recall, %) from a confusion matrix with true classes as rows; None for an empty row."""
    out: list[float | None] = []
    for i, row in enumerate(confusion):
        n = sum(row)
        out.append(100.0 * row[i] / n if n else None)
    return out


@styled
def confusion_matrix(confusion: Sequence[Sequence[int]], labels: Sequence[str], *, step: str) -> "Figure":
    """The final model's test-set confusion matrix: counts, shaded by the share of each true class."""
    import numpy as np

    cm = np.asarray(confusion, dtype=float)
    k = len(cm)
    side = min(10.0, max(4.6, 0.36 * k + 1.6))
    fig, (ax,) = _figure(side + 0.8, side)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8 if k <= 15 else 6,
                            color="white" if share[i, j] > 0.55 else INK)
    if k <= 40:
        ax.set_xticks(range(k), labels, rotation=45, ha="right")
        ax.set_yticks(range(k), labels)
    else:  # too many names to read: class order is the index order of dataset.class_names
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted class" + (f" (0 to {k - 1})" if k > 40 else ""))
    ax.set_ylabel("true class" + (f" (0 to {k - 1})" if k > 40 else ""))
    ax.set_title(f"Confusion matrix: {step} (final model), test split")
    cbar = fig.colorbar(im, ax=ax, shrink=0.8)
    cbar.set_label("share of the true class")
    cbar.outline.set_visible(False)
    for side_ in ("left", "bottom"):
        ax.spines[side_].set_visible(False)
    return fig


@styled
def class_change(before: Sequence[Sequence[int]], after: Sequence[Sequence[int]], labels: Sequence[str], *,
                 hurt: int = 3) -> "Figure":
    """Per-class accuracy change of the final model against the baseline, sorted, the most hurt classes marked."""
    a, b = class_accuracy(before), class_accuracy(after)
    rows = [(labels[i], a[i], b[i], sum(after[i])) for i in range(len(labels)) if a[i] is not None and b[i] is not None]
    rows.sort(key=lambda r: r[2] - r[1])  # most hurt first
    total = len(rows)
    if total > MAX_CLASS_ROWS:  # many classes: the ends of the ranking are what a reader needs
        rows = rows[:MAX_CLASS_ROWS * 2 // 3] + rows[-(MAX_CLASS_ROWS // 3):]
    k = len(rows)
    fig, (ax,) = _figure(HALF, max(3.0, 0.3 * k + 1.4))
    worst = {r[0] for r in rows[:hurt] if r[2] - r[1] < 0}
    changes = [r[2] - r[1] for r in rows]
    ys = list(range(k))[::-1]  # most hurt at the top
    colors = [RED if r[0] in worst else GREEN if c > 0 else PALE_RED if c < 0 else GREY for r, c in zip(rows, changes)]
    ax.barh(ys, changes, color=colors, height=0.7)
    ax.axvline(0, color="#999999", lw=0.8)
    span = max((abs(c) for c in changes), default=1) or 1
    # The numbers sit in a column right of the axes, so they never collide with the bars or the class names.
    column = ax.get_yaxis_transform()  # x in axes fractions, y in data
    for y, c, r in zip(ys, changes, rows):
        ax.text(1.04, y, f"{c:+5.1f} pt {r[1]:3.0f}% → {r[2]:3.0f}%", transform=column, va="center", fontsize=8,
                family="DejaVu Sans Mono", color=RED if r[0] in worst else INK,
                fontweight="bold" if r[0] in worst else "normal")
    ax.set_yticks(ys, [f"{r[0]}  (n={r[3]})" for r in rows])
    for tick, r in zip(ax.get_yticklabels(), rows):
        if r[0] in worst:
            tick.set_color(RED)
            tick.set_fontweight("bold")
    fig.get_layout_engine().set(w_pad=0.1)  # room after the right-hand column of numbers
    ax.set_xlim(min(-span * 0.3, min(changes, default=0) * 1.1), max(span * 0.3, max(changes, default=0) * 1.1))
    ax.set_ylim(-0.6, k - 0.4)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("per-class accuracy change vs baseline (pt)")
    ax.set_title("Which classes paid for the compression"
                 + (f"\n(the {k} most changed of {total} classes)" if total > k else ""))
    return fig
