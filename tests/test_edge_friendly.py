"""EdgeFriendly on a real trained model: activations become ReLU, SE blocks can go, and the input is untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compress.edge_friendly import EdgeFriendly
from compress.errors import CompressError
from tests.helpers import context, fmnist_subset, params, trained_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_tiny(tmp_path_factory.mktemp("base"))


def test_edge_friendly_swaps_activations_and_removes_se(trained, tmp_path):
    from torchvision.ops.misc import SqueezeExcitation

    with context(tmp_path) as ctx:
        out = EdgeFriendly(remove_se=True)(trained, ctx)

    notes = ctx.notes["edge_friendly"]
    assert not any(isinstance(m, (nn.Hardswish, SqueezeExcitation)) for m in out.modules())
    assert any(isinstance(m, nn.Hardswish) for m in trained.modules())  # input untouched
    assert notes["activations_swapped"] == sum(isinstance(m, nn.Hardswish) for m in trained.modules()) > 0
    assert notes["se_blocks_removed"] == sum(isinstance(m, SqueezeExcitation) for m in trained.modules()) > 0
    assert params(out) < params(trained)  # the SE blocks' weights are gone
    assert out(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_keeping_se_blocks_keeps_every_weight(trained, tmp_path):
    with context(tmp_path) as ctx:
        out = EdgeFriendly(activation="relu6")(trained, ctx)

    assert ctx.notes["edge_friendly"]["se_blocks_removed"] == 0
    assert any(isinstance(m, nn.ReLU6) for m in out.modules())
    assert params(out) == params(trained)  # activations have no weights
    x = fmnist_subset().normalize(fmnist_subset().test_x[:8])
    assert torch.isfinite(out(x)).all()


def test_unknown_activation_is_a_clear_error(trained, tmp_path):
    with context(tmp_path) as ctx, pytest.raises(CompressError, match="unknown edge-friendly activation 'gelu'"):
        EdgeFriendly(activation="gelu")(trained, ctx)
