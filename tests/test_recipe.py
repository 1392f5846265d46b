"""The adaptive training recipe: the default job untouched, the rules for small data and pretrained weights, an LR
that is given used as given, an LR range test that finds no divergence falling back to the recipe's LR, and recovery
fine-tuning at half the baseline's peak LR, with the baseline's backbone LR scale, BatchNorm freezing and (without
a teacher) label smoothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compress.errors import CompressError
from compress.finetune import RECOVERY_EPOCHS, RECOVERY_LR, SLOW_BACKBONE_RECOVERY_EPOCHS, Finetune
from compress.lr_range import PROBE_DIVISOR, probe_lr, resolve_lr
from compress.recipe import CLIP_NORM, DEFAULT_LR, MIN_BATCH, Recipe
from tests.helpers import context, digits, fmnist_subset


def test_the_default_job_gets_exactly_the_tuned_recipe():
    recipe, why = Recipe().adapted(train_images=48_000, pretrained=False)

    assert (recipe.lr, recipe.batch_size, recipe.clip_grad_norm, recipe.probe_lr) == (DEFAULT_LR, 256, None, False)
    assert recipe.head_epochs == 0 and not recipe.freeze_bn and not recipe.adapt and why == []


def test_small_data_shrinks_the_batch_scales_the_lr_and_asks_for_a_range_test():
    recipe, why = Recipe().adapted(train_images=400, pretrained=False)

    assert recipe.batch_size == MIN_BATCH and recipe.lr == pytest.approx(DEFAULT_LR * (MIN_BATCH / 256) ** 0.5)
    assert recipe.probe_lr and recipe.clip_grad_norm == CLIP_NORM
    assert any("LR range test" in w for w in why) and any("square-root scaling rule" in w for w in why)


def test_an_lr_that_is_given_is_used_as_given_even_on_small_data():
    recipe, why = Recipe(lr=0.1).adapted(train_images=3_000, pretrained=False)  # 94 steps at batch 32

    assert not recipe.probe_lr and recipe.batch_size == 32 and recipe.lr == pytest.approx(0.1 * (32 / 256) ** 0.5)
    assert any("from the lr given (no LR range test)" in w for w in why)


def test_pretrained_weights_get_head_epochs_and_on_small_data_a_slower_backbone_and_frozen_statistics():
    recipe, why = Recipe(epochs=5).adapted(train_images=2_000, pretrained=True)

    assert recipe.head_epochs == 1 and recipe.backbone_lr_scale == 0.1 and recipe.freeze_bn
    assert any(w.startswith("transfer learning: 1 head-only epoch") for w in why)
    scratch, _ = Recipe(epochs=5).adapted(train_images=2_000, pretrained=False)
    assert scratch.head_epochs == 0 and scratch.backbone_lr_scale == 1.0 and not scratch.freeze_bn
    large, why = Recipe(epochs=5).adapted(train_images=60_000, pretrained=True)  # enough data to move the features
    assert large.backbone_lr_scale == 1.0 and large.head_epochs == 1 and not large.freeze_bn
    assert any("60,000 images are enough to adapt the pretrained features" in w for w in why)
    given, _ = Recipe(epochs=5, backbone_lr_scale=0.3).adapted(train_images=60_000, pretrained=True)
    assert given.backbone_lr_scale == 0.3
    # Baselines cached when frozen statistics were ImageNet's are not reused (a new key); the others keep theirs.
    assert recipe.cache_fields()["freeze_bn"] == "data statistics" and "freeze_bn" not in scratch.cache_fields()


def test_too_few_steps_are_said_before_training():
    recipe, _ = Recipe(epochs=2).adapted(train_images=400, pretrained=False)  # 2 × 25 steps

    assert "only 50 optimizer steps" in recipe.too_short(train_images=400, pretrained=False)
    assert Recipe(epochs=25).too_short(train_images=48_000, pretrained=False) == ""


class _Immovable(nn.Module):
    """A network whose loss no step can change (its one parameter is multiplied by zero)."""

    def __init__(self, classes: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.register_buffer("logits", torch.linspace(-1, 1, classes))
        self.fc = nn.Linear(1, classes)  # the "head" the optimizer groups look for
        self.fc.weight.requires_grad_(False)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1) + 0 * self.w + 0 * self.fc.bias


def test_an_lr_range_test_that_finds_no_falling_loss_keeps_the_recipes_lr():
    data = digits()
    recipe, _ = Recipe(epochs=3).adapted(train_images=int(data.train_x.shape[0]), pretrained=False)
    warnings: list[str] = []

    settled = resolve_lr(_Immovable(len(data.classes)), data, recipe, device="cpu", seed=0, warn=warnings.append)

    assert settled.lr == recipe.lr and not settled.probe_lr
    assert len(warnings) == 1 and warnings[0].startswith("LR range test inconclusive")


def test_an_lr_range_test_in_which_a_learning_network_never_diverges_keeps_the_recipes_lr():
    # The small CNN learns on digits at every LR up to the test's 4.0 without diverging (gradients clipped). That
    # used to pick 0.4, a guess at which compress's tiny MobileNetV3 stayed at chance on 2 ranks.
    from tests.fixtures.tiny_net import TinyNet

    data = digits()
    recipe, _ = Recipe(epochs=3).adapted(train_images=int(data.train_x.shape[0]), pretrained=False)
    torch.manual_seed(0)
    warnings: list[str] = []

    settled = resolve_lr(TinyNet(num_classes=10), data, recipe, device="cpu", seed=0, warn=warnings.append)

    assert settled.lr == recipe.lr == pytest.approx(DEFAULT_LR * (recipe.batch_size / 256) ** 0.5)
    assert warnings == ["LR range test inconclusive (the loss did not diverge at any LR it tried): peak LR "
                        f"{recipe.lr:g}, the recipe's"]


def test_an_lr_range_test_picks_a_tenth_of_the_lr_at_which_the_loss_diverged():
    from tests.fixtures.tiny_net import TinyNet

    data = digits()
    recipe, _ = Recipe(epochs=3).adapted(train_images=int(data.train_x.shape[0]), pretrained=False)
    torch.manual_seed(0)

    picked = probe_lr(TinyNet(num_classes=10), data, recipe, device="cpu", seed=0, high=40.0)  # diverges past 4

    assert picked is not None and 4.0 / PROBE_DIVISOR < picked <= 40.0 / PROBE_DIVISOR


def test_recovery_learns_at_half_the_baselines_peak_lr_per_image():
    base = {"lr": 0.1, "batch_size": 32, "epochs": 3, "probe_lr": False}

    finetune = Finetune().with_baseline_recipe(base)
    assert finetune.lr == pytest.approx(0.5 * 0.1 * (256 / 32) ** 0.5, rel=1e-3)
    assert finetune.recipe().adapted(train_images=3_000, pretrained=False)[0].lr == pytest.approx(0.05, rel=1e-3)
    assert Finetune(lr=0.07).with_baseline_recipe(base).lr == 0.07  # the user's --finetune-lr wins
    for unknown in ({}, {**base, "epochs": 0}, {**base, "probe_lr": True}):  # untrained, or a pre-probe record
        assert Finetune().with_baseline_recipe(unknown).lr is None
    assert Finetune().recipe().adapted(train_images=48_000, pretrained=False,
                                       default_lr=RECOVERY_LR)[0].lr == RECOVERY_LR
    assert Finetune().with_baseline_recipe({"lr": DEFAULT_LR, "batch_size": 256, "epochs": 25}).lr == RECOVERY_LR


def test_recovery_distils_from_the_baseline_only_on_data_large_enough_to_teach():
    from compress.recipe import SMALL_DATA

    assert Finetune().distils(48_000) and not Finetune().distils(SMALL_DATA - 1)
    assert Finetune(distill=True).distils(400) and not Finetune(distill=False).distils(48_000)


def test_recovery_inherits_the_baselines_slow_backbone_and_frozen_statistics_and_trains_longer():
    small_transfer = {"lr": 0.05, "batch_size": 16, "epochs": 3, "backbone_lr_scale": 0.1, "freeze_bn": True}

    finetune = Finetune().with_baseline_recipe(small_transfer)
    assert finetune.backbone_lr_scale == 0.1 and finetune.freeze_bn is True
    # the baseline's own peak LR (scaled from batch 16 to 256), not half of it: the backbone learns at a tenth of it
    assert finetune.lr == pytest.approx(0.05 * (256 / 16) ** 0.5, rel=1e-3)
    assert finetune.epochs == finetune.recipe().epochs == SLOW_BACKBONE_RECOVERY_EPOCHS  # the backbone learns slowly
    chosen = Finetune(epochs=RECOVERY_EPOCHS, backbone_lr_scale=1.0,
                      freeze_bn=False).with_baseline_recipe(small_transfer)
    assert chosen.backbone_lr_scale == 1.0 and chosen.freeze_bn is False  # the YAML's finetune section wins
    assert chosen.epochs == RECOVERY_EPOCHS
    scratch = Finetune().with_baseline_recipe({"lr": DEFAULT_LR, "batch_size": 256, "epochs": 25,
                                               "backbone_lr_scale": 1.0, "freeze_bn": False})
    assert scratch == Finetune(lr=RECOVERY_LR)  # the main job: as before, and its stage record equals its config
    assert scratch.recipe().epochs == RECOVERY_EPOCHS
    with pytest.raises(CompressError, match="backbone_lr_scale"):
        Finetune(backbone_lr_scale=0).check()
    with pytest.raises(CompressError, match="label_smoothing"):
        Finetune(label_smoothing=1.0).check()


def test_recovering_a_fine_tuned_imagenet_model_on_small_data_keeps_its_backbone_slow(tmp_path):
    """EfficientNet-Lite0's real ImageNet weights fine-tuned on 256 Fashion-MNIST images, then recovered as the
    pipeline recovers it: the backbone trains at the baseline's tenth of the head's LR, on frozen BatchNorm
    statistics."""
    from compress.baseline import Baseline
    from compress.pipeline import _with_baseline_recipe

    with context(tmp_path, data=fmnist_subset(limit_train=256, limit_test=100)) as ctx:
        model = Baseline(model="efficientnet_lite0", weights="imagenet", recipe=Recipe(epochs=1, lr=0.1))(None, ctx)
        _with_baseline_recipe(Finetune(epochs=1, quant_aware_epochs=0), ctx)(model, ctx)

    base, recovery = ctx.notes["baseline"]["recipe"], ctx.notes["finetune"]["recipe"]
    assert base["backbone_lr_scale"] == recovery["backbone_lr_scale"] == 0.1
    assert recovery["lr"] == pytest.approx(base["lr"] * (recovery["batch_size"] / base["batch_size"]) ** 0.5, rel=1e-3)
    assert base["freeze_bn"] and recovery["freeze_bn"]
    assert any("as the baseline fine-tuned its pretrained weights" in w and "; 1 epoch (the default after such a "
               f"baseline: {SLOW_BACKBONE_RECOVERY_EPOCHS})" in w for w in ctx.notes["finetune"]["recipe_adapted"])
    assert recovery["epochs"] == 1  # the caller's epochs win over the longer default
    # no teacher on 256 images: the hard labels are smoothed as the baseline smoothed them
    assert recovery["label_smoothing"] == base["label_smoothing"] == Recipe().label_smoothing > 0
