"""compress.depthwise_grad: the weight gradient for depthwise convolutions on inputs smaller than their kernel."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from compress import train
from compress.depthwise_grad import fast_small_input_depthwise, weight_grad
from compress.models import create_model
from compress.recipe import Recipe
from tests.helpers import digits


@pytest.mark.parametrize("size,kernel,stride,bias", [(2, 5, 1, False), (4, 5, 2, True), (1, 3, 1, False),
                                                      (3, (5, 3), (2, 1), True), (6, 3, 2, False),
                                                      (1, 5, 2, True), (2, 7, 1, False), (3, 7, 3, False)])
def test_its_gradients_are_torch_autograds_in_double_precision(size, kernel, stride, bias):
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    conv = torch.nn.Conv2d(6, 6, kernel, stride, padding=(kh // 2, kw // 2), groups=6, bias=bias).double()
    x = torch.randn(3, 6, size, size + 1, dtype=torch.float64, requires_grad=True)
    with fast_small_input_depthwise(conv):
        assert ("SmallInputDepthwise" in type(conv(x).grad_fn).__name__) == (size < kh)  # only where it is smaller
        assert torch.autograd.gradcheck(lambda x, w: conv(x), (x, conv.weight))  # conv(x) reads w: the same tensor
    g = torch.randn_like(conv(x))
    expected = torch.autograd.grad(conv(x), conv.weight, g)[0]
    got = weight_grad(g, x.detach(), conv.kernel_size, conv.stride, conv.padding)
    torch.testing.assert_close(got, expected)


def test_a_network_trains_to_the_same_gradients_and_is_left_as_it_was():
    torch.manual_seed(0)
    model, _ = create_model("mobilenet_v3", num_classes=10)
    model = model.train()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))

    def grads(m):
        m.zero_grad()
        with torch.random.fork_rng():
            F.cross_entropy(m(x), y).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    twin = copy.deepcopy(model)
    expected = grads(model)
    with fast_small_input_depthwise(twin):
        copied = copy.deepcopy(twin)  # a copy made inside runs on its own weights, not on the original's
        got = grads(twin)
    patched = [m for m in twin.modules() if "forward" in vars(m)]
    assert not patched  # every patch is gone after the block
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        for p in copied.parameters():
            p.zero_()
        assert not torch.equal(twin(x), copied(x))


def test_fit_returns_a_model_without_patches():
    data = digits()
    model, _ = create_model("tiny_mobilenet_v3", num_classes=10)
    trained = train.fit(model, data, Recipe(epochs=1, batch_size=256, lr=0.05), seed=0)
    assert not [m for m in trained.modules() if "forward" in vars(m)]
