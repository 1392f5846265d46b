"""Training on real data: quantization-aware rounding hooks, BatchNorm re-estimation, divergence recovery
(rolled back and retried at half the learning rate, said through ``on_warning``, or one clear error), and a
per-epoch checkpoint that does not fit said out loud instead of silently ignored."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from compress.data import normalize
from compress.divergence import collapsed
from compress.errors import CompressError
from compress.models import create_model
from compress.qat import fake_quant_activations
from compress.recipe import Recipe
from compress.train import MAX_RECOVERIES, evaluate, fit, recalibrate_bn
from tests.helpers import digits, fmnist_subset, trained_tiny

TINY_NET = Path(__file__).resolve().parent / "fixtures" / "tiny_net.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_tiny(tmp_path_factory.mktemp("base"))


def test_quant_aware_hooks_round_activations_and_leave_no_trace(trained):
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


def test_quant_aware_rounding_is_torchs_fake_quantize_only_faster():
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    from compress.qat import _fake_quantize

    kw = dict(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
              qscheme=torch.per_tensor_affine)
    ours, theirs = _fake_quantize()(**kw), FakeQuantize(**kw)
    assert ours.state_dict().keys() == theirs.state_dict().keys()  # checkpoints hold the same ranges
    torch.manual_seed(0)
    clipped = 0
    for step in range(3):  # the moving-average ranges move alike
        x = (torch.randn(8, 16, 5, 5) * (step + 1)).contiguous(memory_format=torch.channels_last).requires_grad_()
        a, b = ours(x), theirs(x)
        g = torch.randn_like(a)
        ga, gb = torch.autograd.grad(a, x, g)[0], torch.autograd.grad(b, x, g)[0]
        torch.testing.assert_close(ours.scale, theirs.scale)
        assert torch.equal(ours.zero_point, theirs.zero_point)
        off = (a - b).abs() > 1e-6  # a tie can round the other way: one step of the grid at most, rarely
        assert off.float().mean() < 1e-3 and (a - b).abs().max() <= ours.scale.item() * 1.001
        assert torch.equal(ga, gb)  # straight through inside the range, zero outside
        clipped += int((gb == 0).sum())
    assert clipped > 0  # wider inputs fell outside the moving-average range: the mask was exercised


def test_bn_recalibration_restores_the_running_statistics(trained):
    data = fmnist_subset()
    model = copy.deepcopy(trained).eval()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()  # mean 0, variance 1: what a freshly resized layer starts from
    stale = evaluate(model, data)

    recalibrate_bn(model, data)

    before = evaluate(trained, data)
    assert before > 60 and stale < 30  # statistics that do not fit the weights cost most of the accuracy
    assert evaluate(model, data) > before - 5  # one pass over training images brings it back
    assert all(m.momentum == 0.01 and not m.training for m in bns)  # torchvision's momentum and eval mode kept


def test_frozen_batchnorm_statistics_are_this_datas_and_stay_as_the_weights_were_trained_with():
    from tests.fixtures.tiny_net import TinyNet

    data = fmnist_subset()
    torch.manual_seed(0)
    model = TinyNet(num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(100.0)  # another domain's statistics (pretrained at another size, in colour)
    expected = copy.deepcopy(model)
    recalibrate_bn(expected, data)  # this data's statistics under the weights training starts from

    trained = fit(model, data, Recipe(epochs=1, batch_size=64, lr=0.05, adapt=False, head_epochs=0, freeze_bn=True),
                  seed=0)

    pairs = [(a, b) for a, b in zip(trained.modules(), expected.modules()) if isinstance(a, nn.BatchNorm2d)]
    assert pairs and all(torch.allclose(a.running_mean, b.running_mean, atol=1e-3) and  # memory layouts differ
                         torch.allclose(a.running_var, b.running_var, rtol=1e-3) for a, b in pairs)
    assert any(not torch.equal(a.weight, b.weight) for a, b in pairs)  # the affine parameters trained


def test_an_absurd_learning_rate_fails_with_one_line_after_max_recoveries():
    """Peak LR 50 diverges at every retry (25, 12.5, 6.25): three warnings, then the one-line error."""
    model, _ = create_model("tiny_mobilenet_v3", num_classes=10)
    warnings: list[str] = []

    with pytest.raises(CompressError) as e:
        fit(model, digits(), Recipe(epochs=3, lr=50), seed=0, on_warning=warnings.append)

    message = str(e.value)
    assert "\n" not in message and message.startswith("training diverged")
    assert f"after {MAX_RECOVERIES} automatic retries: lower the lr" in message
    assert f"even at {50 / 2 ** MAX_RECOVERIES:g} peak LR" in message
    assert len(warnings) == MAX_RECOVERIES
    for i, w in enumerate(warnings, start=1):
        assert "went back to the last good epoch and continued at half the learning rate" in w
        assert f"(peak {50 / 2 ** i:g})" in w


def test_a_diverging_epoch_is_rolled_back_and_training_recovers():
    """Peak LR 10 blows the loss up in epoch 2; half of it trains on, and the model learns."""
    model, _ = create_model("tiny_mobilenet_v3", num_classes=10)
    warnings: list[str] = []
    epochs: list[dict] = []

    trained = fit(model, digits(), Recipe(epochs=3, lr=10), seed=0, on_warning=warnings.append,
                  on_epoch=epochs.append)

    assert 1 <= len(warnings) < MAX_RECOVERIES
    assert all("went back to the last good epoch and continued at half the learning rate" in w for w in warnings)
    assert "(peak 5)" in warnings[0]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all(e["loss"] < 10 for e in epochs)
    assert all(torch.isfinite(p).all() for p in trained.parameters())
    assert evaluate(trained, digits()) > 20  # chance is about 10%


def test_training_accuracy_falling_back_to_chance_is_a_collapse_but_a_dip_or_a_slow_start_is_not():
    """The rule behind rolling back a collapse without a loss spike (Lite0 recovering on 500 images ended at
    chance, 20% on 5 classes, with finite losses): from the best epoch's accuracy back to chance."""
    assert collapsed(21.0, [60.0, 72.0], chance_pct=20.0) == "training accuracy fell from 72.0% to 21.0%, chance level"
    assert collapsed(70.0, [60.0, 72.0], chance_pct=20.0) == ""  # a dip, not a collapse
    assert collapsed(40.0, [60.0, 72.0], chance_pct=20.0) == ""  # far below, but not at chance: the loss rule's job
    assert collapsed(21.8, [28.8, 33.6, 39.6], chance_pct=20.0).startswith("training accuracy fell from 39.6%")
    assert collapsed(10.5, [18.0], chance_pct=10.0) == ""  # never well above chance: a slow start, not a collapse
    assert collapsed(10.0, [], chance_pct=10.0) == ""  # the first epoch has nothing to fall from


