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
