"""Prototype initialisation and BatchNorm calibration on a short training run.

scikit-learn's digits (1,257 training / 540 test images, 32 px), a randomly
initialised SmallCNN, 2 warm-up + 8 joint epochs, 5 prototypes per class,
no augmentation; three seeds per setting. Compares the reference's uniform
prototypes with the push at initialisation and the discriminative
patches (the default), and the default
BatchNorm calibration of never-trained backbones with none. Run:

    python benchmarks/initialisation.py
"""

from __future__ import annotations

import statistics
from unittest import mock

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sklearn_protopnet import ProtoPNetClassifier, _training
from sklearn_protopnet.backbones import SmallCNN


def fit_score(seed: int, prototype_init: str, calibrate: bool, data) -> float:
    X_train, X_test, y_train, y_test = data
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = SmallCNN()
    clf = ProtoPNetClassifier(
        backbone=backbone, image_size=32, prototypes_per_class=5, prototype_dim=64,
        warm_epochs=2, joint_epochs=8, push_start=100, push_interval=0, batch_size=32,
        augment=False, prototype_init=prototype_init, random_state=seed,
    )
    if calibrate:
        clf.fit(X_train, y_train)
    else:
        with mock.patch.object(_training, "_uncalibrated_batchnorms", lambda module: []):
            clf.fit(X_train, y_train)
    return clf.score(X_test, y_test)


def main() -> None:
    digits = load_digits()
    data = train_test_split(digits.images / 16.0, digits.target, test_size=0.3,
                            random_state=0, stratify=digits.target)
    print("| prototype_init | BatchNorm calibration | test accuracy (seeds 0, 1, 2) | median |")
    print("|---|---|---|---|")
    for init, calibrate in (("uniform", False), ("uniform", True), ("patches", False),
                            ("patches", True), ("discriminative", True)):
        scores = [fit_score(seed, init, calibrate, data) for seed in range(3)]
        print(f"| {init} | {'yes' if calibrate else 'no'} | "
              f"{', '.join(f'{s:.3f}' for s in scores)} | {statistics.median(scores):.3f} |")


if __name__ == "__main__":
    main()
