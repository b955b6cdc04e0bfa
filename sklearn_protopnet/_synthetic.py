"""Synthetic images with a planted discriminative motif, for checking that
explanations point at the part that decides the class."""

from __future__ import annotations

import numpy as np

MOTIF = 8


def make_motif_images(n_per_class: int, size: int = 32, seed: int = 0):
    """Two classes of dark noisy RGB images, each with its class's 8 px motif
    (a red plus or a blue ring) at a random place among distractors both
    classes share (two light squares, a grey bar).

    Returns the images (n, size, size, 3) uint8, the labels (n,) and the
    motif centres (n, 2) as (x, y) in pixels.
    """
    rng = np.random.default_rng(seed)
    plus = np.zeros((MOTIF, MOTIF), bool)
    plus[3:5, :] = plus[:, 3:5] = True
    ring = np.ones((MOTIF, MOTIF), bool)
    ring[2:6, 2:6] = False
    motifs = [(plus, (255, 40, 40)), (ring, (40, 40, 255))]
    images, labels, centres = [], [], []
    for label, (mask, colour) in enumerate(motifs):
        for _ in range(n_per_class):
            img = rng.integers(0, 12, size=(size, size, 3)).astype(np.uint8)
            for _ in range(2):
                r, c = rng.integers(0, size - 6, size=2)
                img[r : r + 6, c : c + 6] = 200
            r, c = rng.integers(0, size - 8, size=2)
            img[r : r + 2, c : c + 8] = 120
            r, c = rng.integers(0, size - MOTIF + 1, size=2)
            img[r : r + MOTIF, c : c + MOTIF][mask] = colour
            images.append(img)
            labels.append(label)
            centres.append((c + MOTIF / 2, r + MOTIF / 2))
    return np.stack(images), np.array(labels), np.array(centres)


#: Shapes and colours of the decoy images: class k is (SHAPES[k], COLOURS[k]).
SHAPES = ("square", "ring", "plus", "cross")
COLOURS = ((230, 40, 40), (40, 200, 40), (50, 80, 255), (230, 210, 30))
PART = 8


def _shape_mask(name: str) -> np.ndarray:
    mask = np.zeros((PART, PART), bool)
    if name == "square":
        mask[1:7, 1:7] = True
    elif name == "ring":
        mask[:, :] = True
        mask[2:6, 2:6] = False
    elif name == "plus":
        mask[3:5, :] = mask[:, 3:5] = True
    else:  # cross: both diagonals, two pixels wide
        i = np.arange(PART)
        mask[i, i] = mask[i, PART - 1 - i] = True
        mask[i[:-1], i[1:]] = mask[i[1:], PART - 1 - i[:-1]] = True
    return mask


def make_decoy_images(n_per_class: int, size: int = 40, n_classes: int = 4, seed: int = 0):
    """Images whose class is a combination of two attributes, among decoys
    that each share one of them.

    Class k is a part of shape ``SHAPES[k]`` in colour ``COLOURS[k]``. Every
    image also holds a decoy of the class's colour and another shape, and a
    decoy of the class's shape in another colour, so colour alone and shape
    alone each fire at two places; only the pair says the class. Parts and
    decoys are 8 px, at random places at least 8 px apart on dark noise.

    Returns the images (n, size, size, 3) uint8, the labels (n,), the part
    boxes (n, 4) as (x0, y0, x1, y1) end-exclusive, and the decoy boxes
    (n, 2, 4).
    """
    rng = np.random.default_rng(seed)
    masks = [_shape_mask(s) for s in SHAPES[:n_classes]]
    colours = [np.array(c, np.uint8) for c in COLOURS[:n_classes]]
    images, labels, parts, decoys = [], [], [], []
    for label in range(n_classes):
        others = [k for k in range(n_classes) if k != label]
        for _ in range(n_per_class):
            img = rng.integers(0, 25, size=(size, size, 3)).astype(np.uint8)
            places = _free_places(rng, size, 3)
            objects = [(masks[label], colours[label]),
                       (masks[rng.choice(others)], colours[label]),  # the colour, another shape
                       (masks[label], colours[rng.choice(others)])]  # the shape, another colour
            boxes = []
            for (mask, colour), (r, c) in zip(objects, places):
                img[r : r + PART, c : c + PART][mask] = colour
                boxes.append((c, r, c + PART, r + PART))
            images.append(img)
            labels.append(label)
            parts.append(boxes[0])
            decoys.append(boxes[1:])
    return np.stack(images), np.array(labels), np.array(parts), np.array(decoys)


def _free_places(rng, size: int, n: int) -> list[tuple[int, int]]:
    """``n`` top-left corners of 8 px squares at least 8 px apart."""
    while True:
        places = [tuple(int(v) for v in rng.integers(0, size - PART + 1, size=2))
                  for _ in range(n)]
        if all(max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= 2 * PART
               for i, a in enumerate(places) for b in places[i + 1:]):
            return places
