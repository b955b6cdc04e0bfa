"""
How good are the explanations? The quality metrics on images with decoys
========================================================================

A ProtoPNet explanation is exact about what the model computed ("this part
of the image looks like that prototype, similarity x weight = contribution");
whether it is a *good* explanation is another question. This example fits a
small model on synthetic images whose discriminative part is known and
computes every metric of ``sklearn_protopnet``'s explanation-quality
functions (docs/quality.md defines them):

- ``evidence_stability``: does the top evidence stay the same, at the same
  place, under pixel noise of 8 grey levels?
- ``deletion_check``: does masking the evidence box lower the similarity and
  the logit more than masking random boxes of the same size?
- ``prototype_duplicates``: prototypes projected onto the same patch (or
  nearly equal);
- ``prototype_purity``: the share of a prototype's nearest training patches
  that come from its class;
- ``pointing_game`` and ``locality``: does the top evidence point at the
  part, and how much of its activation lies on it?

The images (``make_decoy_images``, 40 px): a class is a (shape, colour) pair,
say a red square, and every image also holds two decoys, an object of the
class's colour in another shape and one of the class's shape in another
colour. Colour alone and shape alone each fire at two places; only the part
says the class. The part boxes are the ground truth of the last two metrics,
and the same metrics scored against the decoy boxes are the control: a model
that looked at colour or shape alone would point at a decoy as often as at
the part.

The model: a user's small CNN, 30 training images per class, 2 warm-up and 18
joint epochs, ``separation_coef=0.4`` and ``joint_lr_gamma=1.0`` (the
small-data settings of benchmarks/quality.py). About 20 s on a free 2-core
CPU (40 s with another job on it), most of it the fit. It draws the metrics
against their controls, the explanation of the first test image and the
prototype gallery, and prints, for the gallery, which prototypes were
projected onto a part, onto a decoy or next to an object, and which are
duplicates.
"""

# %%
# Data: train and test images with their part and decoy boxes
# ------------------------------------------------------------
from __future__ import annotations

import pathlib
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from sklearn_protopnet import (
    ProtoPNetClassifier,
    deletion_check,
    evidence_stability,
    locality,
    pointing_game,
    prototype_duplicates,
    prototype_purity,
)
from sklearn_protopnet._synthetic import PART, SHAPES, make_decoy_images

out = pathlib.Path(tempfile.mkdtemp())  # the pictures are written here

SIZE = 40
NAMES = np.array([f"{colour} {shape}" for colour, shape in
                  zip(("red", "green", "blue", "yellow"), SHAPES)])
X, labels, parts, decoys = make_decoy_images(30, size=SIZE, seed=0)
X_test, labels_test, parts_test, decoys_test = make_decoy_images(10, size=SIZE, seed=1000)
y, y_test = NAMES[labels], NAMES[labels_test]
print(f"{len(X)} training and {len(X_test)} test images of {SIZE} px, classes "
      f"{', '.join(NAMES)}")
# chance levels of the part metrics: the share of the image the boxes cover
chance_part, chance_decoys = PART * PART / SIZE**2, 2 * PART * PART / SIZE**2
print(f"a part covers {chance_part:.0%} of an image, its two decoys {chance_decoys:.0%}")

# %%
# The model: a small CNN of the user's, the small-data settings
# -------------------------------------------------------------


