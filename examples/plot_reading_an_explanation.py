"""
Reading an explanation, and the prototype gallery
=================================================

What :meth:`~sklearn_protopnet.ProtoPNetClassifier.explain` returns, item by
item: the logit of a class is the sum over prototypes of similarity x weight,
each similarity comes from one place in the image, and each prototype is a
patch of one training image. This example fits a small model on the digits
and takes one explanation apart.
"""

# %%
# A small model on the digits
# ---------------------------
# The digits as an image array this time (``fit`` takes files or arrays).
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet.backbones import SmallCNN

digits = load_digits()
images = np.uint8(digits.images * 255 / 16)  # (n, 8, 8), shown at 8 px
X_train, y_train = images[:450], digits.target[:450]
X_test, y_test = images[450:550], digits.target[450:550]
clf = ProtoPNetClassifier(
    backbone=SmallCNN(width=16), image_size=16, prototypes_per_class=2, prototype_dim=32,
    warm_epochs=2, joint_epochs=4, augment=False, random_state=0,
).fit(X_train, y_train)
print(f"test accuracy {clf.score(X_test, y_test):.3f}")

# %%
# All the terms of one logit
# --------------------------
# With ``top_k=None`` every prototype is listed and the contributions add up
# to the logit exactly (to float rounding). ``classes="all"`` keeps the
# evidence of every class; ``e.evidence`` is the predicted class's.
e = clf.explain(X_test[:1], top_k=None, classes="all")[0]
print(f"true {y_test[0]}, predicted {e.predicted}, probability "
      f"{e.probabilities.max():.2f}")
total = sum(item.contribution for item in e.evidence)
print(f"sum of contributions {total:.6f} == logit {e.logit():.6f}")
for item in e.evidence[:4]:
    print(f"prototype {item.prototype:2d} of class {item.prototype_class}: similarity "
          f"{item.similarity:.3f} x weight {item.weight:+.3f} = {item.contribution:+.3f}")

# %%
# The contributions of the predicted class and of the runner-up, as bars:
# a few prototypes of the class carry the logit, the others' weights are
# near zero (the last layer's L1 penalty).
runner_up = e.runner_up
fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=True)
for ax, label in zip(axes, [e.predicted, runner_up]):
    items = sorted(e.evidence_for(label), key=lambda i: i.prototype)
    colours = ["tab:green" if i.prototype_class == label else "tab:grey" for i in items]
    ax.bar([i.prototype for i in items], [i.contribution for i in items], color=colours)
    ax.set_title(f"class {label}: logit {e.logit(label):.2f}")
    ax.set_xlabel("prototype (green: of this class)")
axes[0].set_ylabel("similarity x weight")
fig.tight_layout()

# %%
# "This": where the top prototype fired
# -------------------------------------
# ``activation_map`` is the prototype's similarity map upsampled to the image
# as it was given (8 x 8 here); ``box`` is drawn around the peak cell
# (``peak``), whose similarity is the prototype's score.
top = e.evidence[0]
x0, y0, x1, y1 = top.box
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
axes[0].imshow(X_test[0], cmap="gray")
axes[0].set_title("test image")
axes[1].imshow(top.activation_map, cmap="viridis")
axes[1].set_title(f"similarity map of prototype {top.prototype}")
axes[2].imshow(X_test[0], cmap="gray")
axes[2].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                edgecolor="yellow", linewidth=2))
axes[2].plot(top.peak[1], top.peak[0], "r+", markersize=12)
axes[2].set_title(f"box {top.box}")
for ax in axes:
    ax.axis("off")
fig.tight_layout()

# %%
# "That": the training patch the prototype is
# -------------------------------------------
# After the last push every prototype is exactly one latent patch of one
# training image of its class: ``prototype_source_index_`` says which image,
# ``prototype_box_`` where in it.
j = top.prototype
source = clf.prototype_source_index_[j]
x0, y0, x1, y1 = clf.prototype_box_[j]
fig, ax = plt.subplots(figsize=(3, 3))
ax.imshow(X_train[source], cmap="gray")
ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                           edgecolor="yellow", linewidth=2))
ax.set_title(f"prototype {j}: training image {source}")
ax.axis("off")

# %%
# The scoring sheet and the gallery
# ---------------------------------
# The same in one picture, drawn with Pillow: ``e.save(path)`` writes the
# scoring sheet (in a notebook, ``e`` shows it), and
# ``clf.prototype_gallery(path)`` every prototype by class with its source.
# ``clf.report(X, "report.html")`` puts the gallery and the explanations of
# many images in one HTML file.
import tempfile  # noqa: E402

folder = tempfile.mkdtemp()
clf.explain(X_test[:1], top_k=3)[0].save(f"{folder}/sheet.png")
clf.prototype_gallery(f"{folder}/gallery.png")


def show(path):
    """Show a PNG at its own pixel size (no resampling of the text)."""
    image = plt.imread(path)
    fig = plt.figure(figsize=(image.shape[1] / 100, image.shape[0] / 100), dpi=100)
    fig.figimage(image)


show(f"{folder}/sheet.png")
show(f"{folder}/gallery.png")
plt.show()
