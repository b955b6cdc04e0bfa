"""What streaming images from their files costs per epoch, against the
in-memory cache.

``fit`` decodes every image once into a uint8 cache when the decoded images
fit in ``memory_budget``; beyond it, every pass decodes them from the files
again (the fit still decodes each file once up front, so that a bad file is
named before training). This fits the same model twice on the same files,
alternating in one process: with the default budget (cached) and with a
budget of one image (streamed), and reports from ``history_`` the median
seconds of an SGD epoch and of the push and the last layer, and the whole
fit's wall time, over all epochs of all runs. The two fits give the same model (the
decoded pixels are the same); the benchmark checks it.

Data: N RGB JPEG files of 320 x 240 px (smooth random colour fields with a
coloured square per class, seed fixed), 2 classes, trained at 64 px with
SmallCNN(width=16) and, in the full run, ResNet-18 (random weights): a cheap
network, where decoding is a large share of an epoch, and a costlier one.
1 warm-up + 2 joint epochs, batch 32, no augmentation, num_workers=0, one
intra-op thread. Run from the repository root (about 5 minutes on 2 cores;
``--quick`` is a smoke test of about a minute: 64 images, SmallCNN, one run):

    python benchmarks/streaming.py [--runs 3] [--images 256] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # measure the checkout this script is in, not an installed copy

from sklearn_protopnet import ProtoPNetClassifier  # noqa: E402
from sklearn_protopnet.backbones import SmallCNN  # noqa: E402

SIDE = 64
FILE_SIZE = (320, 240)  # (width, height) of the JPEG files


def write_images(folder: str, n: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    paths, labels = [], np.arange(n) % 2
    w, h = FILE_SIZE
    for i, label in enumerate(labels):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
        img = img.copy()
        r, c = rng.integers(0, h - 60), rng.integers(0, w - 60)
        img[r : r + 60, c : c + 60] = (255, 40, 40) if label == 0 else (40, 40, 255)
        path = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(img).save(path, quality=90)
        paths.append(path)
    return paths, labels


def backbone(name: str) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return SmallCNN(width=16) if name == "SmallCNN(16)" else "resnet18"


def fit(name: str, paths, labels, streamed: bool, joint_epochs: int) -> dict:
    decoded = 3 * SIDE * SIDE
    clf = ProtoPNetClassifier(
        backbone=backbone(name), image_size=SIDE, prototypes_per_class=5, prototype_dim=32,
        warm_epochs=1, joint_epochs=joint_epochs, push_start=1 + joint_epochs,
        batch_size=32, augment=False, random_state=0,
        memory_budget=decoded if streamed else 2 * 1024**3,
    )
    t0 = time.perf_counter()
    clf.fit(paths, labels)
    wall = time.perf_counter() - t0
    epochs = [r["dur"] for r in clf.history_ if r.get("stage") in ("warm", "joint")]
    push = [r["dur"] for r in clf.history_ if r.get("stage") == "push"]
    last = [r["dur"] for r in clf.history_ if r.get("stage") == "last_layer"]
    return {"epochs": epochs, "push": push, "last": last, "wall": wall,
            "proba": clf.predict_proba(paths[:32])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, runs, joint = args.images, args.runs, 2
    networks = ["SmallCNN(16)", "resnet18"]
    if args.quick:
        n, runs, joint, networks = 64, 1, 1, ["SmallCNN(16)"]

    work = tempfile.mkdtemp(prefix="protopnet-streaming-")
    paths, labels = write_images(work, n)
    print(f"{n} JPEG files of {FILE_SIZE[0]}x{FILE_SIZE[1]} px, trained at {SIDE} px; "
          f"{runs} run(s) of 1 + {joint} epochs each way, alternating\n")
    print("| network | images | epoch cached (s) | epoch streamed (s) | streamed / cached "
          "| extra per image per epoch (ms) | push + last layer cached / streamed (s) "
          "| fit cached / streamed (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in networks:
        fit(name, paths[:32], labels[:32], False, 0)  # warm-up: lazy imports, geometry
        results = {False: [], True: []}
        for run in range(runs):
            for streamed in ((False, True) if run % 2 == 0 else (True, False)):
                results[streamed].append(fit(name, paths, labels, streamed, joint))
        for a, b in zip(results[False], results[True]):
            np.testing.assert_array_equal(a["proba"], b["proba"])  # the same model

        def median(key, streamed, results=results):
            return statistics.median(v for r in results[streamed] for v in
                                     (r[key] if isinstance(r[key], list) else [r[key]]))

        cached, streamed = median("epochs", False), median("epochs", True)
        rest_c = median("push", False) + median("last", False)
        rest_s = median("push", True) + median("last", True)
        print(f"| {name} | {n} | {cached:.2f} | {streamed:.2f} | {streamed / cached:.2f} | "
              f"{1000 * (streamed - cached) / n:.2f} | {rest_c:.2f} / {rest_s:.2f} | "
              f"{median('wall', False):.1f} / {median('wall', True):.1f} |", flush=True)


if __name__ == "__main__":
    main()
