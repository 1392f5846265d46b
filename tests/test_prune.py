"""Prune on real models and data: the input is untouched, channels go, the classifier stays, and BatchNorm
statistics are re-estimated so the pruned model still beats chance before any fine-tuning; the default
sensitivity allocation stays within uniform pruning's MACs and params."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from compress.errors import CompressError
from compress.measure import torch_macs
from compress.models import create_model
from compress.prune import Prune
from compress.train import evaluate
from tests.helpers import context, fmnist_subset, params, same_weights, trained_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_tiny(tmp_path_factory.mktemp("base"))


@pytest.mark.parametrize("importance", ["l2", "taylor", "bn"])
def test_prune_removes_channels_and_leaves_the_input_untouched(trained, tmp_path, importance):
    before = copy.deepcopy(trained)

    with context(tmp_path) as ctx:
        pruned = Prune(ratio=0.5, importance=importance, allocation="uniform")(trained, ctx)

    assert same_weights(trained, before), "Prune must not mutate its input"
    # ratio 0.5 → about (1 - 0.5)² of the conv params; BN importance cannot score the BN-less classifier Linear
    assert params(pruned) < (0.5 if importance == "bn" else 0.4) * params(trained)
    assert torch_macs(pruned, 32) < 0.5 * torch_macs(trained, 32)
    assert pruned.classifier[-1].out_features == 10  # the classifier is never pruned
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels > 8]
    assert convs and all(m.out_channels % 8 == 0 for m in convs)  # round_to=8
    assert pruned(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_iterative_pruning_reaches_the_same_ratio(trained, tmp_path):
    with context(tmp_path) as ctx:
        one = Prune(ratio=0.5, steps=1, allocation="uniform")(trained, ctx)
        two = Prune(ratio=0.5, steps=2, allocation="uniform")(trained, ctx)

    assert abs(params(one) - params(two)) / params(one) < 0.1


@pytest.mark.parametrize("name, allocation", [("mobilenet_v3_small", "uniform"), ("mobilenet_v2", "uniform"),
                                              ("efficientnet_b0", "uniform"), ("efficientnet_b0", "sensitivity")])
def test_prune_is_correct_on_se_blocks_residuals_and_depthwise(name, allocation, tmp_path):
    model, _ = create_model(name, num_classes=10)
    model.eval()

    with context(tmp_path, data=fmnist_subset(300, 50)) as ctx:
        pruned = Prune(ratio=0.5, allocation=allocation)(model, ctx)

    assert pruned.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert params(pruned) < 0.45 * params(model)
    if allocation == "sensitivity":  # B0's SE blocks and stages: every group scanned, the budget still kept
        note = ctx.notes["prune"]
        assert note["groups_scanned"] > 30 and note["params"] <= note["budget_params"]


def test_bn_recalibration_keeps_pruned_accuracy_above_chance(trained, tmp_path):
    data = fmnist_subset()

    with context(tmp_path) as ctx:
        pruned = Prune(ratio=0.3, allocation="uniform")(trained, ctx)

    assert evaluate(trained, data) > 60
    assert evaluate(pruned, data) > 20  # chance is 10%


@pytest.mark.parametrize("field, value, message", [
    ("ratio", 1.0, r"prune ratio must be in \[0, 1\), got 1.0"),
    ("importance", "random", "unknown importance 'random': choose one of l2, taylor, bn"),
    ("steps", 0, "prune steps must be at least 1"),
    ("allocation", "greedy", "unknown allocation 'greedy': choose one of uniform, sensitivity"),
    ("protect_above_pt", -1.0, "protect_above_pt must be at least 0, got -1.0"),
    ("scan_images", 0, "scan_images must be at least 1, got 0"),
])
def test_bad_settings_are_one_clear_error_before_any_work(trained, tmp_path, field, value, message):
    with context(tmp_path) as ctx, pytest.raises(CompressError, match=message):
        Prune(**{field: value})(trained, ctx)


def test_sensitivity_allocation_spends_uniform_pruning_budget_where_it_costs_least(trained, tmp_path):
    with context(tmp_path) as ctx:
        uniform = Prune(ratio=0.5, allocation="uniform")(trained, ctx)
        chosen = Prune(ratio=0.5)(trained, ctx)  # the default
        note = dict(ctx.notes["prune"])
        everything_allowed = Prune(ratio=0.5, allocation="sensitivity", protect_above_pt=100)(trained, ctx)

    # the same budget as uniform pruning, no more
    assert torch_macs(chosen, 32) <= torch_macs(uniform, 32) and params(chosen) <= params(uniform)
    assert (note["macs"], note["params"]) == (torch_macs(chosen, 32), params(chosen))
    assert note["budget_macs"] == torch_macs(uniform, 32)
    # the scan found groups that lose more than a point alone, kept them whole, and pruned the rest harder
    scans = {s["group"]: s for s in note["most_sensitive"]}
    assert note["kept_groups"] and all(scans[g]["drop_pt"] > 1.0 for g in note["kept_groups"] if g in scans)
    modules = dict(chosen.named_modules())
    assert all(modules[g].out_channels == dict(trained.named_modules())[g].out_channels for g in note["kept_groups"])
    assert 0.5 < note["others_ratio"] <= 0.875
    assert chosen(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # with no group over its threshold, the plan is uniform pruning
    assert params(everything_allowed) == params(uniform)
