"""Recomputed activations (:meth:`plm.models.Backbone.set_recompute`): the same outputs and gradients, bit
for bit, with stochastic depth drawing the same masks in the pass again."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from plm.models import Backbone, create_backbone
from plm.models.preprocess import PreprocessConfig
from plm.training.pipeline import freeze_batchnorm


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    """EfficientNet-Lite0 (random weights) as fine-tuning runs it: training mode, BatchNorm frozen;
    its blocks drop their residual branch at random (drop-connect rate 0.2)."""
    torch.manual_seed(0)
    net = create_backbone("efficientnet_lite0", pretrained=False)
    net.train()
    freeze_batchnorm(net)
    return net


def _pass(backbone: Backbone, x: torch.Tensor, recompute: bool, seed: int = 1):
    net = copy.deepcopy(backbone).set_recompute(recompute)
    calls = {"n": 0}
    block = net.body.net._blocks[3]  # type: ignore[union-attr, index]
    # a pre-hook: the recomputed pass stops as soon as it has every tensor the backward needs
    block.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    torch.manual_seed(seed)
    y = net(x)
    (y.pow(2).mean() + y.mean()).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return y.detach(), grads, calls["n"], torch.get_rng_state()


def test_recomputed_activations_give_the_same_output_and_gradients_bit_for_bit(lite0) -> None:
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    y0, g0, calls0, rng0 = _pass(lite0, x, False)
    y1, g1, calls1, rng1 = _pass(lite0, x, True)
    assert calls0 == 1 and calls1 == 2  # the block ran again in the backward pass
    assert torch.equal(y0, y1)
    assert g0.keys() == g1.keys() and len(g0) > 20
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name
    assert torch.equal(rng0, rng1)  # the random state after the step is the same too
    # the masks are random: another seed gives another output, so the equality above is not vacuous
    y2, *_ = _pass(lite0, x, True, seed=2)
    assert not torch.equal(y0, y2)


def test_recompute_is_off_where_there_is_nothing_to_keep(lite0) -> None:
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    net = copy.deepcopy(lite0).set_recompute(True)
    with torch.no_grad():
        kept = net(x)
    net.eval()  # evaluation: the plain forward pass
    torch.manual_seed(0)
    evaluated = net(x)
    assert evaluated.grad_fn is not None and "Checkpoint" not in type(evaluated.grad_fn).__name__
    assert kept.shape == evaluated.shape


def test_a_backbone_without_steps_refuses_recompute() -> None:
    pre = PreprocessConfig(input_size=16, resize_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    net = Backbone(nn.Conv2d(3, 8, 3), 8, pre, "custom")
    with pytest.raises(ValueError, match="cannot be split into steps.*recompute=off"):
        net.set_recompute(True)
    assert net.set_recompute(False).recompute is False
    seq = Backbone(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), 8, pre, "seq").set_recompute(True)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(seq(x), seq.body(x), rtol=0, atol=0)
