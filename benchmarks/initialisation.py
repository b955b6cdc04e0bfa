"""Prototype initialisation and BatchNorm calibration on a short training run.

scikit-learn's digits (1,257 training / 540 test images, 32 px), a randomly
initialised SmallCNN, 2 warm-up + 8 joint epochs, 5 prototypes per class,
no augmentation; three seeds per setting. Compares the reference's uniform
prototypes with the push at initialisation and the discriminative
patches (the default), the default BatchNorm calibration of never-trained
backbones with none, and the defaults with the small-data settings of the
docs (separation_coef=0.4, constant joint learning rate). Run:

    python benchmarks/initialisation.py [--seeds 3] [--rows small-data ...]

``--quick`` is a smoke test of a few seconds: one seed, 100 training and 50
test images, 1 + 1 epochs, the rows ``uniform-uncalibrated`` and
``discriminative`` unless ``--rows`` is given.
"""

from __future__ import annotations

import argparse
import statistics
from unittest import mock

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sklearn_protopnet import ProtoPNetClassifier, _init
from sklearn_protopnet.backbones import SmallCNN

ROWS = {
    "uniform-uncalibrated": ("uniform", False, {}),
    "uniform": ("uniform", True, {}),
    "patches-uncalibrated": ("patches", False, {}),
    "patches": ("patches", True, {}),
    "discriminative": ("discriminative", True, {}),
    "small-data": ("discriminative", True, dict(separation_coef=0.4, joint_lr_gamma=1.0,
                                                  joint_lr_schedule="step", lr_backbone=3e-4)),
}


def fit_score(seed: int, prototype_init: str, calibrate: bool, data, epochs=(2, 8),
              **extra) -> float:
    X_train, X_test, y_train, y_test = data
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = SmallCNN()
    clf = ProtoPNetClassifier(
        backbone=backbone, image_size=32, prototypes_per_class=5, prototype_dim=64,
        warm_epochs=epochs[0], joint_epochs=epochs[1], push_start=100, push_interval=0,
        batch_size=32,
        augment=False, prototype_init=prototype_init, random_state=seed, **extra,
    )
    if calibrate:
        clf.fit(X_train, y_train)
    else:
        with mock.patch.object(_init, "_uncalibrated_batchnorms", lambda module: []):
            clf.fit(X_train, y_train)
    return clf.score(X_test, y_test)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", nargs="+", default=None, choices=list(ROWS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    digits = load_digits()
    data = train_test_split(digits.images / 16.0, digits.target, test_size=0.3,
                            random_state=0, stratify=digits.target)
    epochs = (2, 8)
    if args.quick:
        args.seeds, epochs = 1, (1, 1)
        args.rows = args.rows or ["uniform-uncalibrated", "discriminative"]
        data = [data[0][:100], data[1][:50], data[2][:100], data[3][:50]]
    args.rows = args.rows or list(ROWS)
    print("| row | prototype_init | BatchNorm calibration | other settings | "
          f"test accuracy (seeds 0-{args.seeds - 1}) | median |")
    print("|---|---|---|---|---|---|")
    for row in args.rows:
        init, calibrate, extra = ROWS[row]
        scores = [fit_score(seed, init, calibrate, data, epochs, **extra)
                  for seed in range(args.seeds)]
        other = ", ".join(f"{k}={v}" for k, v in extra.items()) or "-"
        print(f"| {row} | {init} | {'yes' if calibrate else 'no'} | {other} | "
              f"{', '.join(f'{s:.3f}' for s in scores)} | {statistics.median(scores):.3f} |",
              flush=True)

if __name__ == "__main__":
    main()