def test_a_checkpoint_that_does_not_fit_is_a_warning_and_training_starts_over(tmp_path):
    data = digits()
    small = dataclasses.replace(data, train_x=data.train_x[:320], train_y=data.train_y[:320])
    recipe = Recipe(epochs=1, batch_size=64, lr=0.2)
    checkpoint = tmp_path / "train_state.pt"
    tiny, _ = create_model("tiny_mobilenet_v3", num_classes=10)
    fit(tiny, small, recipe, seed=0, checkpoint=checkpoint)
    assert checkpoint.is_file()
    other, _ = create_model(f"{TINY_NET}:build", num_classes=10)
    warnings: list[str] = []
    epochs: list[dict] = []

    fit(other, small, recipe, seed=0, checkpoint=checkpoint, on_warning=warnings.append, on_epoch=epochs.append)

    assert len(warnings) == 1
    assert f"the training checkpoint {checkpoint} does not fit this model or recipe" in warnings[0]
    assert warnings[0].endswith("training starts over from epoch 1")
    assert [e["epoch"] for e in epochs] == [1]  # trained from scratch, not skipped as if resumed


def test_quant_aware_epochs_are_the_last_ones_and_leave_no_hooks():
    data = digits()
    small = dataclasses.replace(data, train_x=data.train_x[:320], train_y=data.train_y[:320])
    model, _ = create_model("tiny_mobilenet_v3", num_classes=10)
    epochs: list[dict] = []

    trained = fit(model, small, Recipe(epochs=2, batch_size=64, lr=0.2), seed=0, quant_aware_epochs=1,
                  on_epoch=epochs.append)

    assert [e["quant_aware"] for e in epochs] == [False, True]
    assert not any(m._forward_hooks for m in trained.modules())
    assert not any(m._forward_hooks for m in model.modules())  # the input was never touched


