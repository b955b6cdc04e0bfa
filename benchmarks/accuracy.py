"""Test accuracy on real images given as file paths, with a user-defined backbone.

Writes two small real data sets as PNG files and fits ProtoPNetClassifier on
their paths with a plain ``nn.Sequential`` backbone defined here (not one of
the package's), the way a user brings their own CNN:

- scikit-learn's digits (1,797 8x8 images, upscaled to 32 px), 75/25 split;
- a Fashion-MNIST subset (28 px; Debian package ``dataset-fashion-mnist``),
  ``--fashion-train`` training and 2,000 test images, skipped when absent.

Run (about 2-4 minutes on a 2-core CPU per setting and seed):

    python benchmarks/accuracy.py --out /tmp/protopnet-accuracy [--small-data]

``--small-data`` also fits with the docs' small-data settings
(``separation_coef=0.4, joint_lr_gamma=1.0``) beside the defaults.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch import nn

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet._demo import write_digits

FASHION = "/usr/share/datasets/fashion-mnist"


def user_backbone() -> nn.Module:
    """A plain CNN as a user would write it: no BatchNorm, feature map 1/4 of the image."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    )


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_fashion(out: str, n_train: int, n_test: int, seed: int = 0):
    images = read_idx(os.path.join(FASHION, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(FASHION, "train-labels-idx1-ubyte.gz"))
    test_images = read_idx(os.path.join(FASHION, "t10k-images-idx3-ubyte.gz"))
    test_labels = read_idx(os.path.join(FASHION, "t10k-labels-idx1-ubyte.gz"))
    rng = np.random.default_rng(seed)
    tr = rng.choice(len(images), n_train, replace=False)
    te = rng.choice(len(test_images), n_test, replace=False)

    def write(split, imgs, labs):
        paths = []
        for i, (img, lab) in enumerate(zip(imgs, labs)):
            folder = os.path.join(out, "fashion", split, str(lab))
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{i:05d}.png")
            Image.fromarray(img, "L").save(path)
            paths.append(path)
        return paths, np.asarray(labs)

    return write("train", images[tr], labels[tr]), write("test", test_images[te], test_labels[te])


SMALL_DATA = dict(separation_coef=0.4, joint_lr_gamma=1.0)


def fit_score(X_train, y_train, X_test, y_test, image_size, seed, **extra):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = user_backbone()
    clf = ProtoPNetClassifier(
        backbone=backbone, image_size=image_size, prototypes_per_class=10, prototype_dim=64,
        warm_epochs=2, joint_epochs=8, push_start=100, augment=False, random_state=seed,
        **extra,
    )
    t0 = time.perf_counter()
    clf.fit(X_train, y_train)
    fit_time = time.perf_counter() - t0
    return clf.score(X_test, y_test), fit_time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="protopnet-accuracy")
    parser.add_argument("--fashion-train", type=int, default=6000)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--small-data", action="store_true",
                        help="also fit with separation_coef=0.4, joint_lr_gamma=1.0")
    args = parser.parse_args()

    paths, labels = write_digits(args.out)
    split = train_test_split(paths, labels, test_size=0.25, stratify=labels, random_state=0)
    sets = [("digits (32 px)", split[0], split[2], split[1], split[3], 32)]
    if os.path.isdir(FASHION):
        (Xtr, ytr), (Xte, yte) = write_fashion(args.out, args.fashion_train, 2000)
        sets.append((f"Fashion-MNIST {args.fashion_train}/2000 (28 px)", Xtr, ytr, Xte, yte, 28))
    settings = [("defaults", {})] + ([("small-data", SMALL_DATA)] if args.small_data else [])
    print("| data | train / test | settings | seed | test accuracy | fit time |")
    print("|---|---|---|---|---|---|")
    for name, Xtr, ytr, Xte, yte, size in sets:
        for label, extra in settings:
            for seed in range(args.seeds):
                acc, dur = fit_score(Xtr, ytr, Xte, yte, size, seed, **extra)
                print(f"| {name} | {len(Xtr)} / {len(Xte)} | {label} | {seed} | {acc:.3f} | "
                      f"{dur:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
