"""The explanation-quality metrics of ``sklearn_protopnet`` on synthetic data.

Two data sets whose discriminative part is known, so that every metric,
including the two that need part boxes, can be computed:

- ``bars``: 16 px grey images, a horizontal or a vertical bright bar (the
  part) on noise; the test suite's model (SmallCNN width 8, 3 prototypes per
  class, 1 + 3 epochs), 40 training and 20 test images.
- ``motif``: 32 px RGB images with a class motif (an 8 px red plus or blue
  ring, the part) among distractors both classes share
  (``_synthetic.make_motif_images``); 200 training and 40 test images, the
  settings of benchmarks/planted_motif.py: the library's defaults,
  ``small-data`` (prototypes end on the motif) and ``patches`` (prototypes
  initialised on patches, which mostly end on background and distractors).
- ``decoys``: 40 px RGB images (``_synthetic.make_decoy_images``) where a
  class is a (shape, colour) pair and every image also holds a decoy of the
  class's colour and one of its shape; the part is the 8 px object that has
  both. The user CNN of benchmarks/decoys.py with the library's defaults
  apart from backbone, image size 40 and ``prototype_dim=64``
  (``decoys-defaults``), and the same with the small-data settings
  ``separation_coef=0.4, joint_lr_gamma=1.0`` (``decoys-small-data``); 100
  training and 25 test images per class. The summary also gives the pointing
  game against the decoy boxes (how often the top evidence points at a decoy).

For each model and seed: test accuracy; evidence_stability (noise_std=8,
5 repeats, top_k = half the prototypes); deletion_check (mean fill, 10 random boxes);
prototype_duplicates (tol=1e-4); prototype_purity (k=6, training images);
pointing_game and locality (top 1) with the part boxes of the test images.

    python benchmarks/quality.py            # seeds 0-4 (bars, motif), 0-2 (decoys)
    python benchmarks/quality.py --data decoys --decoy-seeds 5
    python benchmarks/quality.py --quick    # smoke test: seed 0 for the bars, a 2-epoch
                                            # small-data motif model (seed 3, 20 images
                                            # a class), a 1-epoch decoy model (6 a class)
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np
import torch

from sklearn_protopnet import (
    ProtoPNetClassifier,
    deletion_check,
    evidence_stability,
    locality,
    pointing_game,
    prototype_duplicates,
    prototype_purity,
)
from sklearn_protopnet._synthetic import MOTIF, make_decoy_images, make_motif_images
from sklearn_protopnet.backbones import SmallCNN

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from decoys import SIZE as DECOY_SIZE  # noqa: E402  (the same model as benchmarks/decoys.py)
from decoys import user_cnn  # noqa: E402

MOTIF_SETTINGS = {
    "defaults": {},
    "small-data": dict(separation_coef=0.4, joint_lr_gamma=1.0, joint_lr_schedule="step",
                       lr_backbone=3e-4),
    "patches": dict(prototype_init="patches"),
}
DECOY_SETTINGS = {
    "decoys-defaults": {},
    "decoys-small-data": dict(separation_coef=0.4, joint_lr_gamma=1.0,
                              joint_lr_schedule="step", lr_backbone=3e-4),
}
DATA = {"bars": ("bars",), "motif": tuple(MOTIF_SETTINGS), "decoys": tuple(DECOY_SETTINGS)}

COLUMNS = ("model", "seed", "acc", "jaccard", "top-1 kept", "peak moves (px)",
           "deletion wins (sim)", "deletion wins (logit)", "sim drop: box / random",
           "redundant", "purity", "pointing", "energy", "IoU", "box rule", "time")


def make_bars(n_per_class: int, size: int = 16, seed: int = 0):
    """tests/conftest.py's bar images (the same draws), with each bar's box."""
    rng = np.random.default_rng(seed)
    images, labels, boxes = [], [], []
    for label in (0, 1):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, size=(size, size)).astype(np.uint8)
            r, c = (int(v) for v in rng.integers(1, size - 7, size=2))
            if label == 0:
                img[r : r + 2, c : c + 6] = 255
                boxes.append((c, r, c + 6, r + 2))
            else:
                img[r : r + 6, c : c + 2] = 255
                boxes.append((c, r, c + 2, r + 6))
            images.append(img)
            labels.append(label)
    return np.stack(images), np.array(labels), np.array(boxes)


def bar_model(seed: int) -> ProtoPNetClassifier:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = SmallCNN(width=8)
    return ProtoPNetClassifier(
        backbone=backbone, image_size=16, prototypes_per_class=3, prototype_dim=8,
        warm_epochs=1, joint_epochs=3, push_start=2, push_interval=10, batch_size=16,
        augment=False, random_state=seed)


def motif_model(setting: str, seed: int, joint_epochs: int = 20) -> ProtoPNetClassifier:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = SmallCNN(width=8)
    return ProtoPNetClassifier(
        backbone=backbone, image_size=32, prototypes_per_class=2, prototype_dim=16,
        warm_epochs=2, joint_epochs=joint_epochs, push_start=100, batch_size=16, augment=False,
        random_state=seed, **MOTIF_SETTINGS[setting])


def decoy_model(setting: str, seed: int, epochs: dict) -> ProtoPNetClassifier:
    return ProtoPNetClassifier(backbone=user_cnn(seed), image_size=DECOY_SIZE,
                               prototype_dim=64, random_state=seed,
                               **DECOY_SETTINGS[setting], **epochs)


def evaluate(clf, X, y, X_test, y_test, parts, decoys=None) -> dict:
    # top half of the prototypes: with top_k >= m every set is all of them
    stability = evidence_stability(clf, X_test, noise_std=8.0, n_repeats=5,
                                   top_k=max(1, clf.n_prototypes_ // 2), random_state=0)
    deletion = deletion_check(clf, X_test, n_random=10, random_state=0).summary()
    local = locality(clf, X_test, parts)
    row = {
        "acc": clf.score(X_test, y_test),
        "jaccard": stability.mean_jaccard,
        "top-1 kept": stability.top1_unchanged_rate,
        "peak moves (px)": stability.mean_displacement_pixels,
        "deletion wins (sim)": deletion["similarity_win_rate"],
        "deletion wins (logit)": deletion["logit_win_rate"],
        "sim drop: box / random": (deletion["mean_relative_similarity_drop"],
                                   deletion["mean_relative_random_similarity_drop"]),
        "redundant": (prototype_duplicates(clf).n_redundant, clf.n_prototypes_),
        "purity": prototype_purity(clf, X, y, k=6).mean_purity,
        "pointing": pointing_game(clf, X_test, parts).score,
        "energy": local.mean_energy,
        "IoU": local.mean_iou,
        # the rule of Evidence.box in force (the attribute is newer than box_percentile_)
        "box rule": getattr(clf, "box_rule_", "percentile"),
    }
    if decoys is not None:  # the control: the decoys as "parts"
        row["pointing at a decoy"] = pointing_game(clf, X_test, list(decoys)).score
        row["energy on the decoys"] = locality(clf, X_test, list(decoys)).mean_energy
    return row


def cell(value) -> str:
    if isinstance(value, tuple) and isinstance(value[0], float):
        return f"{value[0]:.2f} / {value[1]:.2f}"
    if isinstance(value, tuple):
        return f"{value[0]} of {value[1]}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: seed 0 for the bars, a 2-epoch small-data motif "
                             "model (seed 3, 20 images a class), a 1-epoch decoy model on 6 "
                             "images a class")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the bars and motif")
    parser.add_argument("--decoy-seeds", type=int, default=3, help="seeds of the decoys")
    parser.add_argument("--decoy-per-class", type=int, default=100,
                        help="decoy training images per class (a quarter as many to test)")
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=DATA)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    runs, decoy_epochs = [], {}
    if args.quick:
        args.decoy_seeds, args.decoy_per_class = 1, 6
        decoy_epochs = {"warm_epochs": 0, "joint_epochs": 1}
    for data in args.data:
        for name in DATA[data]:
            if data == "decoys":
                seeds = range(args.decoy_seeds)
            else:
                seeds = [0 if data == "bars" else 3] if args.quick else range(args.seeds)
            if args.quick and name in ("decoys-small-data", "patches"):
                continue  # the smoke test fits one model per data set
            runs += [(name, seed) for seed in seeds]
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    by_model: dict[str, list[dict]] = {}
    for name, seed in runs:
        t0 = time.perf_counter()
        decoys = None
        if name == "bars":
            torch.set_num_threads(1)  # small tensors: one thread is faster and reproducible
            X, y, _ = make_bars(20, seed=seed)
            X_test, y_test, parts = make_bars(10, seed=100 + seed)
            clf = bar_model(seed).fit(X, y)
        elif name in MOTIF_SETTINGS:
            torch.set_num_threads(1)
            X, y, _ = make_motif_images(20 if args.quick else 100, seed=seed)
            X_test, y_test, centres = make_motif_images(20, seed=100 + seed)
            parts = np.concatenate([centres - MOTIF / 2, centres + MOTIF / 2], axis=1)
            clf = motif_model(name, seed, 2 if args.quick else 20).fit(X, y)
        else:  # as benchmarks/decoys.py: torch's default threads, the same draws
            torch.set_num_threads(threads)
            n = args.decoy_per_class
            X, y, _, _ = make_decoy_images(n, size=DECOY_SIZE, seed=seed)
            X_test, y_test, parts, decoys = make_decoy_images(max(n // 4, 2), size=DECOY_SIZE,
                                                              seed=1000 + seed)
            clf = decoy_model(name, seed, decoy_epochs).fit(X, y)
        row = evaluate(clf, X, y, X_test, y_test, parts, decoys)
        row.update(model=name, seed=seed, time=f"{time.perf_counter() - t0:.0f} s")
        by_model.setdefault(name, []).append(row)
        print("| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |", flush=True)
    print()
    for name, rows in by_model.items():
        keys = ["deletion wins (sim)", "pointing", "energy", "IoU"]
        keys += [k for k in ("pointing at a decoy", "energy on the decoys") if k in rows[0]]
        medians = {c: statistics.median(r[c] for r in rows) for c in keys}
        print(f"- {name}: median over {len(rows)} seed(s): "
              + ", ".join(f"{c} {v:.2f}" for c, v in medians.items()))


if __name__ == "__main__":
    main()
