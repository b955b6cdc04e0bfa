"""Two-class real data: do every class's prototypes stay discriminative?

With two classes one class's evidence is enough to tell them apart, and the
other class's prototypes can drift onto patches both classes have (the
user guide's ``separation_coef="auto"``). This script fits ProtoPNet on
two-class subsets of real images given as PNG files, for each separation
weight asked for, and reports per fit:

- the test accuracy;
- the drifted prototypes: those whose similarity separates their class from
  the other with a ROC AUC below 0.9 on the training images (the recipe of
  docs/explanations.md);
- the mean ROC AUC of the prototype that is each test image's top evidence.

Pairs: digits 3 / 8 and 1 / 7 (scikit-learn's digits at 32 px, 75/25
split), Fashion-MNIST T-shirt / shirt and pullover / coat (the classes' share
of a 6,000 / 2,000 subset, 28 px; Debian package ``dataset-fashion-mnist``).
The model: the BatchNorm CNN of ``benchmarks/accuracy.py`` (``bn-cnn``), the
defaults apart from backbone, image size, 2 + 10 epochs and no augmentation.

    python benchmarks/two_classes.py --separation 0.08 0.4 0.8 --seeds 3
    python benchmarks/two_classes.py --pairs digits-3-8 --separation auto
    python benchmarks/two_classes.py --quick          # a smoke test: seconds

``auto`` is the estimator's default (half of ``cluster_coef`` for two
classes).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from accuracy import FASHION, bn_cnn, fashion  # noqa: E402  (the same data and CNN)

from sklearn_protopnet import ProtoPNetClassifier  # noqa: E402
from sklearn_protopnet._demo import write_digits  # noqa: E402

#: pair name -> (data set, the two labels)
PAIRS = {
    "digits-3-8": ("digits", (3, 8)),
    "digits-1-7": ("digits", (1, 7)),
    "fashion-tshirt-shirt": ("fashion", (0, 6)),
    "fashion-pullover-coat": ("fashion", (2, 4)),
}
#: a prototype is drifted when its class ROC AUC on the training images is below this
DRIFT_AUC = 0.9


def pair_data(out: str, name: str, quick: bool):
    """(X_train, y_train, X_test, y_test, image size) of one pair, as file paths."""
    source, labels = PAIRS[name]
    if source == "digits":
        paths, y = write_digits(out)
        paths, y = np.asarray(paths), np.asarray(y)
        keep = np.isin(y, labels)
        Xtr, Xte, ytr, yte = train_test_split(paths[keep], y[keep], test_size=0.25,
                                              stratify=y[keep], random_state=0)
        size = 32
    else:
        (Xtr, ytr), (Xte, yte) = fashion(out, 6000, 2000)
        Xtr, ytr, Xte, yte = map(np.asarray, (Xtr, ytr, Xte, yte))
        train, test = np.isin(ytr, labels), np.isin(yte, labels)
        Xtr, ytr, Xte, yte = Xtr[train], ytr[train], Xte[test], yte[test]
        size = 28
    if quick:
        Xtr, ytr = Xtr[::6], ytr[::6]
    return list(Xtr), ytr, list(Xte), yte, size


def fit_one(Xtr, ytr, Xte, yte, size, separation, seed, epochs):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = bn_cnn()
    clf = ProtoPNetClassifier(backbone=backbone, image_size=size, warm_epochs=epochs[0],
                              joint_epochs=epochs[1], augment=False, random_state=seed,
                              separation_coef=separation)
    t0 = time.perf_counter()
    clf.fit(Xtr, ytr)
    dur = time.perf_counter() - t0
    similarity = clf.transform(Xtr)
    classes = np.asarray(clf.prototype_class_)
    auc = np.array([roc_auc_score(np.asarray(ytr) == c, similarity[:, j])
                    for j, c in enumerate(classes)])
    top = [e.evidence[0].prototype for e in clf.explain(Xte, top_k=1)]
    return dict(acc=clf.score(Xte, yte), drifted=int((auc < DRIFT_AUC).sum()), m=len(auc),
                top_auc=float(auc[top].mean()), dur=dur,
                used=clf.auto_values_.get("separation_coef", separation))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(),
                                                      "protopnet-two-classes"))
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--separation", nargs="+", default=["0.08", "auto"],
                        help='separation_coef values: numbers or "auto"')
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: digits 3 / 8, a sixth of its images, 1 + 1 epochs")
    args = parser.parse_args()
    epochs = (2, 10)
    if args.quick:
        args.pairs, args.separation, args.seeds, epochs = ["digits-3-8"], ["auto"], 1, (1, 1)
    if any(PAIRS[p][0] == "fashion" for p in args.pairs) and not os.path.isdir(FASHION):
        parser.error(f"Fashion-MNIST is not in {FASHION}: apt-get install "
                     "dataset-fashion-mnist, or pass --pairs digits-3-8 digits-1-7")
    separations = [s if s == "auto" else float(s) for s in args.separation]
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    print("| pair | separation_coef | seed | test accuracy | drifted prototypes | "
          "ROC AUC of the top evidence | fit time |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for pair in args.pairs:
        Xtr, ytr, Xte, yte, size = pair_data(args.out, pair, args.quick)
        for separation in separations:
            for seed in range(args.seeds):
                r = fit_one(Xtr, ytr, Xte, yte, size, separation, seed, epochs)
                rows.append(dict(r, pair=pair, separation=separation))
                print(f"| {pair} | {separation} ({r['used']:g}) | {seed} | {r['acc']:.3f} | "
                      f"{r['drifted']} of {r['m']} | {r['top_auc']:.3f} | {r['dur']:.0f} s |",
                      flush=True)
    print("\n| pair | separation_coef | test accuracy (mean ± sd) | drifted prototypes | "
          "ROC AUC of the top evidence |")
    print("|---|---|---|---|---|")
    for pair in args.pairs:
        for separation in separations:
            sel = [r for r in rows if r["pair"] == pair and r["separation"] == separation]
            acc = np.array([r["acc"] for r in sel])
            print(f"| {pair} | {separation} | {acc.mean():.3f} ± {acc.std():.3f} | "
                  f"{sum(r['drifted'] for r in sel)} of {sum(r['m'] for r in sel)} | "
                  f"{np.mean([r['top_auc'] for r in sel]):.3f} |")


if __name__ == "__main__":
    main()
