"""One fit on 2 CPU processes through accelerate against the same fit on 1.

The same fit twice, with the same effective batch: one plain process with
``batch_size=2B``, and ``accelerate launch --multi_gpu --num_processes 2``
of this script with ``accelerator=Accelerator(cpu=True)`` and
``batch_size=B`` (gloo on the CPU). Each fit runs with one intra-op thread
and reports its phases from ``history_`` (SGD epochs, pushes, last layers)
and its wall time inside ``fit``; the launch's start-up (processes, imports,
the process group) is the rest of the command's wall time. The images are
the planted-motif images of ``sklearn_protopnet._synthetic`` (32 px, in
memory). The largest difference between the two models' probabilities on
the training images is printed too: SmallCNN's BatchNorm layers normalise
each process's piece of a batch by its own statistics, so the two fits
differ as fits with different batch sizes do (tests/test_accelerate.py
checks equality on a backbone without BatchNorm). Run from the repository root:

    python benchmarks/accelerate_scaling.py

``--quick`` is a smoke test: 64 images, one epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # measure the checkout this script is in, not an installed copy


def make_classifier(batch_size, quick, **overrides):
    from sklearn_protopnet import ProtoPNetClassifier
    from sklearn_protopnet.backbones import SmallCNN

    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = SmallCNN(width=16)
    return ProtoPNetClassifier(
        backbone=backbone, image_size=32, prototypes_per_class=5, prototype_dim=32,
        warm_epochs=1, joint_epochs=0 if quick else 2, push_start=100,
        batch_size=batch_size, augment=False, prototype_init="patches",
        random_state=0, **overrides)


def data(quick):
    from sklearn_protopnet._synthetic import make_motif_images

    X, y, _ = make_motif_images(32 if quick else 384, size=32)
    return X, y


def worker(args) -> None:
    torch.set_num_threads(1)
    X, y = data(args.quick)
    overrides, rank = {}, 0
    if args.processes > 1:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
        overrides["accelerator"] = accelerator
        rank = accelerator.process_index
    clf = make_classifier(args.batch_size, args.quick, **overrides)
    t0 = time.perf_counter()
    clf.fit(X, y)
    wall = time.perf_counter() - t0
    if rank != 0:
        return
    phases = {"sgd": 0.0, "push": 0.0, "last_layer": 0.0}
    for record in clf.history_:
        stage = record.get("stage")
        key = "sgd" if stage in ("warm", "joint") else stage
        if key in phases:
            phases[key] += record["dur"]
    np.save(args.out + ".proba.npy", clf.predict_proba(X))
    with open(args.out, "w") as f:
        json.dump({"fit": wall, **phases}, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes, batch_size, out, quick) -> float:
    script = [os.path.abspath(__file__), "--worker", "--processes", str(processes),
              "--batch-size", str(batch_size), "--out", out] + (["--quick"] if quick else [])
    if processes == 1:
        cmd = [sys.executable] + script
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port())] + script
    env = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="per process; the one-process fit takes twice as many")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    n = len(data(args.quick)[1])
    print(f"{n} images of 32 px, SmallCNN(width=16), 1 warm-up + "
          f"{0 if args.quick else 2} joint epochs, one push and last layer; "
          f"load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="protopnet-accelerate-") as tmp:
        for processes, batch in ((1, 2 * args.batch_size), (2, args.batch_size)):
            out = os.path.join(tmp, f"p{processes}.json")
            command = run(processes, batch, out, args.quick)
            with open(out) as f:
                rows.append((processes, batch, command, json.load(f),
                             np.load(out + ".proba.npy")))
    print(f"load average after: {os.getloadavg()[0]:.1f}\n")
    print("| processes | batch per process | command wall (s) | fit (s) | SGD epochs (s) | "
          "push (s) | last layer (s) | fit / 1-process fit |")
    print("|---|---|---|---|---|---|---|---|")
    base = rows[0][3]["fit"]
    for processes, batch, command, t, _ in rows:
        print(f"| {processes} | {batch} | {command:.1f} | {t['fit']:.1f} | {t['sgd']:.1f} | "
              f"{t['push']:.2f} | {t['last_layer']:.2f} | {t['fit'] / base:.2f} |")
    diff = np.abs(rows[0][4] - rows[1][4]).max()
    print(f"\nlargest difference of the probabilities on the training images: {diff:.2g} "
          "(SmallCNN's BatchNorm layers train in the joint stage, each process normalising "
          "its piece by its own statistics: two different fits)")


if __name__ == "__main__":
    main()
