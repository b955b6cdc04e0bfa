"""
Saving, loading and pruning a model
===================================

A fitted model is saved to one file without pickle
(:meth:`~sklearn_protopnet.ProtoPNetClassifier.save`), loaded back without
running any code from the file, and pruned: duplicate prototypes are merged
and prototypes whose nearest training patches mostly belong to other classes
are removed, then the last layer is solved again.
"""

# %%
# Fit a model with more prototypes than it needs
# ----------------------------------------------
import pathlib
import tempfile

import joblib
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from sklearn_protopnet import ProtoPNetClassifier, prototype_duplicates
from sklearn_protopnet.backbones import SmallCNN

digits = load_digits()
images = np.uint8(digits.images * 255 / 16)
X_train, y_train = images[:400], digits.target[:400]
X_test, y_test = images[400:600], digits.target[400:600]
clf = ProtoPNetClassifier(
    backbone=SmallCNN(width=16), image_size=16, prototypes_per_class=5, prototype_dim=32,
    warm_epochs=2, joint_epochs=4, augment=False, random_state=0,
).fit(X_train, y_train)
print(f"{clf.n_prototypes_} prototypes, test accuracy {clf.score(X_test, y_test):.3f}")

# %%
# Save and load
# -------------
# The model file is a zip of JSON and tensors read with
# ``torch.load(weights_only=True)``: safe to open even when it comes from
# someone else, unlike a pickle. joblib works as well, for files you trust.
folder = pathlib.Path(tempfile.mkdtemp())
clf.save(folder / "digits.protopnet")
loaded = ProtoPNetClassifier.load(folder / "digits.protopnet")
print("same probabilities after load:",
      np.array_equal(loaded.predict_proba(X_test), clf.predict_proba(X_test)))
print(f"model file: {(folder / 'digits.protopnet').stat().st_size / 1e3:.0f} kB")

joblib.dump(clf, folder / "digits.joblib")
print("same after joblib:",
      np.array_equal(joblib.load(folder / "digits.joblib").predict(X_test),
                     clf.predict(X_test)))

# %%
# Pruning
# -------
# ``prune`` merges prototypes projected onto the same training patch (no
# logit changes) and removes those with fewer than ``min_own`` of their ``k``
# nearest training patches in their own class, then solves the last layer
# again on the training images. The loaded copy is pruned; ``clf`` is kept.
before = prototype_duplicates(loaded)
print(f"before: {loaded.n_prototypes_} prototypes, {before.n_redundant} redundant")
loaded.prune(X_train, y_train, k=6, min_own=3)
record = loaded.history_[-1]
print(f"after: {loaded.n_prototypes_} prototypes ({len(record['merged_duplicates'])} merged, "
      f"{len(record['removed_impure'])} removed as impure); test accuracy "
      f"{loaded.score(X_test, y_test):.3f}")

# %%
# Prototypes per class, before and after
# --------------------------------------
classes = clf.classes_
counts_before = [np.sum(clf.prototype_class_ == c) for c in classes]
counts_after = [np.sum(loaded.prototype_class_ == c) for c in classes]
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(np.arange(len(classes)) - 0.2, counts_before, width=0.4, label="fitted")
ax.bar(np.arange(len(classes)) + 0.2, counts_after, width=0.4, label="pruned")
ax.set_xticks(np.arange(len(classes)), classes)
ax.set_xlabel("class")
ax.set_ylabel("prototypes")
ax.legend()
fig.tight_layout()

# %%
# The pruned model's gallery
# --------------------------
loaded.prototype_gallery(folder / "pruned.png")
image = plt.imread(folder / "pruned.png")
fig = plt.figure(figsize=(image.shape[1] / 100, image.shape[0] / 100), dpi=100)
fig.figimage(image)
plt.show()
