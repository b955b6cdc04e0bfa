"""
The prototype similarities as features in a pipeline
====================================================

``transform(X)`` returns each prototype's similarity to each image, an
(n, m) matrix, and ``get_feature_names_out`` names its columns, so the
classifier also works as a feature step: here a logistic regression learns on
the similarities in a scikit-learn ``Pipeline``.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet.backbones import SmallCNN

digits = load_digits()
images = np.uint8(digits.images * 255 / 16)
X_train, y_train = images[:450], digits.target[:450]
X_test, y_test = images[450:650], digits.target[450:650]

# %%
# The pipeline
# ------------
# ``fit`` trains the ProtoPNet, then the logistic regression on its
# ``transform``. The ProtoPNet itself stays a classifier: its own accuracy
# comes from its last layer.
pipe = make_pipeline(
    ProtoPNetClassifier(backbone=SmallCNN(width=16), image_size=16, prototypes_per_class=2,
                        prototype_dim=32, warm_epochs=2, joint_epochs=4, augment=False,
                        random_state=0),
    LogisticRegression(max_iter=2000),
)
pipe.fit(X_train, y_train)
protopnet = pipe[0]
print(f"ProtoPNet alone: {protopnet.score(X_test, y_test):.3f}; "
      f"logistic regression on its similarities: {pipe.score(X_test, y_test):.3f}")

# %%
# Named columns
# -------------
# ``set_output(transform="pandas")`` gives a DataFrame whose columns are the
# prototypes, named after their classes.
protopnet.set_output(transform="pandas")
features = protopnet.transform(X_test[:5])
print(features.iloc[:, :6].round(2))
protopnet.set_output(transform="default")

# %%
# The features, image by image
# ----------------------------
# Test images sorted by class (rows) against prototypes grouped by class
# (columns): each image is most similar to the prototypes of its own class,
# the block diagonal.
order = np.argsort(y_test, kind="stable")
similarities = protopnet.transform(X_test[order])
fig, ax = plt.subplots(figsize=(7, 5))
shown = ax.imshow(similarities, aspect="auto", cmap="magma", interpolation="nearest")
ax.set_xlabel("prototype (grouped by class 0-9)")
ax.set_ylabel("test image (sorted by class 0-9)")
fig.colorbar(shown, label="similarity")
fig.tight_layout()
plt.show()
