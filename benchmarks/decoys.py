"""Do the "this" boxes point at the part, among decoys? The box rules compared.

Synthetic images (``sklearn_protopnet._synthetic.make_decoy_images``): a
class is a (shape, colour) pair, and every image also holds a decoy of the
class's colour in another shape and a decoy of the class's shape in another
colour, so that colour and shape alone each fire at two places. A model is
fitted with a user's small CNN (a plain ``nn.Sequential``) and the library's
defaults apart from backbone, image size and ``prototype_dim``; then, for each
test image and each box rule (``explain(box_rule=...)``, the same fitted
model), the top evidence item of the predicted class is a *hit* when its box
holds the part's centre and covers at most a quarter of the image. Also
reported: the median box area, the pointing game (the peak cell's centre
inside the part box) and the test accuracy.

Run (about 2 minutes a seed on a 2-core CPU; ``--quick`` is a smoke test):

    python benchmarks/decoys.py --seeds 3
    python benchmarks/decoys.py --seeds 3 --settings custom --set separation_coef=0.4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from torch import nn

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet._synthetic import make_decoy_images

SIZE = 40
RULES = (("peak", 95.0), ("peak", 90.0), ("percentile", 95.0))
SETTINGS = {
    "defaults": {},
    "small-data": {"separation_coef": 0.4, "joint_lr_gamma": 1.0,
                   "joint_lr_schedule": "step", "lr_backbone": 3e-4},
}


def user_cnn(seed: int) -> nn.Module:
    """What a user might write: three conv-BN-ReLU blocks, two of stride 2."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
    )


def parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def inside(box, x, y) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= x < x1 and y0 <= y < y1


def evaluate(clf, X, y, parts, rule: str, percentile: float = 95.0) -> dict:
    hits, areas, points = [], [], []
    for e, part in zip(clf.explain(X, top_k=1, box_rule=rule, box_percentile=percentile),
                       parts):
        item = e.evidence[0]
        x0, y0, x1, y1 = item.box
        cx, cy = (part[0] + part[2]) / 2, (part[1] + part[3]) / 2
        area = (x1 - x0) * (y1 - y0) / (SIZE * SIZE)
        hits.append(inside(item.box, cx, cy) and area <= 0.25)
        areas.append(area)
        r, c = item.peak
        points.append(inside(part, c + 0.5, r + 0.5))
    return {"hit": float(np.mean(hits)), "median_area": float(np.median(areas)),
            "max_area": float(np.max(areas)), "pointing": float(np.mean(points))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS),
                        choices=[*SETTINGS, "custom"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an estimator parameter (JSON value) of the setting 'custom'")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    settings = dict(SETTINGS)
    settings["custom"] = {k: parse_value(v) for k, v in (a.split("=", 1) for a in args.set)}
    epochs = {}
    if args.quick:
        args.seeds, args.per_class, args.settings = 1, 6, ["defaults"]
        epochs = {"warm_epochs": 1, "joint_epochs": 1}
    rows = {}
    print("| setting | seed | accuracy | box rule | hit (part centre, <= 1/4 image) | "
          "median area | largest | pointing game | fit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for setting in args.settings:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            X, y, parts, _ = make_decoy_images(args.per_class, size=SIZE, seed=seed)
            X_test, y_test, parts_test, _ = make_decoy_images(max(args.per_class // 4, 2),
                                                              size=SIZE, seed=1000 + seed)
            t0 = time.perf_counter()
            clf = ProtoPNetClassifier(backbone=user_cnn(seed), image_size=SIZE,
                                      prototype_dim=64, random_state=seed,
                                      **settings[setting], **epochs).fit(X, y)
            fit_time = time.perf_counter() - t0
            accuracy = clf.score(X_test, y_test)
            for rule, percentile in RULES:
                r = evaluate(clf, X_test, y_test, parts_test, rule, percentile)
                rows.setdefault((setting, rule, percentile), []).append(r)
                print(f"| {setting} | {seed} | {accuracy:.3f} | {rule} {percentile:g} | "
                      f"{r['hit']:.2f} | {r['median_area']:.3f} | {r['max_area']:.2f} | "
                      f"{r['pointing']:.2f} | {fit_time:.0f} s |", flush=True)
    print("\nover seeds (median, range):")
    for (setting, rule, percentile), rs in rows.items():
        hits = [r["hit"] for r in rs]
        print(f"- {setting}, {rule} {percentile:g}: hit {statistics.median(hits):.2f} "
              f"({min(hits):.2f}-{max(hits):.2f}), median area "
              f"{statistics.median(r['median_area'] for r in rs):.3f}, pointing game "
              f"{statistics.median(r['pointing'] for r in rs):.2f}")


if __name__ == "__main__":
    main()
