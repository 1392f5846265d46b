"""8-bit or 7-bit INT8 weights on x86-64, chosen by measuring both on held-out training images.

ORT's ``reduce_range`` quantizes weights to 7 bits. On an x86-64 CPU without VNNI that keeps MLAS's 16-bit
intermediate sums from saturating, and compress has always used it there. On a CPU with VNNI neither choice
saturates and both run the same kernels at the same speed, but they round weights differently, and which rounding
loses less depends on the model. Measured on an AVX-512 VNNI Xeon, 2026-12-01, top-1 on the 10,000 Fashion-MNIST
test images (and on 10,000 held-out training images):

* the main job's pruned MobileNetV3-small: FP32 90.67; 8-bit 89.49 (held out 90.16); 7-bit 89.98 (90.65);
* the realistic job's pruned EfficientNet-Lite0: FP32 92.97; 8-bit 92.86 (94.62); 7-bit 92.76 (94.55).

In both, the held-out images ranked the two the same way as the test split did. So on an x86-64 host, with the
default ``target: host`` (a model built for this CPU and measured on its kernels), the quantize step builds both
widths from the same calibration ranges, and keeps whichever gets more held-out images right. A tie keeps the
CPU's default: 8-bit with VNNI, 7-bit without. The held-out images are training images that did not calibrate,
never test images. Where calibration took every training image there are none, and the default stays.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from compress.calibration import images_for_pixels

if TYPE_CHECKING:
    import numpy as np

HELD_OUT = 10_000  # at most this many held-out images decide; at 32 px ORT runs them in about a second
# As many pixels at larger sizes (2,500 images at 64 px), at least MIN_HELD_OUT: 1,000 images at 224 px hold
# 0.6 GB as float32, where 10,000 would hold 6 GB.
HELD_OUT_PIXELS = HELD_OUT * 32 * 32
MIN_HELD_OUT = 1_000


def held_out_count(input_size: int) -> int:
    """How many held-out training images (at most) decide the width at ``input_size`` pixels."""
    return min(HELD_OUT, images_for_pixels(HELD_OUT_PIXELS, input_size, MIN_HELD_OUT))


def choose(current: Path, current_reduce_range: bool, build_other: Callable[[Path], None],
           held: tuple["np.ndarray", "np.ndarray"], threads: int, companions: dict[Path, Path | None]) -> dict:
    """Build the other weight width next to ``current`` with ``build_other(path)``, and replace ``current`` with
    it if it gets more of the ``held`` images right. ``companions``: files ``build_other`` also writes, each moved
    onto its partner when the other width wins (None: a scratch file); none outlives the call. Returns the record
    for the step's notes; its ``reduce_range`` is the choice that ``current`` now holds."""
    import os

    from compress.mixed import top1_pct

    x, y = held
    bits = {False: "8-bit", True: "7-bit"}
    record: dict = {"held_out_images": int(len(y)), "default": bits[current_reduce_range],
                    "reduce_range": current_reduce_range}
    if len(y) == 0:
        return record | {"outcome": "default kept: every training image calibrated, none is left to compare on"}
    other = current.with_name(f"other_{current.name}")
    try:
        build_other(other)
        mine, theirs = top1_pct(current, x, y, threads), top1_pct(other, x, y, threads)
        record |= {f"{bits[current_reduce_range]}_top1_pct": round(mine, 2),
                   f"{bits[not current_reduce_range]}_top1_pct": round(theirs, 2)}
        if theirs > mine:
            os.replace(other, current)
            for made, partner in companions.items():
                if partner is not None and made.is_file():
                    os.replace(made, partner)
            return record | {"reduce_range": not current_reduce_range,
                             "outcome": f"{bits[not current_reduce_range]} weights: more held-out images right"}
        return record | {"outcome": f"{bits[current_reduce_range]} weights (the default): as many or more right"}
    finally:
        for p in (other, *companions):
            p.unlink(missing_ok=True)
