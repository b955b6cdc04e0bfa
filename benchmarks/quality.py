"""The explanation-quality metrics of ``sklearn_protopnet`` on synthetic data.

Two data sets whose discriminative part is known, so that every metric,
including the two that need part boxes, can be computed:

- ``bars``: 16 px grey images, a horizontal or a vertical bright bar (the
  part) on noise; the test suite's model (SmallCNN width 8, 3 prototypes per
  class, 1 + 3 epochs), 40 training and 20 test images.
- ``motif``: 32 px RGB images with a class motif (an 8 px red plus or blue
  ring, the part) among distractors both classes share
  (``_synthetic.make_motif_images``); 200 training and 40 test images, the
  settings of benchmarks/planted_motif.py: ``small-data`` (prototypes end on
  the motif) and ``patches`` (prototypes initialised on patches, which
  mostly end on background and distractors).

For each model and seed: test accuracy; evidence_stability (noise_std=8,
5 repeats, top_k = half the prototypes); deletion_check (mean fill, 10 random boxes);
prototype_duplicates (tol=1e-4); prototype_purity (k=6, training images);
pointing_game and locality (top 1) with the part boxes of the test images.

    python benchmarks/quality.py            # seeds 0-4
    python benchmarks/quality.py --quick    # seed 0 for the bars, 3 for the motif
"""

from __future__ import annotations

import argparse
import statistics
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
from sklearn_protopnet._synthetic import MOTIF, make_motif_images
from sklearn_protopnet.backbones import SmallCNN

MOTIF_SETTINGS = {
    "small-data": dict(separation_coef=0.4, joint_lr_gamma=1.0),
    "patches": dict(prototype_init="patches"),
}

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


def motif_model(setting: str, seed: int) -> ProtoPNetClassifier:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = SmallCNN(width=8)
    return ProtoPNetClassifier(
        backbone=backbone, image_size=32, prototypes_per_class=2, prototype_dim=16,
        warm_epochs=2, joint_epochs=20, push_start=100, batch_size=16, augment=False,
        random_state=seed, **MOTIF_SETTINGS[setting])


def evaluate(clf, X, y, X_test, y_test, parts) -> dict:
    # top half of the prototypes: with top_k >= m every set is all of them
    stability = evidence_stability(clf, X_test, noise_std=8.0, n_repeats=5,
                                   top_k=max(1, clf.n_prototypes_ // 2), random_state=0)
    deletion = deletion_check(clf, X_test, n_random=10, random_state=0).summary()
    return {
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
        "energy": locality(clf, X_test, parts).mean_energy,
        "IoU": locality(clf, X_test, parts).mean_iou,
        # the rule of Evidence.box in force (the attribute is newer than box_percentile_)
        "box rule": getattr(clf, "box_rule_", "percentile"),
    }


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
                        help="one seed per data set (0 for the bars, 3 for the motif)")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: one thread is faster and reproducible
    runs = []
    for seed in ([0] if args.quick else range(args.seeds)):
        runs.append(("bars", seed))
    for setting in MOTIF_SETTINGS:
        for seed in ([3] if args.quick else range(args.seeds)):
            runs.append((setting, seed))
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    by_model: dict[str, list[dict]] = {}
    for name, seed in runs:
        t0 = time.perf_counter()
        if name == "bars":
            X, y, _ = make_bars(20, seed=seed)
            X_test, y_test, parts = make_bars(10, seed=100 + seed)
            clf = bar_model(seed).fit(X, y)
        else:
            X, y, _ = make_motif_images(100, seed=seed)
            X_test, y_test, centres = make_motif_images(20, seed=100 + seed)
            parts = np.concatenate([centres - MOTIF / 2, centres + MOTIF / 2], axis=1)
            clf = motif_model(name, seed).fit(X, y)
        row = evaluate(clf, X, y, X_test, y_test, parts)
        row.update(model=name, seed=seed, time=f"{time.perf_counter() - t0:.0f} s")
        by_model.setdefault(name, []).append(row)
        print("| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |", flush=True)
    if not args.quick:
        print()
        for name, rows in by_model.items():
            medians = {c: statistics.median(r[c] for r in rows)
                       for c in ("deletion wins (sim)", "pointing", "energy", "IoU")}
            print(f"- {name}: median over {len(rows)} seeds: "
                  + ", ".join(f"{c} {v:.2f}" for c, v in medians.items()))


if __name__ == "__main__":
    main()
