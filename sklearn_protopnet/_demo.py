"""The demo: scikit-learn's bundled digits, written as PNG files and fitted by path."""

from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image

DEMO_IMAGE_SIZE = 32


def write_digits(out_dir: str, size: int = DEMO_IMAGE_SIZE) -> tuple[list[str], np.ndarray]:
    """Write scikit-learn's 1,797 8x8 digits as ``size`` x ``size`` grayscale PNGs.

    Files go to ``out_dir/digits/<label>/<index>.png``; returns (paths, labels).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = os.path.join(out_dir, "digits", str(label))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:04d}.png")
        pixels = np.rint(image * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BICUBIC).save(path)
        paths.append(path)
    return paths, digits.target.copy()


def demo_classifier(random_state: int = 0, verbose: int = 1):
    """The demo's estimator: a small CNN on 32 px images, a few minutes on a CPU."""
    import torch

    from ._classifier import ProtoPNetClassifier
    from .backbones import SmallCNN

    # A module backbone keeps the weights it is given: seed its construction
    # (without touching the caller's RNG) so that the demo is reproducible.
    with torch.random.fork_rng():
        torch.manual_seed(random_state)
        backbone = SmallCNN(width=32)
    return ProtoPNetClassifier(
        backbone=backbone,
        image_size=DEMO_IMAGE_SIZE,
        prototypes_per_class=10,
        prototype_dim=64,
        warm_epochs=3,
        joint_epochs=12,
        push_start=8,
        push_interval=8,
        batch_size=32,
        augment=False,
        random_state=random_state,
        verbose=verbose,
    )


def run_demo(out_dir: str, verbose: int = 1) -> dict:
    """Fit on the digits' file paths, report test accuracy, save the model and pictures."""
    from sklearn.model_selection import train_test_split

    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    paths, labels = write_digits(out_dir)
    print(f"wrote {len(paths)} digit images as PNG files under {os.path.join(out_dir, 'digits')}")
    X_train, X_test, y_train, y_test = train_test_split(
        np.array(paths, dtype=object), labels, test_size=0.25, stratify=labels, random_state=0
    )
    clf = demo_classifier(verbose=verbose)
    clf.fit(X_train, y_train)
    accuracy = clf.score(X_test, y_test)
    model_path = os.path.join(out_dir, "model.protopnet")
    clf.save(model_path)
    print(f"test accuracy: {accuracy:.3f} on {len(X_test)} held-out images")
    print(f"model saved to {model_path}")
    pictures = write_explanations(clf, X_test[:N_SHEETS], out_dir)
    elapsed = time.perf_counter() - t0
    print(f"prototype gallery: {pictures['gallery']}")
    print(f"scoring sheets of {len(pictures['sheets'])} test images: "
          f"{os.path.dirname(pictures['sheets'][0])}")
    print(f"HTML report: {pictures['report']}")
    print(f"demo finished in {elapsed:.0f}s")
    return {"accuracy": accuracy, "model_path": model_path, "classifier": clf,
            "X_test": X_test, "y_test": y_test} | pictures


N_SHEETS = 4


def write_explanations(clf, X, out_dir: str, top_k: int = 5) -> dict:
    """Write the prototype gallery, a scoring sheet per image and the HTML report."""
    from ._report import write_sheets_and_report

    gallery = os.path.join(out_dir, "prototypes.png")
    clf.prototype_gallery(gallery)
    report = os.path.join(out_dir, "report.html")
    sheets = write_sheets_and_report(clf, clf.explain(X, top_k=top_k),
                                     os.path.join(out_dir, "explanations"), report)
    return {"gallery": gallery, "sheets": sheets, "report": report}
