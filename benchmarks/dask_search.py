"""A small grid search on a 2-worker dask LocalCluster against n_jobs=1.

The same ``GridSearchCV`` (4 candidates x 3 folds = 12 fits, then the refit
of the best) runs three ways, alternating, in one run of this script:

- ``n_jobs=1``, one intra-op thread (the fits one after the other on one core);
- ``n_jobs=1``, two intra-op threads (torch spreads each fit over both cores);
- joblib's dask backend on a LocalCluster of 2 worker processes of one
  thread each (dask's nanny starts them with OMP_NUM_THREADS=1), started
  once, with dask's default start method (spawn), before the timings: its
  start-up, including each worker's first import of torch and the package,
  is reported apart.

The one-thread search and the dask search must give the same cv scores to
the bit (the benchmark checks it); the two-thread search gives the same best
parameters, its float sums in another order (scores within ~1e-5).

Data: 192 PNG files of 32 px, two classes (a bar, horizontal or vertical),
SmallCNN(width=16) at 32 px, 1 warm-up + 2 joint epochs, batch 32. The
machine's load average is printed before and after: the cluster can only
use the cores no one else is using. Run from the repository root (about 10
minutes on 2 cores; ``--quick``: 2 candidates x 2 folds on 48 images, one run):

    python benchmarks/dask_search.py [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # measure the checkout this script is in, not an installed copy

from sklearn_protopnet import ProtoPNetClassifier  # noqa: E402
from sklearn_protopnet.backbones import SmallCNN  # noqa: E402


def write_bars(folder: str, n_per_class: int, side: int = 32) -> tuple[list, np.ndarray]:
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for label in (0, 1):
        for i in range(n_per_class):
            img = rng.integers(0, 60, (side, side)).astype(np.uint8)
            r, c = rng.integers(1, side - 11, size=2)
            if label == 0:
                img[r : r + 3, c : c + 10] = 255
            else:
                img[r : r + 10, c : c + 3] = 255
            path = os.path.join(folder, f"{label}-{i:04d}.png")
            Image.fromarray(img).save(path)
            paths.append(path)
            labels.append(label)
    return paths, np.array(labels)


def estimator(joint_epochs: int) -> ProtoPNetClassifier:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = SmallCNN(width=16)
    return ProtoPNetClassifier(backbone=backbone, image_size=32, prototypes_per_class=3,
                               prototype_dim=16, warm_epochs=1, joint_epochs=joint_epochs,
                               push_start=1 + joint_epochs, batch_size=32, augment=False,
                               random_state=0)


def search(grid, folds, joint_epochs, n_jobs):
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    return GridSearchCV(estimator(joint_epochs), grid, cv=cv, scoring="neg_log_loss",
                        n_jobs=n_jobs, error_score="raise")


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    import joblib
    from dask.distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    grid = {"prototypes_per_class": [2, 4], "lr_prototypes": [1e-3, 1e-2]}
    n_per_class, folds, joint, runs = 96, 3, 2, args.runs
    if args.quick:
        grid, n_per_class, folds, joint, runs = {"lr_prototypes": [1e-3, 1e-2]}, 24, 2, 1, 1
    n_fits = folds * int(np.prod([len(v) for v in grid.values()])) + 1
    paths, labels = write_bars(tempfile.mkdtemp(prefix="protopnet-dask-"), n_per_class)
    print(f"load average before: {load()}; {os.cpu_count()} CPUs")

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    client.run(lambda: __import__("sklearn_protopnet"))
    startup = time.perf_counter() - t0

    def serial(threads):
        torch.set_num_threads(threads)
        return search(grid, folds, joint, 1).fit(paths, labels)

    def on_dask():
        torch.set_num_threads(1)
        with joblib.parallel_backend("dask"):
            return search(grid, folds, joint, -1).fit(paths, labels)

    modes = {"n_jobs=1, 1 thread": lambda: serial(1),
             "n_jobs=1, 2 threads": lambda: serial(2),
             "dask, 2 workers x 1 thread": on_dask}
    times = {name: [] for name in modes}
    found = {}
    for run in range(runs):
        names = list(modes) if run % 2 == 0 else list(modes)[::-1]
        for name in names:
            t = time.perf_counter()
            found[name] = modes[name]()
            times[name].append(time.perf_counter() - t)
    client.close()
    cluster.close()

    one, spread = found["n_jobs=1, 1 thread"], found["dask, 2 workers x 1 thread"]
    for key in one.cv_results_:
        if key.startswith("split") or key in ("mean_test_score", "rank_test_score"):
            np.testing.assert_array_equal(spread.cv_results_[key], one.cv_results_[key])
    two = found["n_jobs=1, 2 threads"]
    same = two.best_params_ == one.best_params_
    gap = np.abs(two.cv_results_["mean_test_score"] - one.cv_results_["mean_test_score"]).max()

    base = statistics.median(times["n_jobs=1, 1 thread"])
    print(f"{len(paths)} images, {n_fits} fits per search, {runs} run(s); cluster start-up "
          f"(2 workers, their first import of torch and the package): {startup:.1f} s\n")
    print("| search | median wall (s) | speed-up over n_jobs=1, 1 thread |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {base / median:.2f} |")
    print(f"\ndask = n_jobs=1 with 1 thread, every cv score to the bit: True; best parameters "
          f"{one.best_params_}; 2 threads: same best parameters {same}, largest mean-score "
          f"difference {gap:.1e}")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
