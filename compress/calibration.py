"""The training images INT8 works with: those it calibrates on, and held-out ones it checks its accuracy on.

Both come from one seeded permutation of the *training* split (never the test split): the first
``calibration_size`` images calibrate, the images after them are held out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from compress.data import Dataset

HELD_OUT_IMAGES = 2000

# How many images calibrate by default: 32,768 at 32×32 px (as many pixels at other sizes), never fewer than 2,048.
# MinMax ranges from more images make a better INT8 model: the main job's FP32 model (90.52% top-1, Fashion-MNIST,
# 32 px), quantized on 2,048 / 8,192 / 30,000 training images drawn with three or two seeds: 89.64-90.17 (mean
# 89.85) / 90.00-90.15 (90.10) / 90.22-90.36 (90.29), measured on a Zen 3 with 7-bit weights. ORT calibrates
# 30,000 of those images in 12 s; the pixel budget keeps a 224-px model at 2,048 images (about 40 s).
CALIBRATION_PIXELS = 32_768 * 32 * 32
MIN_CALIBRATION_IMAGES = 2048


def images_for_pixels(pixels: int, input_size: int, at_least: int) -> int:
    """How many ``input_size``-px square images hold ``pixels`` pixels, but at least ``at_least``."""
    return max(at_least, pixels // (input_size * input_size))


def default_calibration_size(input_size: int) -> int:
    """Training images that calibrate INT8 when the config does not say (comment above)."""
    return images_for_pixels(CALIBRATION_PIXELS, input_size, MIN_CALIBRATION_IMAGES)


def calibration_reader(images: "np.ndarray", batch_size: int = 32):
    """An ORT ``CalibrationDataReader`` over normalised images, ``batch_size`` at a time. It supports
    ``len`` and ``set_range`` (in batches), which ORT's ``CalibStridedMinMax`` pass-by-pass calibration uses."""
    from onnxruntime.quantization import CalibrationDataReader

    starts = range(0, len(images), batch_size)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def __len__(self) -> int:
            return len(starts)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.todo = iter(starts[start_index:end_index])

        def get_next(self):
            i = next(self.todo, None)
            return None if i is None else {"input": images[i:i + batch_size]}

        def rewind(self) -> None:
            self.set_range(0, len(starts))

    return Reader()


def calibration_images(data: "Dataset", size: int, seed: int) -> "np.ndarray":
    """``size`` training images (seeded, in index order), normalised: what ``Quantize`` calibrates on."""
    import numpy as np

    n = data.train_x.shape[0]
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:min(size, n)])
    return data.normalize(data.train_x[idx]).numpy()


def held_out_images(data: "Dataset", calibration_size: int, seed: int,
                    count: int = HELD_OUT_IMAGES) -> tuple["np.ndarray", "np.ndarray"]:
    """Normalised training images and labels that :func:`calibration_images` did not take (the
    same seeded permutation, the part after the calibration images)."""
    import numpy as np

    n = data.train_x.shape[0]
    idx = np.sort(np.random.default_rng(seed).permutation(n)[min(calibration_size, n):][:count])
    return data.normalize(data.train_x[idx]).numpy(), data.train_y[idx].numpy()
