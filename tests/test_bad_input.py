"""Bad parameters and bad files are named before any training, and before
any work that the mistake makes useless."""

from __future__ import annotations

import numpy as np
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


def _truncated_png(folder, image) -> str:
    """A PNG whose header is valid and whose pixel data stops half-way."""
    from PIL import Image

    path = str(folder / "truncated.png")
    Image.fromarray(image).save(path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("memory_budget", [0, 2**30], ids=["streamed", "cached"])
def test_a_truncated_file_is_named_before_training(bar_files, bar_data, tmp_path, monkeypatch,
                                                   memory_budget):
    from PIL import Image

    from .conftest import forbid_training

    paths, labels = bar_files
    bad = _truncated_png(tmp_path, np.kron(bar_data[0][0], np.ones((8, 8), np.uint8)))
    with Image.open(bad):  # the header alone passes the up-front check
        pass
    forbid_training(monkeypatch)
    with pytest.raises(OSError, match="truncated.png"):
        tiny_classifier(memory_budget=memory_budget).fit(list(paths[:-1]) + [bad], labels)


def test_batch_size_one_on_a_1x1_feature_map_is_refused_before_decoding(bar_data, monkeypatch):
    from sklearn_protopnet import _training

    def fail(*args, **kwargs):
        raise AssertionError("images were decoded before the batch size was checked")

    monkeypatch.setattr(_training, "decode_all", fail)
    monkeypatch.setattr(_training, "check_decodable", fail)
    X, y = bar_data
    with pytest.raises(ValueError, match="batch_size=1 cannot train this backbone: its "
                                         "feature map is 1 x 1 at image_size=32"):
        tiny_classifier(backbone="resnet18", image_size=32, batch_size=1).fit(X, y)