def user_cnn(seed: int) -> nn.Module:
    """Three conv-BN-ReLU blocks, two of stride 2 (benchmarks/decoys.py's)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
    )


t0 = time.perf_counter()
clf = ProtoPNetClassifier(
    backbone=user_cnn(0), image_size=SIZE, prototype_dim=64, warm_epochs=2,
    joint_epochs=18, separation_coef=0.4, joint_lr_gamma=1.0, joint_lr_schedule="step",
    lr_backbone=3e-4, random_state=0,
).fit(X, y)
print(f"fitted {clf.n_prototypes_} prototypes in {time.perf_counter() - t0:.0f} s; "
      f"test accuracy {clf.score(X_test, y_test):.2f}")

# %%
# The metrics
# -----------
# Each returns a record of per-image (or per-prototype) arrays; ``summary()``
# gives their means. Stability and deletion draw random noise and boxes, so
# they take a ``random_state``.
stability = evidence_stability(clf, X_test, noise_std=8.0, n_repeats=5, top_k=5,
                               random_state=0)
deletion = deletion_check(clf, X_test, fill="mean", n_random=10, random_state=0)
duplicates = prototype_duplicates(clf)
purity = prototype_purity(clf, X, y, k=6)
pointing = pointing_game(clf, X_test, parts_test)
local = locality(clf, X_test, parts_test)
# the control: the same two metrics with the decoys (two boxes per image) as "parts"
pointing_decoys = pointing_game(clf, X_test, decoys_test)
local_decoys = locality(clf, X_test, decoys_test)

results = {
    "evidence_stability": stability,
    "deletion_check": deletion,
    "prototype_duplicates": duplicates,
    "prototype_purity": purity,
    "pointing_game (part boxes)": pointing,
    "pointing_game (decoy boxes)": pointing_decoys,
    "locality (part boxes)": local,
    "locality (decoy boxes)": local_decoys,
}
for name, result in results.items():
    print(f"\n{name}")
    for key, value in result.summary().items():
        print(f"  {key:40s} {value:8.3f}")

# %%
# What the numbers say
# --------------------
print(f"\nThe top evidence points at the part in {pointing.score:.0%} of the test images "
      f"and at a decoy in {pointing_decoys.score:.0%} (chance: {chance_part:.0%} "
      f"and {chance_decoys:.0%});")
print(f"{local.mean_energy:.0%} of its activation lies on the part, "
      f"{local_decoys.mean_energy:.0%} on the decoys (a flat map: {chance_part:.0%} "
      f"and {chance_decoys:.0%}), and its box "
      f"touches the part in {np.mean(local.box_overlaps):.0%} of the images.")
print(f"Masking the evidence box lowers the prototype's similarity by "
      f"{deletion.summary()['mean_relative_similarity_drop']:.0%} (random boxes of its "
      f"size: {deletion.summary()['mean_relative_random_similarity_drop']:.0%}), more "
      f"than the median random box in {deletion.similarity_win_rate:.0%} of the images.")
print(f"Under noise the top-1 prototype stays in {stability.top1_unchanged_rate:.0%} of "
      f"the copies and its peak moves {stability.mean_displacement_pixels:.1f} px.")
print(f"{len(duplicates.groups)} groups of duplicate prototypes: merging them would remove "
      f"{duplicates.n_redundant} of the {clf.n_prototypes_} (clf.prune merges same-patch "
      f"ones); "
      f"{np.mean(purity.purity < 0.5):.0%} have purity below one half.")

# %%
# The part against its control, as bars: the share of test images whose top
# evidence peaks on the part (or on a decoy), and the share of its activation
# that lies there, each next to what a model that pointed at random would
# score.
fig, ax = plt.subplots(figsize=(7, 3.5))
rows = [("pointing game", pointing.score, pointing_decoys.score),
        ("locality (energy)", local.mean_energy, local_decoys.mean_energy)]
for i, (_name, part_value, decoy_value) in enumerate(rows):
    ax.bar(i - 0.27, part_value, 0.25, color="tab:green", label="part" if i == 0 else None)
    ax.bar(i, decoy_value, 0.25, color="tab:red", label="decoys" if i == 0 else None)
    ax.bar(i + 0.27, chance_part, 0.25, color="tab:grey",
           label="chance (part)" if i == 0 else None)
ax.set_xticks(range(len(rows)), [r[0] for r in rows])
ax.set_ylim(0, 1)
ax.set_ylabel("score")
ax.legend()
fig.tight_layout()

# %%
# The pictures: one scoring sheet and the prototype gallery
# ---------------------------------------------------------
# The first test image's explanation, and where its top evidence points.
explanation = clf.explain(X_test[:1], top_k=3)[0]
explanation.save(out / "scoring_sheet.png")
item = explanation.evidence[0]
x, y_peak = pointing.peak_xy[0, 0]
where = ("the part" if pointing.hits[0, 0] else
         "a decoy" if pointing_decoys.hits[0, 0] else "the background")
print(f"\ntest image 0 ({y_test[0]}, predicted {explanation.predicted}): the top evidence, "
      f"prototype {item.prototype} of class {item.prototype_class}, peaks at pixel "
      f"({x}, {y_peak}) on {where}; part box {tuple(int(v) for v in parts_test[0])}, "
      f"evidence box {item.box}")
# The gallery shows each prototype's patch in its training image. Where does
# its peak cell's centre lie there: on the image's part, on a decoy, or
# elsewhere (and then, does its box still touch an object, an edge seen from
# outside)? The images are fed at their own size: input pixels are original
# pixels.


def holds(box, col, row) -> bool:
    return box[0] <= col < box[2] and box[1] <= row < box[3]


def touches(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


on = {"the part": [], "a decoy": [], "elsewhere, box touching an object": [],
      "elsewhere": []}
for j, (i, (r, c)) in enumerate(zip(clf.prototype_source_index_, clf.prototype_location_)):
    row, col = clf.cell_geometry_.centre(r, c)
    objects = [parts[i], *decoys[i]]
    if holds(parts[i], col, row):
        on["the part"].append(j)
    elif any(holds(box, col, row) for box in decoys[i]):
        on["a decoy"].append(j)
    elif any(touches(clf.prototype_box_[j], box) for box in objects):
        on["elsewhere, box touching an object"].append(j)
    else:
        on["elsewhere"].append(j)
print("prototypes whose patch centre lies on:")
for place, js in on.items():
    print(f"  {place}: {len(js)}" + (f" {js}" if 0 < len(js) <= 10 else ""))
print("duplicate groups:", [g.tolist() for g in duplicates.groups])
clf.prototype_gallery(out / "prototype_gallery.png")


def show(path):
    """Show a PNG at its own pixel size (no resampling of the text)."""
    image = plt.imread(path)
    fig = plt.figure(figsize=(image.shape[1] / 100, image.shape[0] / 100), dpi=100)
    fig.figimage(image)


show(out / "scoring_sheet.png")
show(out / "prototype_gallery.png")
plt.show()
