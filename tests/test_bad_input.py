"""Bad parameters and bad files are named before any training, and before
any work that the mistake makes useless."""

from __future__ import annotations

import pytest

from .conftest import tiny_classifier


def _no_image_is_read(monkeypatch):
    from sklearn_protopnet import _classifier

    def fail(*args, **kwargs):
        raise AssertionError("image files were read before the parameters were checked")

    monkeypatch.setattr(_classifier, "check_images", fail)


@pytest.mark.parametrize("params, error, match", [
    ({"normalize": (0.5, 0.5, 0.5)}, ValueError, "normalize=.mean, std. needs 3 means"),
    ({"normalize": ((0.5,) * 3, (0.0,) * 3)}, ValueError, "positive standard deviations"),
    ({"backbone": "resnet18", "weights": "NOT_A_WEIGHTS_NAME"}, ValueError,
     "unknown weights 'NOT_A_WEIGHTS_NAME' for 'resnet18'"),
    ({"backbone": "resnet18", "weights": "/nowhere/resnet18.pth"}, FileNotFoundError,
     "weights file not found: '/nowhere/resnet18.pth'"),
    ({"weights": "IMAGENET1K_V1"}, ValueError, "custom nn.Module backbone must be the path"),
    ({"backbone": "resnet7"}, ValueError, "backbone must be an nn.Module or one of"),
])
def test_bad_backbone_arguments_are_refused_before_any_image_is_read(
        bar_files, monkeypatch, params, error, match):
    paths, labels = bar_files
    _no_image_is_read(monkeypatch)
    with pytest.raises(error, match=match):
        tiny_classifier(**params).fit(paths, labels)
