"""Model registry and weights: real torchvision builders, and the real hub-cache download path, offline."""

from __future__ import annotations

import pytest
import torch

from compress.errors import CompressError
from compress.models import create_model, list_models, register_model, weights_file


def test_registry_lists_the_documented_models_and_refuses_duplicates():
    assert {"mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2", "efficientnet_b0",
            "tiny_mobilenet_v3"} <= set(list_models())
    with pytest.raises(ValueError, match="already registered"):
        register_model("mobilenet_v2")(lambda num_classes, imagenet: None)


@pytest.mark.parametrize("name", ["mobilenet_v3", "mobilenet_v2", "efficientnet_b0"])
def test_head_is_adapted_to_the_class_count(name):
    model, how = create_model(name, num_classes=7, weights="none")
    out = model.eval()(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert "scratch" in how


def test_imagenet_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """The real torchvision download-and-cache code path, fed by a file placed in the hub cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = weights_file("mobilenet_v3_small")
    assert target is not None and target.parent == tmp_path / "hub" / "checkpoints"
    import torchvision

    reference = torchvision.models.mobilenet_v3_small(weights=None)
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)

    model, how = create_model("mobilenet_v3", num_classes=10, weights="imagenet")
    auto_model, auto_how = create_model("mobilenet_v3", num_classes=10, weights="auto")

    assert "ImageNet" in how and "ImageNet" in auto_how
    assert torch.equal(model.features[0][0].weight, reference.features[0][0].weight)
    assert model.classifier[-1].out_features == 10


def test_auto_weights_without_a_cached_file_trains_from_scratch_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _, how = create_model("mobilenet_v3", num_classes=10, weights="auto")
    assert "scratch" in how


def test_unreachable_weights_give_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # A closed local port as the proxy: the real download code runs and fails at once, offline or not.
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(CompressError, match=r"could not load ImageNet weights .* download https://.* to .*--weights none"):
        create_model("mobilenet_v3", num_classes=10, weights="imagenet")


def test_weights_path_for_another_model_is_refused(tmp_path):
    other, _ = create_model("mobilenet_v2", num_classes=10)
    f = tmp_path / "other.pt"
    torch.save(other.state_dict(), f)
    with pytest.raises(CompressError, match="does not fit this model"):
        create_model("mobilenet_v3", num_classes=10, weights=str(f))
