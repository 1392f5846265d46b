"""Data sets: Fashion-MNIST (the default), scikit-learn's digits, CIFAR-10 and a user's image folder.

Every data set is loaded once into memory as uint8 tensors of shape ``[N, 3, H, W]``, already
resized with PIL's bilinear filter to the configured input size. That is exactly the
preprocessing the edge bundle documents (``edge_demo/BUNDLE.md``), so accuracy measured here
is what a device that follows ``preprocess.json`` sees. Image files are turned upright by their
EXIF orientation first, as the web page and the Pi runner do. Normalisation (mean/std) is
applied per batch, in float, by :func:`normalize`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from compress.core import cache_dir
from compress.errors import CompressError

if TYPE_CHECKING:
    import numpy as np
    import torch

# torchvision's ImageNet statistics: every model here is a torchvision model, and ImageNet
# weights expect them. Recorded in the bundle's preprocess.json.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
BUILTIN = ("fashion-mnist", "digits", "cifar10")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled data set held in memory: uint8 images ``[N, 3, H, W]`` and int64 labels."""

    name: str
    classes: list[str]
    train_x: "torch.Tensor"
    train_y: "torch.Tensor"
    test_x: "torch.Tensor"
    test_y: "torch.Tensor"
    source: str  # where the files came from, for the report
    fingerprint: str = field(default="")  # content hash, part of the baseline cache key
    mean: tuple[float, float, float] = MEAN  # per-channel normalisation the model's weights expect
    std: tuple[float, float, float] = STD

    def normalize(self, x_uint8: "torch.Tensor") -> "torch.Tensor":
        """uint8 ``[N,3,H,W]`` → float32 normalised with this data set's mean and std."""
        return normalize(x_uint8, self.mean, self.std)

    def batches(self, x: "torch.Tensor", y: "torch.Tensor", batch_size: int
                ) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
        """Normalised float batches in order (evaluation, calibration)."""
        for i in range(0, x.shape[0], batch_size):
            yield self.normalize(x[i:i + batch_size]), y[i:i + batch_size]

    def with_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]) -> "Dataset":
        """The same images, normalised as a model with other pretrained statistics expects."""
        return dataclasses.replace(self, mean=tuple(mean), std=tuple(std))

    @property
    def input_size(self) -> int:
        return int(self.train_x.shape[-1])

    def preprocess(self) -> dict:
        """The bundle's preprocess.json: the steps a device applies to an image file."""
        return {
            "input_name": "input", "output_name": "logits", "layout": "NCHW", "dtype": "float32",
            "height": self.input_size, "width": self.input_size, "resize": "bilinear", "color": "RGB",
            "scale": 1 / 255, "mean": list(self.mean), "std": list(self.std),
        }

    def summary(self) -> dict:
        return {
            "name": self.name, "source": self.source, "classes": len(self.classes), "class_names": list(self.classes),
            "train_images": int(self.train_x.shape[0]), "test_images": int(self.test_x.shape[0]),
            "input_size": self.input_size, "fingerprint": self.fingerprint,
        }


def normalize(x_uint8: "torch.Tensor", mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> "torch.Tensor":
    """uint8 ``[N,3,H,W]`` → float32, scaled to [0, 1] then normalised per channel."""
    import torch

    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x_uint8.float() / 255.0 - m) / s


def resize_images(images: "np.ndarray", size: int) -> "torch.Tensor":
    """uint8 ``[N,H,W]`` (gray) or ``[N,H,W,3]`` (RGB) arrays → uint8 ``[N,3,size,size]`` via PIL bilinear."""
    import numpy as np
    import torch
    from PIL import Image

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img).convert("RGB")
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(pil)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def load_dataset(name: str, *, input_size: int, seed: int = 0, val_fraction: float = 0.2,
                 limit_train: int | None = None, limit_test: int | None = None) -> Dataset:
    """Load a built-in data set by name, or an image folder by path.

    ``limit_train``/``limit_test`` take a fixed, class-balanced-by-chance subset (first N after a
    seeded shuffle) for quick experiments and tests; the report records the sizes used.

    >>> ds = load_dataset("digits", input_size=32)
    >>> ds.classes[:3]
    ['0', '1', '2']
    """
    _check_input_size(input_size)
    if name == "fashion-mnist":
        (trx, try_), (tex, tey), source = _fashion_mnist_arrays()
        classes = FASHION_MNIST_LABELS
    elif name == "digits":
        (trx, try_), (tex, tey), source = _digits_arrays(seed)
        classes = [str(i) for i in range(10)]
    elif name == "cifar10":
        (trx, try_), (tex, tey), classes, source = _cifar10_arrays()
    else:
        return _image_folder(_folder(name), input_size=input_size, seed=seed, val_fraction=val_fraction,
                             limit_train=limit_train, limit_test=limit_test)
    trx, try_ = _subset(trx, try_, limit_train, seed)
    tex, tey = _subset(tex, tey, limit_test, seed + 1)
    return _make(name, classes, trx, try_, tex, tey, input_size, source)


