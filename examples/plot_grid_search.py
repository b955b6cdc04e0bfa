"""
Choosing the number of prototypes with GridSearchCV
===================================================

``ProtoPNetClassifier`` is a scikit-learn estimator, so its hyperparameters
are tuned like any other's. Here ``prototypes_per_class`` is searched by
cross-validation on the digits; the refitted best model is then scored on
held-out images.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet.backbones import SmallCNN

digits = load_digits()
images = np.uint8(digits.images[:400] * 255 / 16)
X_train, X_test, y_train, y_test = train_test_split(
    images, digits.target[:400], test_size=0.25, stratify=digits.target[:400],
    random_state=0)

# %%
# The search
# ----------
# Two folds and two values keep the example short; each fit trains a fresh
# copy (``clone``) of the estimator, with the backbone module copied too.
# ``n_jobs=2`` would run the fits in two processes.
base = ProtoPNetClassifier(
    backbone=SmallCNN(width=8), image_size=16, prototype_dim=16, warm_epochs=1,
    joint_epochs=3, augment=False, random_state=0,
)
search = GridSearchCV(base, {"prototypes_per_class": [1, 4]}, cv=2)
search.fit(X_train, y_train)
print("best:", search.best_params_, f"cross-validated accuracy {search.best_score_:.3f}")
print(f"test accuracy of the refitted best model: {search.score(X_test, y_test):.3f}")

# %%
# The scores
# ----------
results = search.cv_results_
values = [p["prototypes_per_class"] for p in results["params"]]
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.errorbar(values, results["mean_test_score"], yerr=results["std_test_score"],
            marker="o", capsize=4)
ax.set_xlabel("prototypes_per_class")
ax.set_ylabel("cross-validated accuracy")
ax.set_xticks(values)
ax.set_title("GridSearchCV over prototypes_per_class")
fig.tight_layout()
plt.show()
