"""The network's computations against brute force."""

import numpy as np
import pytest
import torch

from sklearn_protopnet._network import (
    ProtoPNet,
    distance_to_similarity,
    make_add_on,
    off_class_l1,
    prototype_losses,
    squared_distances,
)
from sklearn_protopnet.backbones import SmallCNN


def test_squared_distances_match_brute_force():
    z = torch.rand(3, 5, 4, 6, dtype=torch.float64)
    p = torch.rand(7, 5, dtype=torch.float64)
    d = squared_distances(z, p)
    brute = ((z[:, None] - p[None, :, :, None, None]) ** 2).sum(dim=2)
    assert d.shape == (3, 7, 4, 6)
    torch.testing.assert_close(d, brute)


def test_squared_distance_of_a_copied_patch_is_zero():
    z = torch.rand(2, 8, 3, 3)
    p = z[1, :, 2, 0].clone()[None]
    assert squared_distances(z, p)[1, 0, 2, 0] == pytest.approx(0.0, abs=1e-6)
    assert (squared_distances(z, p) >= 0).all()


@pytest.mark.parametrize("kind", ["log", "linear"])
def test_similarity_decreases_with_distance(kind):
    d = torch.linspace(0, 10, 101)
    s = distance_to_similarity(d, kind)
    assert (s[1:] < s[:-1]).all()
    if kind == "log":
        assert s[0].item() == pytest.approx(np.log(1 / 1e-4), rel=1e-6)


def test_prototype_losses_match_loops():
    torch.manual_seed(1)
    min_d = torch.rand(6, 8)
    proto_class = torch.tensor([0, 0, 1, 1, 2, 2, 2, 1])
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    cluster, separation = prototype_losses(min_d, y, proto_class)
    own = [min(min_d[i, j] for j in range(8) if proto_class[j] == y[i]) for i in range(6)]
    other = [min(min_d[i, j] for j in range(8) if proto_class[j] != y[i]) for i in range(6)]
    assert cluster.item() == pytest.approx(float(np.mean(own)))
    assert separation.item() == pytest.approx(float(np.mean(other)))


@pytest.mark.parametrize("style,cin,dim", [("regular", 64, 16), ("bottleneck", 64, 16),
                                           ("bottleneck", 8, 16), ("bottleneck", 16, 16)])
def test_add_on_maps_channels_into_unit_interval(style, cin, dim):
    layers = make_add_on(cin, dim, style)
    out = layers(torch.randn(2, cin, 3, 3))
    assert out.shape == (2, dim, 3, 3)
    assert (out > 0).all() and (out < 1).all()


def _net(n_classes=3, per_class=2):
    proto_class = torch.arange(n_classes).repeat_interleave(per_class)
    return ProtoPNet(SmallCNN(width=4), 16, proto_class, n_classes, prototype_dim=6)


def test_last_layer_initialisation_and_l1():
    net = _net()
    w = net.last_layer.weight
    own = net.own_class_mask()
    assert torch.equal(w[own], torch.ones(int(own.sum())))
    assert torch.equal(w[~own], torch.full((int((~own).sum()),), -0.5))
    assert off_class_l1(net).item() == pytest.approx(0.5 * int((~own).sum()))


def test_forward_logits_are_similarity_times_weights():
    net = _net().eval()
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    logits, min_d = net(x)
    d_map = net.distance_map(net.latent(x))
    torch.testing.assert_close(min_d, d_map.flatten(2).amin(2))
    torch.testing.assert_close(logits, net.similarity(min_d) @ net.last_layer.weight.T)


def test_frozen_backbone_stays_in_eval_mode():
    net = _net()
    net.set_trainable(backbone=False, add_on=True, prototypes=True)
    net.train()
    bn = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    before = bn.running_mean.clone()
    net(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    assert not net.backbone.training and net.add_on.training
    assert torch.equal(bn.running_mean, before)
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert not net.last_layer.weight.requires_grad
    net.set_trainable(backbone=True, add_on=True, prototypes=True)
    net.train()
    net(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    assert not torch.equal(bn.running_mean, before)