def check_data(name: str, *, input_size: int, seed: int = 0, val_fraction: float = 0.2) -> None:
    """What :func:`load_dataset` refuses before it decodes an image (the input size, the path, an image folder's
    layout), checked without torch: the pipeline calls it before any work, so such a mistake fails in a second."""
    _check_input_size(input_size)
    if name not in BUILTIN:
        _folder_split(_folder(name), seed=seed, val_fraction=val_fraction)


def _check_input_size(input_size: int) -> None:
    if input_size < 16:
        raise CompressError(f"input size {input_size} is too small: use --input-size 16 or larger "
                            "(the models downsample by 32; 32 is the default)")


def _folder(name: str | None) -> Path:
    if name in ("", None):
        raise CompressError("no data set given: use --data fashion-mnist|digits|cifar10|PATH")
    path = Path(name).expanduser()
    if not path.exists():
        raise CompressError(f"data path {str(path)!r} does not exist: give an image folder with one "
                            f"subfolder per class, or a built-in data set ({', '.join(BUILTIN)})")
    return path


def _make(name, classes, trx, try_, tex, tey, input_size, source) -> Dataset:
    import numpy as np
    import torch

    h = hashlib.sha256()
    for a in (trx, try_, tex, tey):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(repr(classes).encode())
    return Dataset(
        name=name, classes=list(classes),
        train_x=resize_images(trx, input_size), train_y=torch.from_numpy(np.array(try_, dtype=np.int64)),
        test_x=resize_images(tex, input_size), test_y=torch.from_numpy(np.array(tey, dtype=np.int64)),
        source=source, fingerprint=h.hexdigest()[:16],
    )


def _subset(x, y, limit, seed):
    import numpy as np

    if limit is None or limit >= len(x):
        return x, y
    idx = np.random.default_rng(seed).permutation(len(x))[:limit]
    idx.sort()
    return x[idx], y[idx]


def read_idx(path: Path) -> "np.ndarray":
    """Read an IDX file (the MNIST format), gzipped or not."""
    import numpy as np

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise CompressError(f"cannot read {path}: {e}; reinstall the data set "
                            "(apt-get install --reinstall dataset-fashion-mnist)") from None


def _fashion_mnist_arrays():
    files = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    for root in (FASHION_MNIST_DEBIAN,):
        found = [next((root / (f + s) for s in (".gz", "") if (root / (f + s)).exists()), None) for f in files]
        if all(found):
            a = [read_idx(p) for p in found]
            return (a[0], a[1]), (a[2], a[3]), f"{root} (Debian package dataset-fashion-mnist)"
    # Not installed from Debian: torchvision's real download code path, cached under ~/.cache/compress/data.
    tr, te, root = _torchvision_download("FashionMNIST", "run `apt-get install dataset-fashion-mnist` or check the network")
    return ((tr.data.numpy(), tr.targets.numpy()), (te.data.numpy(), te.targets.numpy()),
            f"{root} (torchvision download)")


def _torchvision_download(cls_name: str, fix: str):
    """Train and test splits of a torchvision data set, downloaded once into the compress data cache."""
    import torchvision.datasets

    root = _data_cache() / "torchvision"
    try:
        cls = getattr(torchvision.datasets, cls_name)
        return cls(str(root), train=True, download=True), cls(str(root), train=False, download=True), root
    except Exception as e:  # network errors come in many types (URLError, RuntimeError, ...)
        raise CompressError(f"{cls_name} is not in {root} and the download failed ({type(e).__name__}): {fix}") from None


def _digits_arrays(seed: int):
    """scikit-learn's 8×8 digits (1,797 images, 0..16 gray levels), split 75/25 stratified. The split is kept in the
    data cache, keyed by scikit-learn's version and the seed: importing scikit-learn costs a fresh process about
    3 s, more than the rest of loading the digits."""
    from importlib.metadata import version

    import numpy as np

    source = "scikit-learn load_digits (bundled with scikit-learn)"
    cached = _data_cache() / f"digits-sklearn{version('scikit-learn')}-seed{seed}.npz"
    try:
        with np.load(cached) as z:
            return (z["trx"], z["try_"]), (z["tex"], z["tey"]), source
    except (OSError, KeyError, ValueError):  # not there yet, or unreadable: split again
        pass
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from compress.checkpoint import atomic_write

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    trx, tex, try_, tey = train_test_split(images, d.target, test_size=0.25, random_state=seed, stratify=d.target)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to the temporary name
            np.savez(f, trx=trx, try_=try_, tex=tex, tey=tey)

    try:
        atomic_write(cached, write)
    except OSError:  # a read-only cache only costs the next process the split again
        pass
    return (trx, try_), (tex, tey), source


