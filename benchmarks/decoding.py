"""Decode once: cost of the decoding pass vs an epoch from the decoded cache.

Writes a folder of photo-like JPEGs (smooth random colour fields with noise,
640x480 by default), then times, as medians over ``--repeats`` runs:

- the decoding pass ``fit`` makes once (decode + resize to ``--size``),
- one SGD epoch's data side from the uint8 cache (batching + the default
  augmentation, one warp per batch),
- the same epoch streamed from the files (what every epoch would cost
  without the cache),

and counts the decodes made during the cached epoch (expected: 0). A second
part compares decoding a 12-megapixel JPEG at full size with draft mode.

Run: ``python benchmarks/decoding.py`` (``--n 500 --size 224 --repeats 5``;
``--quick`` is a smoke test of a few seconds: 8 small JPEGs, a 400x300 photo
in place of the 12 MP one, one repeat).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sklearn_protopnet import _images
from sklearn_protopnet._augment import BatchWarp
from sklearn_protopnet._images import (
    ImageDataset,
    check_images,
    decode_all,
    load_resized,
)


def photo_like(rng, width, height):
    """A smooth random colour field plus noise: compresses like a photo."""
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 21, size=(height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def epoch(dataset, batch_size=32, augment=None):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    for images, _ in loader:
        # the network's first step on a batch: the default augmentation warps it
        augment(images) if augment is not None else images.float()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    big_size = (4000, 3000)
    if args.quick:
        args.n, args.width, args.height, args.size, args.repeats = 8, 64, 48, 32, 1
        big_size = (400, 300)
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    size = (args.size, args.size)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(args.n):
            path = str(Path(folder) / f"{i:04}.jpg")
            photo_like(rng, args.width, args.height).save(path, quality=90)
            paths.append(path)
        source = check_images(paths)
        labels = np.arange(args.n) % 2
        augment = BatchWarp()

        cache = decode_all(source, size)
        t_decode = median_time(lambda: decode_all(source, size), args.repeats)
        cached = ImageDataset(source, size, y=labels, cache=cache)
        cached_plain = ImageDataset(source, size, y=labels, cache=cache)
        streamed = ImageDataset(source, size, y=labels)

        count = {"n": 0}
        real = _images.load_resized

        def counting(path, image_size):
            count["n"] += 1
            return real(path, image_size)

        _images.load_resized = counting
        try:
            t_cached = median_time(lambda: epoch(cached, augment=augment), args.repeats)
            decodes_cached = count["n"]
            t_cached_plain = median_time(lambda: epoch(cached_plain), args.repeats)
            count["n"] = 0
            t_streamed = median_time(lambda: epoch(streamed, augment=augment), args.repeats)
            decodes_streamed = count["n"] // args.repeats
        finally:
            _images.load_resized = real

        print(f"{args.n} JPEGs {args.width}x{args.height} -> {args.size}x{args.size}, "
              f"medians of {args.repeats} runs")
        print("| step | time (s) | decodes |\n|---|---|---|")
        print(f"| decoding pass (once per fit) | {t_decode:.2f} | {args.n} |")
        print(f"| epoch from the cache, augmented | {t_cached:.2f} | "
              f"{decodes_cached // args.repeats} |")
        print(f"| epoch from the cache, no augmentation | {t_cached_plain:.2f} | 0 |")
        print(f"| epoch streamed from the files, augmented | {t_streamed:.2f} | "
              f"{decodes_streamed} |")

        # a 12-megapixel JPEG: full decode vs draft mode
        big = str(Path(folder) / "big.jpg")
        photo_like(rng, *big_size).save(big, quality=90)

        def full():
            with Image.open(big) as img:
                img.convert("RGB").resize(size[::-1], Image.Resampling.BILINEAR)

        t_full = median_time(full, args.repeats)
        t_draft = median_time(lambda: load_resized(big, size), args.repeats)
        print(f"\n{big_size[0] * big_size[1] / 1e6:.2g} MP JPEG ({big_size[0]}x{big_size[1]}) "
              f"to {args.size}x{args.size}: full decode "
              f"{t_full * 1000:.0f} ms, draft mode {t_draft * 1000:.0f} ms "
              f"({t_full / t_draft:.1f}x)")


if __name__ == "__main__":
    main()