def test_attention_transfer_matches_the_stages_pulls_the_student_towards_the_teacher_and_leaves_no_hooks(trained,
                                                                                                          tmp_path):
    from compress.attention import Transfer, stage_names
    from compress.prune import Prune
    from compress.recipe import Distill
    from tests.helpers import context

    data = fmnist_subset()
    x = normalize(data.test_x[:64])
    names = stage_names(trained, x[:1])
    with context(tmp_path) as ctx:
        student = Prune(ratio=0.5, allocation="uniform")(trained, ctx)

    def attention_loss(net: nn.Module) -> float:
        with Transfer(net, trained, names, beta=1000.0) as transfer, torch.no_grad():
            net.eval()(x), trained(x)
            return float(transfer.loss())

    # Execute
    before = attention_loss(student)
    small = dataclasses.replace(data, train_x=data.train_x[:640], train_y=data.train_y[:640])
    recovered = fit(student, small, Recipe(epochs=2, batch_size=64, lr=0.05), seed=0, teacher=trained,
                    distill=Distill(attention=1000.0))

    # Assert: one stage per spatial size above 1×1 (16, 8, 4 and 2 px at 32 px), the same in the pruned network;
    # the student moved towards the teacher's attention; no hook left on any network
    assert names == ["features.0", "features.1", "features.3", "features.8"] == stage_names(student, x[:1])
    assert attention_loss(copy.deepcopy(trained)) == 0.0
    assert attention_loss(recovered) < before
    assert not any(m._forward_hooks for net in (trained, student, recovered) for m in net.modules())
    assert stage_names(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), x[:1]) == []  # no features: off


def test_going_back_to_before_the_quant_aware_epochs_drops_their_rounding_and_its_ranges():
    """A quantization-aware epoch that diverges leaves NaN ranges in its observers. Going back to a plain epoch must
    drop them, or every retry rounds with NaN and diverges again at any LR (EfficientNet-B0 on all of Fashion-MNIST
    at 32 px did: "diverged at epoch 5 even at 0.025 peak LR after 3 automatic retries")."""
    from compress.train import _new_state, _restore, _start_rounding

    model, _ = create_model("tiny_mobilenet_v3", num_classes=10)
    x = normalize(digits().test_x[:8])
    recipe = Recipe(epochs=2, batch_size=64, lr=0.2)
    state = _new_state(model.eval(), recipe, steps_per_epoch=5, seed=0)
    plain_epoch = copy.deepcopy(state.save())
    with torch.no_grad():
        clean = model(x)
        _start_rounding(state)  # the quantization-aware epoch begins, and diverges:
        for fq in state.rounding:
            fq.activation_post_process.min_val.fill_(float("nan"))
        assert torch.isnan(model(x)).all()

        _restore(state, plain_epoch, recipe, steps_per_epoch=5, lr_scale=0.5)

        assert state.rounding is None and state.stop_rounding is None  # the next such epoch starts them afresh
        assert not any(m._forward_hooks for m in model.modules())
        assert torch.equal(model(x), clean)


def test_a_diverging_quant_aware_epoch_is_retried_without_the_rounding(monkeypatch):
    """EfficientNet-B0 on all of Fashion-MNIST at 32 px diverged in its first quantization-aware epoch at every LR
    down to an eighth. Here the rounding itself returns NaN (its ranges NaN from the first batch on): training goes
    back, drops the rounding for the rest of the run, says so, and finishes."""
    import compress.train as train

    def nan_rounding(model):
        rounding, remove = fake_quant_activations(model)
        for fq in rounding:
            fq.disable_observer()
            fq.scale.fill_(float("nan"))
        return rounding, remove

    monkeypatch.setattr(train, "fake_quant_activations", nan_rounding)
    data = digits()
    small = dataclasses.replace(data, train_x=data.train_x[:320], train_y=data.train_y[:320])
    model, _ = create_model("tiny_mobilenet_v3", num_classes=10)
    warnings: list[str] = []
    epochs: list[dict] = []

    trained = fit(model, small, Recipe(epochs=2, batch_size=64, lr=0.2), seed=0, quant_aware_epochs=1,
                  on_epoch=epochs.append, on_warning=warnings.append)

    assert len(warnings) == 1 and "diverged at epoch 2" in warnings[0]
    assert warnings[0].endswith("without quantization-aware rounding (the INT8 step still calibrates)")
    assert [e["quant_aware"] for e in epochs] == [False, False]
    assert all(torch.isfinite(p).all() for p in trained.parameters())
    assert not any(m._forward_hooks for m in trained.modules())
