"""
Your own folder of images, a torchvision backbone and a local weights file
==========================================================================

From a folder of image files, one sub-folder per class, to an explained
prediction and an HTML report: the path a new user takes with their own
data. The backbone is torchvision's ResNet-18, its weights read from a local
``state_dict`` file (as on a machine without internet).

So that the example runs anywhere, it makes both the folder and the weights
file itself: JPEG "photos" of three kinds of objects drawn with Pillow, and a
ResNet-18 state_dict saved from a randomly initialised model. With your own
data, two cells change:

- the first: ``folder = pathlib.Path("my_images")``, your folder, instead of
  drawing one;
- the weights file: ``weights = "resnet18.pth"``, a file saved on a machine
  with internet by
  ``torch.save(torchvision.models.resnet18(weights="DEFAULT").state_dict(), "resnet18.pth")``,
  or ``weights = "DEFAULT"`` to download ImageNet weights once.

For small images (up to about 64 px: digits, icons, tiles) use
``backbone=SmallCNN()`` and no weights instead, as in the
:doc:`quickstart <plot_quickstart>`; :doc:`../choosing` says which to pick.
"""

# %%
# A folder of images, one sub-folder per class
# --------------------------------------------
# ``my_images/<class>/<file>.jpg``: any file Pillow reads works (PNG, JPEG,
# TIFF, ...), of any size and mode; they are resized to ``image_size``, but
# boxes are drawn on the images as they are.
import pathlib
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw

from sklearn_protopnet import ProtoPNetClassifier

root = pathlib.Path(tempfile.mkdtemp())
folder = root / "my_images"
rng = np.random.default_rng(0)
COLOURS = {"disc": (200, 40, 40), "square": (40, 90, 200), "triangle": (230, 180, 20)}


def draw(kind, width, height):
    """A plain, slightly noisy background with one object of ``kind`` on it."""
    background = rng.integers(100, 150, 3)
    noise = rng.normal(0, 8, (height, width, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    side = int(rng.integers(height // 3, height // 2))
    x, y = rng.integers(0, width - side), rng.integers(0, height - side)
    box = [x, y, x + side, y + side]
    if kind == "disc":
        pen.ellipse(box, fill=COLOURS[kind])
    elif kind == "square":
        pen.rectangle(box, fill=COLOURS[kind])
    else:
        pen.polygon([(x, y + side), (x + side, y + side), (x + side // 2, y)],
                    fill=COLOURS[kind])
    return image


for kind in COLOURS:
    (folder / kind).mkdir(parents=True)
    for i in range(16):
        draw(kind, 120, 96).save(folder / kind / f"{kind}_{i:02d}.jpg", quality=90)
print(sorted(p.name for p in folder.iterdir()), "in", folder)

# %%
# Paths and labels from the folder names
# --------------------------------------
# A list of paths and a list of labels is all ``fit`` needs. The command
# line does the same from a folder, with every parameter as an option
# (``protopnet fit --help``; ResNet-18 at 224 px by default):
# ``protopnet fit my_images --weights resnet18.pth --out model.protopnet``.
paths = sorted(str(p) for p in folder.glob("*/*.jpg"))
labels = [pathlib.Path(p).parent.name for p in paths]
test = [i % 4 == 0 for i in range(len(paths))]  # every fourth image held out
X_train = [p for p, t in zip(paths, test) if not t]
y_train = [y for y, t in zip(labels, test) if not t]
X_test = [p for p, t in zip(paths, test) if t]
y_test = [y for y, t in zip(labels, test) if t]

# %%
# A local weights file
# --------------------
# A ``state_dict`` of the whole torchvision model; the classifier head is
# ignored, and the file is read with ``torch.load(weights_only=True)``, so no
# code in it runs. Here it holds random weights, standing in for ImageNet's.
torch.manual_seed(0)
weights = root / "resnet18.pth"
torch.save(torchvision.models.resnet18().state_dict(), weights)

# %%
# Fit
# ---
# ``backbone="resnet18"`` cuts the network at its last feature map (stride
# 32: a 96 px input gives 3 x 3 cells). ``image_size`` is (height, width).
# The settings suit a few dozen images and a backbone that starts from random
# weights: no warm-up (it trains the layers after a frozen backbone, which
# helps pretrained weights), and the small-data separation cost
# (``separation_coef=0.4``). With ImageNet weights keep the default
# ``warm_epochs=5``; ``lr_backbone="auto"`` is 1e-3 for random weights and
# 1e-4 for pretrained ones. ``verbose=1`` prints the progress.
clf = ProtoPNetClassifier(
    backbone="resnet18", weights=str(weights), image_size=96, prototypes_per_class=2,
    prototype_dim=32, warm_epochs=0, joint_epochs=8, separation_coef=0.4, batch_size=8,
    augment=False, random_state=0,
)
clf.fit(X_train, y_train)
print(f"test accuracy {clf.score(X_test, y_test):.2f} on {len(X_test)} images")

# %%
# With random weights standing in for ImageNet's and 36 training images, the
# accuracy is modest: pretrained weights are what let a large backbone learn
# from a few dozen images. The workflow is the same with them.
for path, predicted in zip(X_test[:4], clf.predict(X_test[:4])):
    print(pathlib.Path(path).name, "->", predicted)

# %%
# Explain a prediction
# --------------------
# The scoring sheet of the first test image: its boxes are drawn on the
# 120 x 96 photo as it is, not on the 96 x 96 image the network saw.
explanation = clf.explain(X_test[:1], top_k=2)[0]
print(f"{pathlib.Path(explanation.name).name}: predicted {explanation.predicted}")
for item in explanation.evidence:
    print(f"  prototype {item.prototype} ({item.prototype_class}) contributes "
          f"{item.contribution:.2f}, box {item.box}")
explanation.save(root / "sheet.png")


def show(path):
    """Show a PNG at its own pixel size (no resampling of the text)."""
    image = plt.imread(path)
    fig = plt.figure(figsize=(image.shape[1] / 100, image.shape[0] / 100), dpi=100)
    fig.figimage(image)


show(root / "sheet.png")

# %%
# Read the boxes, not only the numbers. A box on the object says the
# prototype matched a part of it; a box at the image's edge says it matched
# the border, which every image has (the backbone's zero padding) and which
# therefore tells the classes apart only by accident. With random weights
# and 36 images some prototypes end up there; pretrained weights and more
# images make it rarer, and ``clf.prune(X_train, y_train)`` removes
# prototypes whose nearest training patches mostly belong to other classes.

# %%
# A report of many images, and the saved model
# --------------------------------------------
# ``report`` writes one self-contained HTML file: a summary (with ``y``, the
# accuracy and the wrong predictions), the prototype gallery, and every
# image's explanation with links to its prototypes. Open it in a browser.
# ``save`` writes the model without pickle; the command line explains new
# images with it: ``protopnet explain model.protopnet IMAGES --out DIR``.
report = clf.report(X_test, root / "report.html", y=y_test)
clf.save(root / "model.protopnet")
print("report:", report)
clf.prototype_gallery(root / "prototypes.png")
show(root / "prototypes.png")
plt.show()