def _cifar10_arrays():
    import numpy as np

    tr, te, root = _torchvision_download("CIFAR10", "check the network, or place cifar-10-python.tar.gz there")
    return ((tr.data, np.array(tr.targets)), (te.data, np.array(te.targets)), tr.classes,
            f"{root} (torchvision download)")


def _data_cache() -> Path:
    return cache_dir() / "data"


def _image_folder(path: Path, *, input_size: int, seed: int, val_fraction: float,
                  limit_train: int | None, limit_test: int | None) -> Dataset:
    """``path/train/<class>/*`` and ``path/val/<class>/*``, or ``path/<class>/*`` split here (seeded, stratified)."""
    import numpy as np

    tr, te, classes, split = _folder_split(path, seed=seed, val_fraction=val_fraction)
    if limit_train:
        tr = tr[:limit_train]
    if limit_test:
        te = te[:limit_test]
    trx = _read_images([f for f, _ in tr], input_size)
    tex = _read_images([f for f, _ in te], input_size)
    return _make(path.name, classes, trx, np.array([c for _, c in tr]), tex, np.array([c for _, c in te]),
                 input_size, split)


def _folder_split(path: Path, *, seed: int, val_fraction: float) -> tuple[list, list, list[str], str]:
    """The (file, class index) pairs of an image folder's training and test splits, its classes and how it was
    split; one clear error for a folder laid out wrongly. Lists files only: no image is decoded."""
    import numpy as np

    if not path.is_dir():
        raise CompressError(f"data path {str(path)!r} is not a folder: give a folder with one subfolder per class")
    if (path / "train").is_dir():
        val = next((path / v for v in ("val", "test") if (path / v).is_dir()), None)
        if val is None:
            raise CompressError(f"{path} has train/ but no val/: add val/<class>/ images, "
                                "or remove train/ and let compress split the class folders")
        train_files, classes = _class_files(path / "train")
        val_files, val_classes = _class_files(val, min_classes=1)
        missing = sorted(set(classes) - set(val_classes))
        extra = sorted(set(val_classes) - set(classes))
        if missing or extra:
            raise CompressError(f"{path}: classes differ between train/ and {val.name}/ "
                                f"(missing from {val.name}/: {missing or 'none'}; not in train/: {extra or 'none'}): "
                                "every class needs images in both")
        tr = [(f, classes.index(c)) for c, fs in train_files.items() for f in fs]
        te = [(f, classes.index(c)) for c, fs in val_files.items() for f in fs]
        split = f"{path} (train/ and {val.name}/ folders)"
    else:
        files, classes = _class_files(path)
        rng = np.random.default_rng(seed)
        tr, te = [], []
        for ci, c in enumerate(classes):
            fs = sorted(files[c])
            rng.shuffle(fs)
            n_val = max(1, round(len(fs) * val_fraction))
            if len(fs) - n_val < 1:
                raise CompressError(f"class {c!r} in {path} has {len(fs)} image(s): each class needs at least 2 "
                                    "(one to train, one to test)")
            te += [(f, ci) for f in fs[:n_val]]
            tr += [(f, ci) for f in fs[n_val:]]
        split = f"{path} (split {1 - val_fraction:.0%}/{val_fraction:.0%} by compress, seed {seed})"
    return tr, te, classes, split


def _class_files(root: Path, min_classes: int = 2) -> tuple[dict[str, list[Path]], list[str]]:
    """Image files of each class subfolder of ``root``. A class folder without images is an error:
    dropping it would silently train a model with one class fewer than the folders show."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {c: sorted(f for f in (root / c).rglob("*")
                       if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file())
             for c in classes}
    if not files:
        raise CompressError(f"no images found in {root}: put images (.png, .jpg, ...) in one subfolder per class")
    empty = [c for c, fs in files.items() if not fs]
    if empty:
        raise CompressError(f"class folder{'s' if len(empty) > 1 else ''} "
                            f"{', '.join(str(root / c) for c in empty)} "
                            f"{'hold' if len(empty) > 1 else 'holds'} no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}): add images or remove the folder")
    if len(files) < min_classes:
        raise CompressError(f"{root} has only one class ({next(iter(files))!r}): a classifier needs at least two "
                            "class subfolders")
    return files, sorted(files)


def _read_images(files: list[Path], input_size: int) -> "np.ndarray":
    """Decode, turn upright by EXIF orientation (as browsers and the Pi runner do: a portrait phone
    photo is stored sideways with an Orientation tag) and resize every image to ``input_size`` RGB;
    a bad file is named in the error."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    out = np.empty((len(files), input_size, input_size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                if im.size != (input_size, input_size):
                    im = im.resize((input_size, input_size), Image.BILINEAR)
                out[i] = np.asarray(im)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise CompressError(f"cannot read image {f}: {e.__class__.__name__}: {e}; "
                                "delete or replace the file") from None
    return out
