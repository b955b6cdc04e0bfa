"""Cell geometry, upsampling and the box rule, on backbones whose cells are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_protopnet._backbones import probe_backbone
from sklearn_protopnet._geometry import box_from_map, cell_geometry, upsample_map


def _conv(k, s, p):
    return nn.Conv2d(3, 3, k, stride=s, padding=p)


# (backbone, image_size, expected stride, expected offset of cell 0, expected RF)
CASES = {
    # two valid 3x3 stride-2 convs: centres 3 + 4 i, RF 7
    "valid": (lambda: nn.Sequential(_conv(3, 2, 0), nn.ReLU(), _conv(3, 2, 0)),
              (33, 29), (4, 4), (3, 3), (7, 7)),
    # "same" stride-2 convs (the ResNet pattern): cell 0 centred on pixel 0
    "same": (lambda: nn.Sequential(_conv(3, 2, 1), nn.BatchNorm2d(3), nn.ReLU(),
                                    nn.MaxPool2d(3, 2, 1), _conv(3, 2, 1)),
             (40, 37), (8, 8), (0, 0), None),
    # asymmetric zero padding shifts rows by -2, columns by +1
    "asymmetric": (lambda: nn.Sequential(nn.ZeroPad2d((0, 1, 2, 0)), _conv(2, 2, 0)),
                   (20, 21), (2, 2), (-1.5, 0.5), None),
    # 2x2 stride-2 pooling (the VGG pattern): centres 0.5 + 2 i per pool
    "pooling": (lambda: nn.Sequential(_conv(3, 1, 1), nn.MaxPool2d(2), nn.MaxPool2d(2)),
                (30, 30), (4, 4), (1.5, 1.5), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_measured_geometry_matches_the_arithmetic(case):
    make, size, stride, offset, rf = CASES[case]
    backbone = make()
    _, h, w = probe_backbone(backbone, size)
    g = cell_geometry(backbone, size, (h, w))
    assert g.method == "probed"
    assert g.stride == pytest.approx(stride, abs=1e-6)
    assert g.offset == pytest.approx(offset, abs=1e-6)
    if rf is not None:
        assert g.receptive_field == rf
    assert (g.image_size, g.feature_map_shape) == (size, (h, w))


def test_geometry_does_not_modify_the_backbone():
    backbone = CASES["same"][0]()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    cell_geometry(backbone, (40, 37), (5, 5))
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(backbone[1], nn.BatchNorm2d) and isinstance(backbone[3], nn.MaxPool2d)


def test_unprobeable_backbone_falls_back_to_tiling():
    class Squares(nn.Module):  # not affine in the position: the probe cannot apply
        def forward(self, x):
            return nn.functional.avg_pool2d(x * x, 4)

    g = cell_geometry(Squares(), (16, 16), (4, 4))
    assert g.method == "tiled"
    assert g.stride == (4.0, 4.0) and g.offset == (1.5, 1.5)


def _one_hot(h, w, i, j):
    m = np.zeros((h, w), dtype=np.float32)
    m[i, j] = 1.0
    return m


@pytest.mark.parametrize("scale", [1.0, 2.5, 0.75])
def test_single_active_cell_gives_a_box_on_its_receptive_centre(scale):
    backbone = CASES["valid"][0]()
    size = (33, 29)
    _, h, w = probe_backbone(backbone, size)
    g = cell_geometry(backbone, size, (h, w))
    out_h, out_w = round(size[0] * scale), round(size[1] * (scale + 0.5))
    for i, j in [(0, 0), (2, 3), (h - 1, w - 1)]:
        up = upsample_map(_one_hot(h, w, i, j), g, (out_h, out_w))
        assert up.shape == (out_h, out_w)
        # the cell's centre 3 + 4 i, scaled to output pixels
        cy = (3 + 4 * i + 0.5) * out_h / size[0] - 0.5
        cx = (3 + 4 * j + 0.5) * out_w / size[1] - 0.5
        if (i, j) == (2, 3):  # an inner cell peaks on its centre (border cells plateau)
            r, c = np.unravel_index(np.argmax(up), up.shape)
            assert abs(r - cy) <= 0.5 * out_h / size[0] + 0.5
            assert abs(c - cx) <= 0.5 * out_w / size[1] + 0.5
        x0, y0, x1, y1 = box_from_map(up, 95)
        assert 0 <= x0 < x1 <= out_w and 0 <= y0 < y1 <= out_h
        assert x0 <= cx < x1 and y0 <= cy < y1
        # the box is about one stride wide in output pixels
        assert x1 - x0 <= 2 * 4 * out_w / size[1] + 2
        assert y1 - y0 <= 2 * 4 * out_h / size[0] + 2


def test_upsampled_map_takes_cell_values_at_cell_centres():
    g = cell_geometry(CASES["valid"][0](), (33, 29), (7, 6))
    assert g.method == "probed"
    rng = np.random.default_rng(0)
    cells = rng.random((7, 6)).astype(np.float32)
    up = upsample_map(cells, g, (33, 29))
    rows, cols = 3 + 4 * np.arange(7), 3 + 4 * np.arange(6)
    np.testing.assert_allclose(up[np.ix_(rows, cols)], cells, atol=1e-5)


def test_upsampled_map_is_held_at_the_outermost_centres_values_beyond_them():
    """Outside the outermost cell centres the map equals their value: no
    bicubic overshoot that would pull the top percentile to the border."""
    g = cell_geometry(CASES["valid"][0](), (33, 29), (7, 6))
    ramp = np.tile(np.arange(6, dtype=np.float32), (7, 1))  # rising towards the right
    up = upsample_map(ramp, g, (33, 29))
    last_centre = 3 + 4 * 5  # column of the last cell's centre
    np.testing.assert_allclose(up[:, last_centre:], 5.0, atol=1e-5)
    np.testing.assert_allclose(up[:, :4], 0.0, atol=1e-5)  # left of the first centre (3)
    assert up.max() <= ramp.max() + 1e-5


@pytest.mark.parametrize("out_size", [(33, 29), (100, 71), (12, 9), (1, 1)])
@pytest.mark.parametrize("map_size", [(7, 6), (1, 6), (1, 1)])
def test_separable_upsampling_equals_torch_bicubic_grid_sample(out_size, map_size):
    """The two matrix products give torch's bicubic at the clipped coordinates."""
    import torch
    from torch.nn import functional as F

    from sklearn_protopnet._geometry import CellGeometry

    g = CellGeometry((33, 29), map_size, (4.0, 4.5), (3.0, 2.25), (9, 9), "probed")
    cells = np.random.default_rng(1).random(map_size).astype(np.float32)
    axes = []
    for n_out, n_in, n, stride, offset in ((out_size[0], 33, map_size[0], 4.0, 3.0),
                                           (out_size[1], 29, map_size[1], 4.5, 2.25)):
        pixel = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        cell = np.clip((pixel - offset) / stride, 0, n - 1)
        axes.append(2 * cell / (n - 1) - 1 if n > 1 else np.zeros_like(cell))
    gy, gx = np.meshgrid(*axes, indexing="ij")
    grid = torch.from_numpy(np.stack([gx, gy], -1).astype(np.float32))[None]
    expected = F.grid_sample(torch.from_numpy(cells)[None, None], grid, mode="bicubic",
                             padding_mode="border", align_corners=True)[0, 0].numpy()
    up = upsample_map(cells, g, out_size)
    assert up.shape == out_size and up.dtype == np.float32
    np.testing.assert_allclose(up, expected, atol=2e-6)


def test_box_rule_is_end_exclusive():
    up = np.zeros((10, 12))
    up[2:5, 3:9] = 1.0
    assert box_from_map(up, 90) == (3, 2, 9, 5)
