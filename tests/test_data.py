"""Data sets: the built-ins load real images, and an image folder is read, split and checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from compress.data import load_dataset
from compress.errors import CompressError


def test_fashion_mnist_reads_the_debian_package():
    ds = load_dataset("fashion-mnist", input_size=32, limit_train=100, limit_test=50)
    assert ds.train_x.shape == (100, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert "Debian" in ds.source and ds.classes[9] == "Ankle boot"
    assert torch.equal(ds.train_x[:, 0], ds.train_x[:, 2])  # grayscale becomes three equal channels


def test_full_fashion_mnist_test_split_is_10000_images():
    ds = load_dataset("fashion-mnist", input_size=16)
    assert ds.test_x.shape[0] == 10_000 and ds.train_x.shape[0] == 60_000


def test_digits_is_split_stratified():
    ds = load_dataset("digits", input_size=16)
    assert len(ds.classes) == 10 and ds.train_x.shape[0] + ds.test_x.shape[0] == 1797
    assert set(ds.test_y.tolist()) == set(range(10))


def test_digits_split_is_cached_and_read_back_without_scikit_learn(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    first = load_dataset("digits", input_size=16, seed=3)  # splits with scikit-learn and caches the split
    [cached] = (tmp_path / "data").glob("digits-sklearn*-seed3.npz")
    code = ("import sys; from compress.data import load_dataset; d = load_dataset('digits', input_size=16, seed=3); "
            "print(d.fingerprint, 'sklearn' in sys.modules)")

    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)

    assert again.stdout.split() == [first.fingerprint, "False"]  # the same split, and scikit-learn never imported
    cached.write_bytes(b"not an npz")  # a damaged cache file is split again, not trusted
    assert load_dataset("digits", input_size=16, seed=3).fingerprint == first.fingerprint
    assert load_dataset("digits", input_size=16, seed=4).fingerprint != first.fingerprint  # the seed is in the key


def _folder(root, classes, n=4, size=(20, 24)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    return root


def test_check_data_refuses_a_folder_laid_out_wrongly_without_importing_torch(tmp_path):
    """What the pipeline checks before any work: the layout and the input size, in a process that never loads torch;
    a folder that load_dataset reads passes."""
    import subprocess
    import sys

    _folder(tmp_path / "one", ["cat"])
    good = _folder(tmp_path / "two", ["cat", "dog"])
    code = ("import sys; from compress.data import check_data; from compress.errors import CompressError\n"
            "for path, size in zip(sys.argv[1::2], sys.argv[2::2]):\n"
            "    try:\n        check_data(path, input_size=int(size)); print('ok')\n"
            "    except CompressError as e:\n        print(e)\n"
            "print('torch' in sys.modules)")
    argv = [str(tmp_path / "one"), "32", str(tmp_path / "nope"), "32", str(good), "8", str(good), "32", "digits", "32"]

    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True, timeout=120)

    one, nope, small, ok, builtin, torch_loaded = out.stdout.splitlines()
    assert "has only one class ('cat')" in one and "does not exist" in nope and "input size 8 is too small" in small
    assert (ok, builtin, torch_loaded) == ("ok", "ok", "False")
    assert load_dataset(str(good), input_size=32).classes == ["cat", "dog"]


def test_image_folder_is_split_by_the_tool(tmp_path):
    ds = load_dataset(str(_folder(tmp_path / "photos", ["cat", "dog"], n=10)), input_size=32)
    assert ds.classes == ["cat", "dog"] and ds.train_x.shape[1:] == (3, 32, 32)
    assert ds.test_x.shape[0] == 4 and ds.train_x.shape[0] == 16  # 20% of each class held out
    assert "split" in ds.source


def test_image_folder_with_train_and_val(tmp_path):
    _folder(tmp_path / "d" / "train", ["a", "b", "c"])
    _folder(tmp_path / "d" / "val", ["a", "b", "c"], n=2)
    ds = load_dataset(str(tmp_path / "d"), input_size=32)
    assert ds.train_x.shape[0] == 12 and ds.test_x.shape[0] == 6


@pytest.mark.parametrize("setup, message", [
    (lambda p: _folder(p, ["only"]), "only one class"),
    (lambda p: p.mkdir(), "no images found"),
    (lambda p: (_folder(p, ["a", "b"]), (p / "c").mkdir()), r"class folder \S+/data/c holds no images"),
    (lambda p: (_folder(p, ["a", "b"]), (p / "c").mkdir(), (p / "c" / "notes.txt").write_text("x"),
                (p / "d").mkdir()), r"class folders \S+/data/c, \S+/data/d hold no images \(\.bmp, "),
    (lambda p: (_folder(p / "train", ["a", "b", "c"]), _folder(p / "val", ["a", "b"]), (p / "val" / "c").mkdir()),
     r"class folder \S+/data/val/c holds no images"),
    (lambda p: (_folder(p / "train", ["a", "b"]), (p / "train" / "c").mkdir(), _folder(p / "val", ["a", "b", "c"])),
     r"class folder \S+/data/train/c holds no images"),
    (lambda p: (_folder(p / "train", ["a", "b"]), _folder(p / "val", ["a"])), r"missing from val/: \['b'\]"),
    (lambda p: (_folder(p, ["a", "b"]), (p / "a" / "bad.png").write_bytes(b"not a png")), "cannot read image .*bad.png"),
    (lambda p: (_folder(p, ["a", "b"]), (p / "a" / "empty.png").write_bytes(b"")), "cannot read image .*empty.png"),
    (lambda p: None, "does not exist"),
])
def test_bad_image_folders_give_one_clear_error(tmp_path, setup, message):
    p = tmp_path / "data"
    setup(p)
    with pytest.raises(CompressError, match=message) as error:
        load_dataset(str(p), input_size=32)
    assert "\n" not in str(error.value)


def test_hidden_files_are_not_images(tmp_path):
    """macOS leaves "._name.jpg" resource files beside photos copied from it: not images."""
    root = _folder(tmp_path / "photos", ["cat", "dog"], n=5)
    (root / "cat" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    ds = load_dataset(str(root), input_size=32)
    assert ds.train_x.shape[0] + ds.test_x.shape[0] == 10


def test_exif_orientation_is_applied_before_resizing(tmp_path):
    """Issue #16.13: a portrait phone photo (stored sideways, EXIF Orientation 6) is trained on upright,
    as the web page and the Pi runner see it."""
    # Setup: train/a holds the photo as the camera stored it; val/a the same pixels physically turned
    # 90 degrees clockwise, which is what Orientation 6 asks a viewer to do
    yy, xx = np.mgrid[0:24, 0:40]
    pixels = np.stack([xx * 6, yy * 10, (xx + yy) % 7 * 30], axis=-1).astype(np.uint8)
    root = tmp_path / "photos"
    for split in ("train", "val"):
        _folder(root / split, ["b"], n=1)
        (root / split / "a").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = root / "train" / "a" / "portrait.jpg"
    Image.fromarray(pixels).save(photo, quality=95, exif=exif)
    with Image.open(photo) as stored:
        decoded = np.asarray(stored.convert("RGB"))  # the file's pixels, not turned
    Image.fromarray(np.ascontiguousarray(np.rot90(decoded, k=-1))).save(root / "val" / "a" / "portrait.png")

    # Execute
    ds = load_dataset(str(root), input_size=32)

    # Assert: class "a" comes first in both splits; the loaded photo is the turned picture, to the bit
    assert ds.train_y.tolist() == ds.test_y.tolist() == [0, 1]
    assert torch.equal(ds.train_x[0], ds.test_x[0])
    sideways = np.asarray(Image.fromarray(decoded).resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.abs(ds.train_x[0].numpy().astype(int) - sideways).max() > 100  # the turn matters here


def test_input_size_too_small_is_refused():
    with pytest.raises(CompressError, match="too small"):
        load_dataset("digits", input_size=8)


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist"])
def test_unreachable_download_gives_a_clear_message(name, tmp_path, monkeypatch):
    """The real torchvision download path, pointed at a closed local proxy so it fails at once."""
    import compress.data

    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    monkeypatch.setattr(compress.data, "FASHION_MNIST_DEBIAN", tmp_path / "not-installed")
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(CompressError, match="download failed .*(check the network|apt-get install)"):
        load_dataset(name, input_size=32)
