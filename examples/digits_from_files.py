"""Fit ProtoPNet on image files, predict, and tune prototypes_per_class.

Writes scikit-learn's digits as PNG files, fits on their paths with a small
CNN, and runs a small grid search. About two minutes on a 2-core CPU:

    python examples/digits_from_files.py
"""

from __future__ import annotations

import tempfile

import numpy as np
from sklearn.model_selection import GridSearchCV, train_test_split

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet._demo import write_digits
from sklearn_protopnet.backbones import SmallCNN


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        paths, labels = write_digits(folder)
        X_train, X_test, y_train, y_test = train_test_split(
            np.array(paths, dtype=object), labels, test_size=0.25, stratify=labels,
            random_state=0,
        )
        clf = ProtoPNetClassifier(
            backbone=SmallCNN(), image_size=32, prototype_dim=64, warm_epochs=2,
            joint_epochs=6, push_start=100, push_interval=0, augment=False, random_state=0,
        )
        search = GridSearchCV(clf, {"prototypes_per_class": [3, 10]}, cv=2)
        search.fit(X_train, y_train)
        print("best:", search.best_params_, f"cv accuracy {search.best_score_:.3f}")
        best = search.best_estimator_
        print(f"test accuracy: {best.score(X_test, y_test):.3f}")
        print("first predictions:", best.predict(X_test[:10]))
        print("logit identity holds:", np.allclose(
            best.decision_function(X_test[:20]),
            best.transform(X_test[:20]) @ best.coef_.T, atol=1e-5))


if __name__ == "__main__":
    main()
