"""Would a gradient attribution point at the part better than the peak cell?

On the planted-motif images (``sklearn_protopnet._synthetic.make_motif_images``:
an 8 px class motif among distractors both classes share), fits the models of
``benchmarks/planted_motif.py`` (its "defaults" setting, or ``--set``) and,
for the top evidence item of each test image, takes five pointings of where
its prototype's similarity comes from:

- ``cell``: the centre of the peak cell (``pointing_game(peak="cell")``);
- ``map``: the largest pixel of the upsampled activation map (``peak="map"``);
- ``gradient``: the largest |d similarity / d pixel|, summed over channels;
- ``gradient x input``: the largest |pixel x gradient|, summed over channels;
- ``smoothgrad``: the largest |gradient| averaged over 16 copies of the
  image with Gaussian noise of 10% of the pixel range (Smilkov et al.,
  "SmoothGrad: removing noise by adding noise", 2017).

The similarity differentiated is the prototype's largest similarity over
the image's cells, the number its evidence is made of. A pointing is a hit
when it falls inside the motif's box (the pointing game, strict). Prints a
row per seed and the medians.

    python benchmarks/attribution.py --seeds 5 --set separation_coef=0.08
    python benchmarks/attribution.py --seeds 5    # 0.4, the default for two classes

``--quick`` is a smoke test of a few seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch

from sklearn_protopnet import ProtoPNetClassifier, pointing_game
from sklearn_protopnet._synthetic import MOTIF, make_motif_images
from sklearn_protopnet.backbones import SmallCNN

KINDS = ("cell", "map", "gradient", "gradient x input", "smoothgrad")
SMOOTHGRAD_SAMPLES = 16
SMOOTHGRAD_NOISE = 0.1  # of the [0, 1] pixel range


def _value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def top_similarity(module, prototype: int):
    """x (1, 3, H, W) in [0, 1] -> the prototype's largest similarity over cells."""
    def f(x):
        d = module.distance_map(module.latent(x))[:, prototype].flatten(1).amin(dim=1)
        return module.similarity(d).sum()
    return f


def attribution_peaks(module, image: np.ndarray, prototype: int, rng) -> dict:
    """(x, y) of the largest attribution of each gradient kind, for one image."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].double().div(255).float()
    f = top_similarity(module, prototype)

    def grad(at):
        at = at.clone().requires_grad_()
        f(at).backward()
        return at.grad

    g = grad(x)
    noisy = sum(grad(x + SMOOTHGRAD_NOISE * torch.from_numpy(
        rng.standard_normal(x.shape)).float()).abs() for _ in range(SMOOTHGRAD_SAMPLES))
    maps = {"gradient": g.abs().sum(1)[0], "gradient x input": (g * x).abs().sum(1)[0],
            "smoothgrad": noisy.sum(1)[0]}
    peaks = {}
    for kind, a in maps.items():
        row, col = np.unravel_index(int(torch.argmax(a)), a.shape)
        peaks[kind] = (int(col), int(row))
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--joint-epochs", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    settings = {k: _value(v) for k, v in (a.split("=", 1) for a in args.set)}
    warm, n_test = 2, 20
    if args.quick:
        args.seeds, args.per_class, args.joint_epochs, warm, n_test = 1, 10, 1, 1, 4
    print("| seed | " + " | ".join(KINDS) + " |")
    print("|---" * (len(KINDS) + 1) + "|")
    scores: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for seed in range(args.seeds):
        X, y, _ = make_motif_images(args.per_class, seed=seed)
        X_test, _, centres = make_motif_images(n_test, seed=100 + seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            backbone = SmallCNN(width=8)
        clf = ProtoPNetClassifier(
            backbone=backbone, image_size=32, prototypes_per_class=2, prototype_dim=16,
            warm_epochs=warm, joint_epochs=args.joint_epochs, push_start=100, batch_size=16,
            augment=False, random_state=seed, **settings,
        ).fit(X, y)
        boxes = np.array([(cx - MOTIF / 2, cy - MOTIF / 2, cx + MOTIF / 2, cy + MOTIF / 2)
                          for cx, cy in centres])
        row = {kind: pointing_game(clf, X_test, boxes, peak=kind).score
               for kind in ("cell", "map")}
        module = clf.module_.eval()
        rng = np.random.default_rng(seed)
        hits: dict[str, list[bool]] = {kind: [] for kind in KINDS[2:]}
        for image, e, (x0, y0, x1, y1) in zip(X_test, clf.explain(X_test, top_k=1), boxes):
            for kind, (px, py) in attribution_peaks(module, image, e.evidence[0].prototype,
                                                    rng).items():
                hits[kind].append(x0 <= px < x1 and y0 <= py < y1)
        row.update({kind: float(np.mean(h)) for kind, h in hits.items()})
        for kind in KINDS:
            scores[kind].append(row[kind])
        print(f"| {seed} | " + " | ".join(f"{row[k]:.2f}" for k in KINDS) + " |", flush=True)
    print("| median | " + " | ".join(f"{statistics.median(scores[k]):.2f}" for k in KINDS)
          + " |")


if __name__ == "__main__":
    main()
