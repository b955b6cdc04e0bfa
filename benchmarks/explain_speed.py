"""Cost of ``explain`` (no rendering) relative to ``predict`` on the same images.

Two settings, each a model fitted without SGD epochs (speed does not depend
on how well the model is trained): the demo's scale (SmallCNN, 32 px PNG
files, 10 classes x 10 prototypes) and a photo scale (ResNet-18 at 224 px,
JPEG files of 400 x 300 px, 10 classes x 10 prototypes). ``explain`` keeps
the top 10 evidence items of the predicted class, each with its box in the
original image (upsampled map and percentile); a box is computed when it is
first read, so the benchmark times explain alone and explain with every box
read. It also times one box and one scoring sheet of a 12-megapixel photo.
Each timing is the median of several runs, predict and explain alternating
so that both see the same machine load; the ratio is of the two medians. Run:

    python benchmarks/explain_speed.py [--repeats 5]

``--quick`` is a smoke test of a few seconds: 10 images per setting, the
ResNet-18 at 64 px on 80 x 60 JPEGs, a 400 x 300 photo, one repeat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet.backbones import SmallCNN


def write_images(folder, n, size, fmt, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        path = os.path.join(folder, f"{i:04d}.{fmt}")
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths, np.arange(n) % 10


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(name, clf, paths, repeats):
    clf.predict(paths[:8]), clf.explain(paths[:8])  # warm-up
    def explain_and_boxes():
        for explanation in clf.explain(paths, top_k=10):
            for item in explanation.evidence:
                item.box  # noqa: B018 -- the box is computed on first access

    t_predict, t_explain, t_boxes = [], [], []
    for _ in range(repeats):
        t_predict.append(timed(lambda: clf.predict(paths)))
        t_explain.append(timed(lambda: clf.explain(paths, top_k=10)))
        t_boxes.append(timed(explain_and_boxes))
    p, e, b = (statistics.median(t) for t in (t_predict, t_explain, t_boxes))
    n = len(paths)
    print(f"| {name} | {n} | {1000 * p / n:.2f} | {1000 * e / n:.2f} ({e / p:.2f}x) | "
          f"{1000 * b / n:.2f} ({b / p:.2f}x) |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n_small, n_photo, photo_files, photo_size, photo = 200, 60, (400, 300), 224, (4000, 3000)
    if args.quick:
        n_small, n_photo, photo_files, photo_size, photo = 10, 10, (80, 60), 64, (400, 300)
        args.repeats = 1
    torch.manual_seed(0)
    common = dict(warm_epochs=0, joint_epochs=0, push_interval=0, augment=False,
                  random_state=0, device="cpu", prototypes_per_class=10)
    print(f"torch threads: {torch.get_num_threads()}")
    print("| setting | images | predict ms/image | explain ms/image (ratio) | "
          "explain + all 10 boxes read ms/image (ratio) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        paths, y = write_images(tmp, n_small, (32, 32), "png")
        clf = ProtoPNetClassifier(backbone=SmallCNN(), image_size=32, prototype_dim=64,
                                  batch_size=64, **common).fit(paths, y)
        compare("SmallCNN, 32 px PNG", clf, paths, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        paths, y = write_images(tmp, n_photo, photo_files, "jpg")
        clf = ProtoPNetClassifier(backbone="resnet18", image_size=photo_size,
                                  prototype_dim=128, batch_size=32, **common).fit(paths, y)
        compare(f"ResNet-18, {photo_size} px, {photo_files[0]}x{photo_files[1]} JPEG", clf,
                paths, args.repeats)
        photo_box(clf.cell_geometry_, args.repeats, photo)
        photo_sheet(clf, tmp, args.repeats, photo)


def photo_box(geometry, repeats: int, photo=(4000, 3000)) -> None:
    """One evidence box on a 12-megapixel photo (``photo``, width x height):
    the similarity map upsampled to its pixels and the percentile box, time
    and peak memory."""
    import tracemalloc

    from sklearn_protopnet._geometry import box_from_map, upsample_map

    width, height = photo
    cell_map = np.random.default_rng(0).random(geometry.feature_map_shape).astype(np.float32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        box_from_map(upsample_map(cell_map, geometry, (height, width)), 95)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    box_from_map(upsample_map(cell_map, geometry, (height, width)), 95)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"\none box on a {width} x {height} photo "
          f"(ResNet-18 map {geometry.feature_map_shape}): "
          f"{1e3 * statistics.median(times):.0f} ms (median of {repeats}), "
          f"peak {peak / 2**20:.0f} MiB traced")



def photo_sheet(clf, folder: str, repeats: int, photo=(4000, 3000)) -> None:
    """The scoring sheet (5 + 5 evidence items) of a 12-megapixel JPEG (``photo``):
    ``Explanation.save`` alone, time and peak memory (the boxes are read once
    before timing)."""
    import tracemalloc

    from PIL import Image

    path = os.path.join(folder, "photo.jpg")
    width, height = photo
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=85)
    (e,) = clf.explain([path], top_k=5)
    out = os.path.join(folder, "sheet.png")
    e.save(out)  # boxes of both columns computed and kept
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        e.save(out)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    e.save(out)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"scoring sheet of a {width} x {height} JPEG: {statistics.median(times):.2f} s "
          f"(median of {repeats}), peak {peak / 2**20:.0f} MiB traced")


if __name__ == "__main__":
    main()
