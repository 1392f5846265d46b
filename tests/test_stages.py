"""Each stage's contract on real models and data: the input is untouched, shapes are right, and the
achieved change shows in the counts."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from compress.edge_friendly import EdgeFriendly
from compress.errors import CompressError
from compress.export import Export, run_onnx, session
from compress.measure import onnx_params_macs, torch_macs
from compress.models import create_model
from compress.pipeline import Baseline, check_chain, stages
from compress.config import resolve
from compress.prune import Prune
from compress.quantize import Quantize
from compress.train import Recipe, evaluate
from tests.helpers import context, fmnist_subset


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real trained tiny MobileNetV3 (SE blocks, hardswish, depthwise convs) on a Fashion-MNIST subset."""
    with context(tmp_path_factory.mktemp("base")) as ctx:
        model = Baseline(model="tiny_mobilenet_v3", weights="none",
                         recipe=Recipe(epochs=3, batch_size=64, lr=0.2))(None, ctx)
    return model


@pytest.mark.parametrize("importance", ["l2", "taylor", "bn"])
def test_prune_removes_channels_and_leaves_the_input_untouched(trained, tmp_path, importance):
    before = copy.deepcopy(trained)
    with context(tmp_path) as ctx:
        pruned = Prune(ratio=0.5, importance=importance)(trained, ctx)

    assert _same_weights(trained, before), "Prune must not mutate its input"
    # ratio 0.5 → about (1 - 0.5)² of the conv params; BN importance cannot score the BN-less classifier Linear
    assert _params(pruned) < (0.5 if importance == "bn" else 0.4) * _params(trained)
    assert torch_macs(pruned, 32) < 0.5 * torch_macs(trained, 32)
    assert pruned.classifier[-1].out_features == 10  # the classifier is never pruned
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels > 8]
    assert convs and all(m.out_channels % 8 == 0 for m in convs)  # round_to=8
    assert pruned(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_iterative_pruning_reaches_the_same_ratio(trained, tmp_path):
    with context(tmp_path) as ctx:
        one = Prune(ratio=0.5, steps=1)(trained, ctx)
        two = Prune(ratio=0.5, steps=2)(trained, ctx)
    assert abs(_params(one) - _params(two)) / _params(one) < 0.1


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0"])
def test_prune_is_correct_on_se_blocks_residuals_and_depthwise(name, tmp_path):
    model, _ = create_model(name, num_classes=10)
    model.eval()
    with context(tmp_path, data=fmnist_subset(300, 50)) as ctx:
        pruned = Prune(ratio=0.5)(model, ctx)
    out = pruned.eval()(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 10)
    assert _params(pruned) < 0.45 * _params(model)


def test_bn_recalibration_keeps_pruned_accuracy_above_chance(trained, tmp_path):
    data = fmnist_subset()
    with context(tmp_path) as ctx:
        pruned = Prune(ratio=0.3)(trained, ctx)
    assert evaluate(trained, data.test_x, data.test_y) > 60
    assert evaluate(pruned, data.test_x, data.test_y) > 20  # chance is 10%


def test_edge_friendly_swaps_activations_and_removes_se(trained, tmp_path):
    from torchvision.ops.misc import SqueezeExcitation

    with context(tmp_path) as ctx:
        out = EdgeFriendly(enabled=True, remove_se=True)(trained, ctx)
        notes = ctx.notes["edge_friendly"]
    assert not any(isinstance(m, (nn.Hardswish, SqueezeExcitation)) for m in out.modules())
    assert any(isinstance(m, nn.Hardswish) for m in trained.modules())  # input untouched
    assert notes["activations_swapped"] > 0 and notes["se_blocks_removed"] > 0


def test_quant_aware_hooks_round_activations_and_leave_no_trace(trained):
    from compress.data import normalize
    from compress.train import fake_quant_activations

    model = copy.deepcopy(trained).eval()
    x = normalize(fmnist_subset().test_x[:64])
    with torch.no_grad():
        clean = model(x)
        bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        _, remove = fake_quant_activations(model)
        seen: list[torch.Tensor] = []
        spy = bn.register_forward_hook(lambda _m, _i, out: seen.append(out))  # runs after the rounding hook
        rounded = model(x)
        spy.remove()
        remove()
        after = model(x)
    assert len(torch.unique(seen[0])) <= 256  # one uint8 grid per tensor
    assert not torch.equal(rounded, clean)
    assert not any(m._forward_hooks for m in model.modules())
    assert torch.equal(after, clean)


def test_export_matches_torch_on_real_images(trained, tmp_path):
    data = fmnist_subset()
    with context(tmp_path) as ctx:
        onnx_model = Export()(trained, ctx)
        notes = ctx.notes["export"]
    onnx.checker.check_model(str(onnx_model.path))
    x = ((data.test_x[:64].float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
         / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    with torch.inference_mode():
        ref = trained(x).numpy()
    got = run_onnx(session(onnx_model.path), x.numpy())
    np.testing.assert_allclose(got, ref, atol=1e-3)
    assert notes["parity_max_abs_diff"] <= 1e-3 and notes["opset"] == 17
    params, macs = onnx_params_macs(onnx_model.path, 32)
    assert macs == torch_macs(trained, 32)  # one definition of MACs for both kinds of model
    assert abs(params - _params(trained)) / _params(trained) < 0.02  # BN folded into convs


def test_export_parity_failure_stops_with_a_clear_message(trained, tmp_path):
    with context(tmp_path) as ctx, pytest.raises(CompressError, match="ONNX parity check failed"):
        Export(atol=1e-12)(trained, ctx)
    assert not (tmp_path / "export" / "model.onnx").exists()  # no artifact that looks complete


def test_quantize_writes_a_smaller_qdq_int8_model(trained, tmp_path):
    data = fmnist_subset()
    with context(tmp_path) as ctx:
        fp32 = Export()(trained, ctx)
        int8 = Quantize(calibration_size=256)(fp32, ctx)
        notes = ctx.notes["quantize"]
    m = onnx.load(str(int8.path))
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in m.graph.initializer)
    assert int8.path.stat().st_size < fp32.path.stat().st_size
    assert notes["calibration_split"] == "train"
    x = ((data.test_x.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
         / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)).numpy()
    acc_fp32 = (run_onnx(session(fp32.path), x).argmax(1) == data.test_y.numpy()).mean()
    acc_int8 = (run_onnx(session(int8.path), x).argmax(1) == data.test_y.numpy()).mean()
    assert acc_int8 > acc_fp32 - 0.05


def test_chain_is_checked_before_any_work():
    chain = stages(resolve(overrides={"int8": True, "prune": {"ratio": 0.5}}))
    assert [s.name for s in chain] == ["baseline", "prune", "finetune", "export", "quantize"]
    check_chain(chain)
    with pytest.raises(CompressError, match="quantize needs an ONNX model but gets torch: put export before it"):
        check_chain([chain[0], chain[-1]])
    assert [s.name for s in stages(resolve())] == ["baseline", "export"]
