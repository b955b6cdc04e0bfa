"""The convex last layer on real similarities: ridge strength vs accuracy and cost.

Fits one ProtoPNet on scikit-learn's digits (32 px, SmallCNN, 2 + 8 epochs,
10 prototypes per class), then re-solves its last layer on the cached
training similarities for several ``last_layer_l2`` values, reporting
iterations, solve time (median of 3 runs), the largest weight and the test
accuracy. Run:

    python benchmarks/last_layer.py

``--quick`` is a smoke test of a few seconds: 100 training and 50 test
images, SmallCNN(8), 1 + 1 epochs, two values, at most 2,000 iterations, one
timing run each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet._last_layer import solve_last_layer
from sklearn_protopnet.backbones import SmallCNN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    digits = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        digits.images / 16.0, digits.target, test_size=0.3, random_state=0,
        stratify=digits.target,
    )
    (warm, joint), runs, values = (2, 8), 3, (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
    width, max_iter = 32, 50000
    if args.quick:
        (warm, joint), runs, values = (1, 1), 1, (0.0, 1e-4)
        width, max_iter = 8, 2000
        X_train, y_train, X_test, y_test = X_train[:100], y_train[:100], X_test[:50], \
            y_test[:50]
    torch.manual_seed(0)
    clf = ProtoPNetClassifier(
        backbone=SmallCNN(width), image_size=32, prototypes_per_class=10, prototype_dim=128,
        warm_epochs=warm, joint_epochs=joint, push_start=100, push_interval=0, batch_size=32,
        augment=False, random_state=0,
    ).fit(X_train, y_train)
    S_train, S_test = clf.transform(X_train), clf.transform(X_test)
    y = np.searchsorted(clf.classes_, y_train)
    own = clf.classes_[:, None] == clf.prototype_class_[None, :]
    W0 = np.where(own, 1.0, -0.5)
    print(f"n={len(y)} m={own.shape[1]} K={own.shape[0]}; last_layer_l1={clf.last_layer_l1}")
    print(f"| last_layer_l2 | iterations | solve time (median of {runs}) | weights max | "
          "train acc | test acc |")
    print("|---|---|---|---|---|---|")
    for l2 in values:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            res = solve_last_layer(S_train, y, own, clf.last_layer_l1, l2, W0, tol=1e-6,
                                   max_iter=max_iter)
            times.append(time.perf_counter() - t0)
        train_acc = np.mean(np.argmax(S_train @ res.weight.T, 1) == y)
        test_acc = np.mean(clf.classes_[np.argmax(S_test @ res.weight.T, 1)] == y_test)
        print(f"| {l2:g} | {res.iterations} | {statistics.median(times):.2f} s | "
              f"{np.abs(res.weight).max():.1f} | {train_acc:.3f} | {test_acc:.3f} |")


if __name__ == "__main__":
    main()
