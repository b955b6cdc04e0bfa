"""Shared fixtures: small images made here, one small fitted model reused."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet.backbones import SmallCNN

# One intra-op thread: the suite runs on small tensors, where a second thread
# only adds synchronisation, and on a shared machine OpenMP threads that wait
# for a busy core make tiny fits tens of times slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def make_bar_images(n_per_class: int, size: int = 16, seed: int = 0):
    """Grayscale uint8 images: class 0 holds a horizontal bar, class 1 a vertical
    one, each at a random place on a noisy background."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in (0, 1):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, size=(size, size)).astype(np.uint8)
            r, c = rng.integers(1, size - 7, size=2)
            if label == 0:
                img[r : r + 2, c : c + 6] = 255
            else:
                img[r : r + 6, c : c + 2] = 255
            images.append(img)
            labels.append(label)
    return np.stack(images), np.array(labels)


def write_pngs(folder, images, names=None) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = os.path.join(folder, f"{names[i] if names else i:04}.png")
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def tiny_classifier(**overrides) -> ProtoPNetClassifier:
    """A classifier that fits 40 16-px images in about a second.

    Its backbone is initialised from a fixed seed without touching the global
    RNG, so two calls give identical estimators.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = SmallCNN(width=8)
    params = dict(
        backbone=backbone,
        image_size=16,
        prototypes_per_class=3,
        prototype_dim=8,
        warm_epochs=1,
        joint_epochs=3,
        push_start=2,
        push_interval=10,
        batch_size=16,
        augment=False,
        random_state=0,
    )
    params.update(overrides)
    return ProtoPNetClassifier(**params)


@pytest.fixture(scope="session")
def bar_data():
    return make_bar_images(20)


@pytest.fixture(scope="session")
def bar_files(tmp_path_factory, bar_data):
    """The bar images as PNG files, with string labels."""
    images, labels = bar_data
    folder = tmp_path_factory.mktemp("bars")
    paths = write_pngs(str(folder), images)
    return paths, np.where(labels == 0, "horizontal", "vertical")


@pytest.fixture(scope="session")
def fitted(bar_files):
    """One fitted model on the bar files, shared by read-only tests."""
    paths, labels = bar_files
    return tiny_classifier().fit(paths, labels)


def forbid_training(monkeypatch):
    """Make any start of the training stages fail the test: for checks that
    must reject input before training."""
    from sklearn_protopnet import _training

    def fail(*args, **kwargs):
        raise AssertionError("training started before the problem was detected")

    monkeypatch.setattr(_training, "fit_stages", fail)
