"""A fit killed with SIGKILL half-way and resumed, against an uninterrupted fit.

Fits on 600 of scikit-learn's digits written as PNG files (32 px,
SmallCNN(width=8), 2 warm-up + 8 joint epochs, a push after epoch 5 and at the end, augmentation
on). For each of ``--runs`` repetitions, in one run:

1. ``full``: an uninterrupted fit without a checkpoint (in this process);
2. ``with checkpoints``: the same fit with ``checkpoint_dir`` (the cost of
   writing a checkpoint after every step);
3. ``killed``: the same fit in a child process, killed with SIGKILL as soon as
   it reports epoch 6 of 10 (epochs 1-5 and the first push are checkpointed);
4. ``resumed``: the same fit in this process on that checkpoint directory.

It prints the median wall time of each, the ratio resumed / full, and the
largest difference between the resumed and the full model's probabilities on
the training images (0 means identical). Run from the repository root:

    python benchmarks/resume.py --runs 3

``--quick`` is a smoke test of a few seconds: one run on 64 images.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # measure the checkout this script is in, not an installed copy
N_IMAGES = 600
SETTINGS = dict(image_size=32, prototypes_per_class=3, prototype_dim=16, warm_epochs=2,
                joint_epochs=8, push_start=5, push_interval=5, batch_size=64, augment=True,
                random_state=0)
KILL_AT = "joint epoch 6/"  # the line the child prints when epoch 6 of 10 ends

CHILD = """
import sys, numpy as np, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from benchmarks.resume import make_classifier
paths = open(sys.argv[1]).read().split("\\n")
labels = np.load(sys.argv[2])
make_classifier(checkpoint_dir=sys.argv[3], verbose=1).fit(paths, labels)
"""


def make_classifier(**overrides):
    from sklearn_protopnet import ProtoPNetClassifier
    from sklearn_protopnet.backbones import SmallCNN

    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = SmallCNN(width=8)
    return ProtoPNetClassifier(backbone=backbone, **{**SETTINGS, **overrides})


def timed_fit(paths, labels, **overrides):
    t0 = time.perf_counter()
    clf = make_classifier(**overrides).fit(paths, labels)
    return time.perf_counter() - t0, clf


def kill_half_way(paths_file, labels_file, checkpoint_dir, threads) -> float:
    code = textwrap.dedent(CHILD.format(root=ROOT, threads=threads))
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-u", "-c", code, paths_file, labels_file,
                              checkpoint_dir], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    for line in child.stdout:
        if KILL_AT in line:
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    if child.returncode != -signal.SIGKILL:
        raise RuntimeError("the child finished before it was killed")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_images = N_IMAGES
    if args.quick:
        args.runs, n_images = 1, 64

    from sklearn_protopnet._demo import write_digits

    work = tempfile.mkdtemp(prefix="protopnet-resume-")
    paths, labels = write_digits(work)
    paths, labels = paths[:n_images], labels[:n_images]
    paths_file, labels_file = os.path.join(work, "paths.txt"), os.path.join(work, "y.npy")
    with open(paths_file, "w") as f:
        f.write("\n".join(paths))
    np.save(labels_file, labels)

    times = {"full": [], "with checkpoints": [], "killed": [], "resumed": []}
    diffs = []
    for run in range(args.runs):
        t, full = timed_fit(paths, labels)
        times["full"].append(t)
        ck = tempfile.mkdtemp(prefix="ck-", dir=work)
        t, _ = timed_fit(paths, labels, checkpoint_dir=ck)
        times["with checkpoints"].append(t)
        ck = tempfile.mkdtemp(prefix="ck-", dir=work)
        times["killed"].append(kill_half_way(paths_file, labels_file, ck, args.threads))
        t, resumed = timed_fit(paths, labels, checkpoint_dir=ck)
        times["resumed"].append(t)
        diffs.append(float(np.abs(resumed.predict_proba(paths)
                                  - full.predict_proba(paths)).max()))
        print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items())
              + f", max |p_resumed - p_full| = {diffs[-1]:.1e}", flush=True)

    print(f"\n{len(paths)} digit images, {args.runs} runs, torch threads {args.threads}\n")
    print("| fit | median wall time (s) |")
    print("|---|---|")
    for key, values in times.items():
        print(f"| {key} | {statistics.median(values):.1f} |")
    ratios = [r / f for r, f in zip(times["resumed"], times["full"])]
    print(f"\nresumed / full (median of per-run ratios): {statistics.median(ratios):.2f}")
    print(f"largest probability difference, resumed vs full: {max(diffs):.1e}")


if __name__ == "__main__":
    main()
