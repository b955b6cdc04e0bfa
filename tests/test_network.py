"""The network's computations against brute force."""

import numpy as np
import pytest
import torch

from sklearn_protopnet._network import (
    SIMILARITY_EPSILON,
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


@pytest.mark.parametrize("kind", ["log", "linear", "cosine"])
def test_similarity_decreases_with_distance(kind):
    d = torch.linspace(0, 10, 101)
    s = distance_to_similarity(d, kind)
    assert (s[1:] < s[:-1]).all()
    if kind == "log":
        assert s[0].item() == pytest.approx(np.log(1 / 1e-4), rel=1e-6)


def test_cosine_similarity_is_the_cosine_of_cell_and_prototype():
    """Cells and prototypes are scaled to unit length: the similarity map is
    the brute-force cosine, whatever the prototypes' own lengths, and the
    add-on has no sigmoid to squeeze every vector onto the diagonal."""
    torch.manual_seed(0)
    proto_class = torch.arange(2).repeat_interleave(2)
    net = ProtoPNet(SmallCNN(width=4), 16, proto_class, 2, prototype_dim=6,
                    similarity="cosine").eval()
    assert not any(isinstance(layer, torch.nn.Sigmoid) for layer in net.add_on)
    with torch.no_grad():
        net.prototypes.mul_(torch.tensor([[0.1], [3.0], [1.0], [7.0]]))  # any lengths
        x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
        z = net.latent(x)
        raw = net.add_on(net.backbone(net.normalise(x)))
        torch.testing.assert_close(z.norm(dim=1), torch.ones(3, *z.shape[2:]))
        cos = torch.nn.functional.cosine_similarity(
            raw[:, None].double(), net.prototypes[None, :, :, None, None].double(), dim=2)
        # z is float32 (scaled to unit length in float32), cos float64 throughout
        torch.testing.assert_close(net.similarity(net.distance_map(z)), cos, atol=1e-6, rtol=0)
        logits, min_d = net(x)
        torch.testing.assert_close(logits, net.similarity(min_d) @ net.last_layer.weight.T)
        torch.testing.assert_close(net.similarity(min_d).double(), cos.flatten(2).amax(2),
                                   atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown similarity"):
        ProtoPNet(SmallCNN(width=4), 16, proto_class, 2, similarity="dot")


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


def _net(n_classes=3, per_class=2, dim=6):
    proto_class = torch.arange(n_classes).repeat_interleave(per_class)
    return ProtoPNet(SmallCNN(width=4), 16, proto_class, n_classes, prototype_dim=dim)


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
    assert min_d.dtype == torch.float32 and d_map.dtype == torch.float64
    torch.testing.assert_close(min_d, d_map.flatten(2).amin(2).float())
    torch.testing.assert_close(logits, net.similarity(min_d) @ net.last_layer.weight.T)


SOURCE_SIMILARITY = float(np.log(1.0 / SIMILARITY_EPSILON))


def _near_copies(dim=128, seed=0):
    """Sigmoid-like features (|z|^2 ~ 40) and prototypes that are copies of
    some cells, or differ from them in the last float32 bit."""
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(4, dim, 5, 5, generator=g) * 0.8 + 0.1
    p = torch.stack([z[0, :, 1, 2], z[3, :, 4, 4], torch.rand(dim, generator=g)])
    nudged = torch.nextafter(z, torch.full_like(z, 2.0))  # one ulp up, everywhere
    return z, nudged, p


def test_distances_are_accurate_near_zero_where_the_expansion_is_not():
    z, nudged, p = _near_copies()
    exact = ((z.double()[:, None] - p.double()[None, :, :, None, None]) ** 2).sum(2)
    # float32 cancellation: at a copy or a last-bit neighbour of one, the plain
    # expansion is off by ~|z|^2 * 6e-8, a similarity error of ~0.3
    errors = [squared_distances(v, p)[[0, 3], [0, 1], [1, 4], [2, 4]].max().item()
              for v in (z, nudged, torch.nextafter(z, torch.zeros_like(z)))]
    assert max(errors) > 1e-6
    net = _net(per_class=1, dim=128)
    net.prototypes.data = p
    d64 = net.distance_map(z)
    torch.testing.assert_close(d64, exact, rtol=0, atol=1e-12)
    assert d64[0, 0, 1, 2] == 0 and d64[3, 1, 4, 4] == 0
    # the training pass: the distance to the closest cell, computed directly
    min_d = net.min_distances(z)
    assert min_d[0, 0] == 0 and min_d[3, 1] == 0
    torch.testing.assert_close(min_d.double(), exact.flatten(2).amin(2), rtol=1e-5, atol=1e-9)
    # a last-bit change of the features leaves the similarity of a copy at log(1/1e-4)
    for d in (net.pool(net.distance_map(nudged))[1], net.min_distances(nudged)):
        sim = net.similarity(d)
        assert abs(sim[0, 0].item() - SOURCE_SIMILARITY) < 1e-4
        assert abs(sim[3, 1].item() - SOURCE_SIMILARITY) < 1e-4


def test_the_gradient_of_the_closest_distance_is_that_of_the_direct_formula():
    z, _, p = _near_copies(dim=8)
    z = (z + 0.01 * torch.rand_like(z)).requires_grad_(True)
    net = _net(per_class=1, dim=8)
    net.prototypes.data = p.clone()
    net.min_distances(z).sum().backward()
    cells = squared_distances(z.detach(), p).flatten(2).argmin(2)  # (N, m)
    expected = torch.zeros_like(z).flatten(2)
    for i in range(z.shape[0]):
        for j in range(p.shape[0]):
            c = cells[i, j]
            expected[i, :, c] += 2 * (z.detach().flatten(2)[i, :, c] - p[j])
    torch.testing.assert_close(z.grad.flatten(2), expected)


def test_distances_and_similarities_stay_float32_under_autocast():
    """bfloat16 autocast rounds the cross term to 8 bits: a near match then gave a
    similarity of 2.33 instead of 4.42. The distance layer runs outside it."""
    net = _net().eval()
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    latents = []
    net.add_on.register_forward_hook(lambda m, i, out: latents.append(out))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, min_d = net(x)
    z = latents[-1]
    assert z.dtype == torch.bfloat16  # the trunk did run in low precision
    assert logits.dtype == min_d.dtype == torch.float32
    reference = squared_distances(z.double(), net.prototypes.double()).flatten(2).amin(2)
    torch.testing.assert_close(min_d.double(), reference, rtol=1e-5, atol=1e-7)
    # a prototype that is a cell of this very map matches it exactly
    net.prototypes.data[0] = z[2, :, 1, 1].float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, min_d = net(x)
    assert min_d[2, 0].item() == pytest.approx(0.0, abs=1e-6)


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


def test_the_sgd_loss_has_the_off_class_l1_term_only_while_the_last_layer_trains():
    """The reference's ``last_layer_l1 * L1`` term: left out while the last
    layer is frozen (a constant), added while the joint stage trains it."""
    from sklearn_protopnet._sgd import ProtoPNetNet

    torch.manual_seed(0)
    module = _net()
    net = ProtoPNetNet(module, criterion=torch.nn.CrossEntropyLoss, last_layer_l1=0.25,
                       device="cpu")
    net.initialize()
    net.history.new_epoch()  # get_loss records the batch's metrics
    net.history.new_batch()
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        y_pred = net.module_(x)
    # every stage sets what trains (a fresh nn.Linear would require grad)
    net.module_.set_trainable(backbone=True, add_on=True, prototypes=True)
    frozen = net.get_loss(y_pred, y, training=True)
    net.module_.set_trainable(backbone=True, add_on=True, prototypes=True, last_layer=True)
    trained = net.get_loss(y_pred, y, training=True)
    assert off_class_l1(net.module_).item() > 0
    assert trained.item() == pytest.approx(frozen.item()
                                           + 0.25 * off_class_l1(net.module_).item())
