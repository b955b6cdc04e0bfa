"""What the float64 distance map costs at inference, against predict.

Inference computes the prototype layer's squared distances in float64 so
that they are accurate near zero (see ``sklearn_protopnet/_network.py``).
This times ``predict_proba`` with that map and, in the same run on the same
fitted model and images, with the plain float32 expansion it replaced
(patched in for the measurement only), and reports medians of several runs
and their ratio, for two shapes of the prototype layer:

- ``small``: SmallCNN at 32 px (8 x 8 map), 10 classes x 10 prototypes, D=128;
- ``resnet``: ResNet-18 at 128 px (4 x 4 map), 200 classes x 10 prototypes
  (CUB's m = 2000), D=128.

Run (a few minutes; ``--quick`` is a smoke test of a few seconds):

    python benchmarks/distance_precision.py [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import numpy as np
import torch

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet._network import ProtoPNet, squared_distances
from sklearn_protopnet.backbones import SmallCNN


def float32_map(self, z):
    """The expansion in float32, as before: the cost being compared against."""
    return squared_distances(z, self.prototypes)


def fitted_model(kind: str, n_classes: int, size: int, quick: bool):
    """A model with no SGD epochs (init, push, last layer only): inference cost
    does not depend on how well it was trained."""
    rng = np.random.default_rng(0)
    per_class = 1 if quick else 2
    X = rng.integers(0, 256, size=(n_classes * per_class, size, size, 3), dtype=np.uint8)
    y = np.repeat(np.arange(n_classes), per_class)
    backbone = SmallCNN() if kind == "small" else "resnet18"
    clf = ProtoPNetClassifier(backbone=backbone, image_size=size, prototypes_per_class=10,
                              prototype_dim=128, warm_epochs=0, joint_epochs=0,
                              batch_size=64, random_state=0, device="cpu")
    return clf.fit(X, y)


def median_time(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = [("small", 10, 32, 512), ("resnet", 200, 128, 256)]
    if args.quick:
        cases = [("small", 3, 32, 16)]
        args.runs = 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of "
          f"{args.runs} runs of predict_proba")
    print("| case | m | map | images | float32 map | float64 map | ratio |")
    print("|---|---|---|---|---|---|---|")
    for kind, n_classes, size, n_images in cases:
        clf = fitted_model(kind, n_classes, size, args.quick)
        X = np.random.default_rng(1).integers(0, 256, size=(n_images, size, size, 3),
                                              dtype=np.uint8)
        def predict(clf=clf, X=X):
            return clf.predict_proba(X)

        exact = median_time(predict, args.runs)
        with mock.patch.object(ProtoPNet, "distance_map", float32_map):
            plain = median_time(predict, args.runs)
        h, w = clf.feature_map_shape_
        print(f"| {kind} {size} px | {clf.n_prototypes_} | {h}x{w} | {n_images} | "
              f"{plain:.3f} s | {exact:.3f} s | {exact / plain:.2f} |")


if __name__ == "__main__":
    main()
