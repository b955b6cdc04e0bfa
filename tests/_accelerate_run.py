"""The fit of tests/test_accelerate.py, run on every process of a launch.

    accelerate launch --multi_gpu --num_processes 2 tests/_accelerate_run.py OUT

Each process fits the same small classifier on the same images with
``accelerator=Accelerator(cpu=True)``, once for each of :data:`FITS`, and
writes what it fitted to ``OUT/<fit>.rank<r>.npz``; ``--processes 0`` fits
without an accelerator (the one-process reference, with the same effective
batch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

torch.set_num_threads(1)  # the machine's cores are shared; one thread per process
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sklearn_protopnet.backbones import SmallCNN  # noqa: E402
from tests.conftest import make_bar_images, tiny_classifier  # noqa: E402

#: per-process batch; the one-process reference takes BATCH x processes
BATCH = 8


def plain_backbone():
    """Convolutions and ReLUs, no BatchNorm: a training BatchNorm normalises
    each process's piece of the batch by its own statistics, which one
    process with the whole batch cannot reproduce (scaling guide)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        )


def data():
    """36 bar images of 16 px, the classes mixed (so that each process's block
    of the push holds both): 2 global batches of 16 and a last one of 4
    (pieces of 2 on 2 processes)."""
    X, y = make_bar_images(18)
    order = np.random.default_rng(0).permutation(len(y))
    return X[order], y[order]


#: the fits of a run: name -> settings over :func:`classifier`'s
FITS = {
    # warm-up, joint and two pushes, every part trained
    "plain": {},
    # SmallCNN's BatchNorm layers: calibrated before the first epoch (on the
    # effective batch) and frozen during warm-up
    "batchnorm_frozen": {"backbone": "small", "warm_epochs": 2, "joint_epochs": 0},
    # ... and trained in the joint stage: each process normalises its piece
    # by its own statistics, so only the ranks' agreement is checked
    "batchnorm_trained": {"backbone": "small"},
}


def classifier(batch_size, backbone="plain", **overrides):
    if backbone == "plain":
        backbone = plain_backbone()
    else:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            backbone = SmallCNN(width=8)
    params = dict(backbone=backbone, batch_size=batch_size, warm_epochs=1,
                  joint_epochs=2, push_start=2, push_interval=10,
                  prototype_init="patches", last_layer_l2=1e-2)
    return tiny_classifier(**(params | overrides))


def fitted_arrays(model, X) -> dict:
    out = {f"state.{k}": v.numpy() for k, v in model.module_.state_dict().items()}
    out["source_index"] = model.prototype_source_index_
    out["location"] = model.prototype_location_
    out["proba"] = model.predict_proba(X)
    history = [{k: v for k, v in r.items() if k not in ("dur", "features_dur")}
               for r in model.history_]
    out["history"] = np.array(json.dumps(history))
    return out


def _break(what):
    """Disable one part of the data-parallel fit, to see the test catch it:
    "push_gather" (each process keeps the nearest patches of its own block),
    "gradients" (each process steps on its own piece's gradient)."""
    if what == "push_gather":
        from sklearn_protopnet import _push

        _push.nearest_over_processes = lambda processes, *found: found
    elif what == "gradients":
        from sklearn_protopnet._accelerate import GradientAverage

        GradientAverage.on_grad_computed = lambda self, *a, **k: None
    elif what:
        raise ValueError(what)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--processes", type=int, default=2,
                        help="0: no accelerator, batch BATCH x 2 (the reference)")
    args = parser.parse_args(argv)
    X, y = data()
    _break(os.environ.get("PROTOPNET_TEST_BREAK"))
    fits = FITS | {"plain_checkpointed": {"checkpoint_dir": os.path.join(args.out, "ckpt")}}
    for name, settings in fits.items():
        if args.processes == 0:
            model = classifier(BATCH * 2, **settings).fit(X, y)
            rank = "reference"
        else:
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=True)
            assert accelerator.num_processes == args.processes, accelerator.num_processes
            model = classifier(BATCH, accelerator=accelerator, **settings).fit(X, y)
            rank = accelerator.process_index
        np.savez(os.path.join(args.out, f"{name}.rank{rank}.npz"), **fitted_arrays(model, X))


if __name__ == "__main__":
    main()
