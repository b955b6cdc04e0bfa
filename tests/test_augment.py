"""The default augmentation: one affine warp per training batch."""

from __future__ import annotations

import math

import pytest
import torch

from sklearn_protopnet._augment import BatchWarp

from .conftest import make_bar_images, tiny_classifier, write_pngs

STILL = dict(scale=(1.0, 1.0), flip=0.0, degrees=0.0, shear=0.0)


def _images(n=4, h=20, w=30):
    return (torch.rand(n, 3, h, w) * 255).to(torch.uint8)


@pytest.mark.parametrize("shape", [(20, 20), (20, 30), (31, 17)])
def test_no_warp_is_the_identity_and_a_flip_is_a_mirror(shape):
    h, w = shape
    x = _images(h=h, w=w)
    ratio = (w / h, w / h)  # the whole image is a crop of this aspect
    same = BatchWarp(ratio=ratio, **STILL)(x)
    assert same.dtype == torch.float32
    torch.testing.assert_close(same, x.float() / 255, atol=1e-5, rtol=0)
    mirrored = BatchWarp(ratio=ratio, **(STILL | {"flip": 1.0}))(x)
    torch.testing.assert_close(mirrored, x.float().flip(3) / 255, atol=1e-5, rtol=0)
    # float input keeps its scale
    torch.testing.assert_close(BatchWarp(ratio=ratio, **STILL)(x.float()), x.float(),
                               atol=1e-3, rtol=0)


def test_rotation_and_shear_are_rigid_in_pixels_and_within_their_ranges():
    h, w = 24, 40
    d = torch.diag(torch.tensor([w / 2, h / 2], dtype=torch.float64))
    rotate = BatchWarp(ratio=(w / h, w / h), **(STILL | {"degrees": 10.0}))
    theta = rotate.matrices(500, h, w)
    m = d @ theta[:, :, :2] @ torch.linalg.inv(d)  # in pixel units: a rotation
    eye = torch.eye(2, dtype=torch.float64).expand(500, 2, 2)
    torch.testing.assert_close(m @ m.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(m), torch.ones(500, dtype=torch.float64))
    angles = torch.rad2deg(torch.atan2(m[:, 1, 0], m[:, 0, 0])).abs()
    assert angles.max() <= 10.0 + 1e-9 and angles.max() > 9.0  # the range is used
    assert (theta[:, :, 2] == 0).all()  # about the centre

    shear = BatchWarp(ratio=(w / h, w / h), **(STILL | {"shear": 5.0})).matrices(500, h, w)
    m = d @ shear[:, :, :2] @ torch.linalg.inv(d)
    # a horizontal shear: rows stay rows, area is kept
    torch.testing.assert_close(m[:, 1], torch.tensor([0.0, 1.0], dtype=torch.float64)
                               .expand(500, 2))
    torch.testing.assert_close(torch.linalg.det(m), torch.ones(500, dtype=torch.float64))
    assert m[:, 0, 1].abs().max() <= math.tan(math.radians(5.0)) + 1e-12


def test_crops_lie_inside_the_image_with_the_drawn_area():
    h, w = 32, 32
    theta = BatchWarp(scale=(0.5, 0.9), ratio=(3 / 4, 4 / 3), flip=0.0, degrees=0.0,
                      shear=0.0).matrices(2000, h, w)
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0],
                            [1.0, 1.0, 1.0]], dtype=torch.float64)
    mapped = torch.einsum("nij,kj->nki", theta, corners)
    assert mapped.abs().max() <= 1.0 + 1e-12
    area = torch.linalg.det(theta[:, :, :2])  # fraction of the (square) image
    assert area.min() >= 0.5 - 1e-9 and area.max() <= 0.9 + 1e-9
    aspect = theta[:, 0, 0] / theta[:, 1, 1]
    assert aspect.min() >= 3 / 4 - 1e-9 and aspect.max() <= 4 / 3 + 1e-9
    # the crops wander over the image
    assert mapped[:, :, 0].min() < -0.99 and mapped[:, :, 0].max() > 0.99


def test_draws_follow_the_global_stream():
    x = _images()
    warp = BatchWarp()
    torch.manual_seed(3)
    a = warp(x)
    torch.manual_seed(3)
    b = warp(x)
    c = warp(x)
    assert torch.equal(a, b) and not torch.equal(b, c)
    torch.manual_seed(0)
    flips = BatchWarp(flip=0.5).matrices(4000, 8, 8)[:, 0, 0] < 0
    assert 0.45 < flips.float().mean() < 0.55


def test_fit_warps_training_batches_only(tmp_path, monkeypatch):
    images, labels = make_bar_images(12)
    paths = write_pngs(tmp_path, images)
    seen = []
    real = BatchWarp.__call__

    def counting(self, batch):
        seen.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(BatchWarp, "__call__", counting)
    clf = tiny_classifier(augment=True, warm_epochs=1, joint_epochs=2, batch_size=8,
                          validation_fraction=0.25)
    clf.fit(paths, labels)
    # 18 training images (6 held out), 3 batches per epoch, 3 epochs; the
    # held-out batches, push, the last layer and predict are never warped
    assert seen == [8, 8, 2] * 3
    clf.predict(paths)
    assert len(seen) == 9
    # augment=False: no warp at all
    seen.clear()
    tiny_classifier(augment=False, warm_epochs=1, joint_epochs=1).fit(paths, labels)
    assert seen == []


def test_a_callable_augment_replaces_the_warp(tmp_path, monkeypatch):
    images, labels = make_bar_images(6)
    paths = write_pngs(tmp_path, images)
    calls = {"warp": 0, "own": 0}
    monkeypatch.setattr(BatchWarp, "__call__",
                        lambda self, b: calls.__setitem__("warp", calls["warp"] + 1) or b)

    def own(img):
        assert img.shape[0] == 3 and img.dtype == torch.uint8  # one image at a time
        calls["own"] += 1
        return img

    tiny_classifier(augment=own, warm_epochs=1, joint_epochs=0).fit(paths, labels)
    assert calls["warp"] == 0 and calls["own"] == len(paths)
