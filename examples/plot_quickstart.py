"""
Quickstart: fit, predict and explain on digits
==============================================

The shortest path to an explained prediction. scikit-learn's bundled 8x8
digits are written as PNG files, one folder per class (the layout your own
images would have), and a ProtoPNet with a small CNN is fitted on the file
paths. Then it predicts held-out images and explains one of them: which
prototypes, learned from training patches, the image looked like and how
much each added to the logit.
"""

# %%
# Images as files, one folder per class
# -------------------------------------
# 600 of the 1,797 digits, upscaled to 16 px and written as grayscale PNGs
# under ``digits/<label>/``. A list of paths is what ``fit`` takes; a numpy
# array of images works too.
import pathlib
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet.backbones import SmallCNN

folder = pathlib.Path(tempfile.mkdtemp()) / "digits"
digits = load_digits()
for i, (image, label) in enumerate(zip(digits.images[:600], digits.target[:600])):
    (folder / str(label)).mkdir(parents=True, exist_ok=True)
    pixels = np.uint8(image * 255 / 16)
    Image.fromarray(pixels).resize((16, 16), Image.Resampling.BICUBIC).save(
        folder / str(label) / f"{i:04d}.png")

paths = sorted(str(p) for p in folder.glob("*/*.png"))
labels = [pathlib.Path(p).parent.name for p in paths]  # the folder names
X_train, X_test, y_train, y_test = train_test_split(
    paths, labels, test_size=0.25, stratify=labels, random_state=0)
print(f"{len(X_train)} training and {len(X_test)} test images, classes "
      f"{sorted(set(labels))}")

# %%
# Fit
# ---
# ``SmallCNN`` suits small images (``backbone="resnet18"`` with ImageNet
# weights suits photographs). Few epochs keep the example short; the
# defaults train longer. ``verbose=1`` would print one line per epoch.
clf = ProtoPNetClassifier(
    backbone=SmallCNN(width=16), image_size=16, prototypes_per_class=3, prototype_dim=32,
    warm_epochs=2, joint_epochs=4, augment=False, random_state=0,
)
clf.fit(X_train, y_train)
print(f"{clf.n_prototypes_} prototypes; test accuracy {clf.score(X_test, y_test):.3f}")

# %%
# Predict
# -------
# The usual scikit-learn methods. ``transform`` gives each prototype's
# similarity to the image; the logits are exactly those similarities times
# the last layer's weights.
print("predicted:", clf.predict(X_test[:8]))
print("true:     ", np.array(y_test[:8]))
similarities = clf.transform(X_test[:8])
print("logits == similarities @ coef_.T:",
      np.allclose(clf.decision_function(X_test[:8]), similarities @ clf.coef_.T))

# %%
# Explain one prediction
# ----------------------
# An explanation lists the evidence for the predicted class: each prototype's
# similarity x weight = contribution, with the box where it fired in the test
# image. ``save`` draws the scoring sheet: the test image, then per class and
# prototype its box on the image ("this"), the prototype's crop and its place
# in its training image ("that"), and the numbers.
explanation = clf.explain(X_test[:1], top_k=3)[0]
print(f"predicted {explanation.predicted}, logit {explanation.logit():.2f}")
for item in explanation.evidence:
    print(f"  prototype {item.prototype} (class {item.prototype_class}): "
          f"{item.similarity:.2f} x {item.weight:.2f} = {item.contribution:.2f}, "
          f"box {item.box}")

sheet_path = folder.parent / "sheet.png"
explanation.save(sheet_path)


def show(path):
    """Show a PNG at its own pixel size (no resampling of the sheet's text)."""
    image = plt.imread(path)
    fig = plt.figure(figsize=(image.shape[1] / 100, image.shape[0] / 100), dpi=100)
    fig.figimage(image)


show(sheet_path)

# %%
# Every prototype, with the training image it comes from
# ------------------------------------------------------
clf.prototype_gallery(folder.parent / "prototypes.png")
show(folder.parent / "prototypes.png")
plt.show()
