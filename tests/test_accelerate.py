"""Data-parallel fits through accelerate (``accelerator=``, :mod:`._accelerate`).

The end-to-end test launches ``tests/_accelerate_run.py`` on 2 CPU processes
(gloo) and compares what every process fitted with one process given the
same effective batch. The other tests need no launch: the division of the
images and batches, the checkpoint that only rank 0 writes, and a fit with
an accelerator of one process, which is the plain fit to the bit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet._accelerate import Processes, ShardedBatches, global_batches
from sklearn_protopnet._checkpoint import Checkpoint
from sklearn_protopnet._distributed import EXTRA_INSTALL

from . import _accelerate_run
from .conftest import make_bar_images, tiny_classifier

try:
    import accelerate
except ImportError:  # the [distributed] extra is not installed
    accelerate = None

needs_accelerate = pytest.mark.skipif(
    accelerate is None, reason=f"accelerate is not installed ({EXTRA_INSTALL})")

RUN_SCRIPT = os.path.join(os.path.dirname(__file__), "_accelerate_run.py")


class _Rank(Processes):
    """Rank ``rank`` of ``n`` processes, without a process group: rank 0's
    broadcast is every rank's, as the real one is."""

    def broadcast(self, tensor, src=0):
        return tensor


# ----------------------------------------------------------------------------
# the division of the work
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("n_items", [0, 1, 5, 36, 37])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_the_blocks_cover_the_images_once_in_order(n, n_items):
    blocks = [_Rank(n, r).block(n_items) for r in range(n)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n_items
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    sizes = [stop - start for start, stop in blocks]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n_train", [32, 36, 37, 34, 33])
def test_the_pieces_of_a_step_are_the_one_process_batch(n_train):
    """Every step's pieces, over the ranks, are the batch of batch_size x N
    that one process with the same seed draws, in its order; a last global
    batch too small for two images a process is left out, on every rank."""
    batch, n = 8, 2

    def epoch(processes, b):  # in a DataLoader, which draws a seed of its own first
        torch.manual_seed(3)
        loader = torch.utils.data.DataLoader(
            range(n_train), batch_sampler=ShardedBatches(n_train, b, processes))
        return [b.tolist() for b in loader]

    one = epoch(_Rank(1, 0), batch * n)
    ranks = [epoch(_Rank(n, r), batch) for r in range(n)]
    assert len({len(steps) for steps in ranks}) == 1
    assert len(ranks[0]) == global_batches(n_train, batch, n)
    assert [sum(pieces, []) for pieces in zip(*ranks)] == one[: len(ranks[0])]
    # 32 = 2 x 16; 33, 34, 35: a last batch of 1-3 images (fewer than 2 a
    # process) is left out; 36: a last batch of 4, pieces of 2
    assert len(ranks[0]) == {32: 2, 33: 2, 34: 2, 36: 3, 37: 3}[n_train]
    # one process draws what torch's RandomSampler draws, batch by batch
    torch.manual_seed(3)
    loader = torch.utils.data.DataLoader(range(n_train), batch_size=batch * n,
                                         shuffle=True, drop_last=n_train % 16 == 1)
    torch.manual_seed(3)
    assert [b.tolist() for b in loader] == one


def test_global_batches_for_one_process_is_the_drop_last_rule():
    for n_train in range(1, 50):
        drop_last = n_train % 8 == 1
        expected = n_train // 8 if drop_last else -(-n_train // 8)
        assert global_batches(n_train, 8, 1) == expected


def test_only_a_writing_checkpoint_writes(tmp_path):
    quiet = Checkpoint(tmp_path, {"format": 0}, write=False)
    quiet.seed = 1
    quiet.save({"step": 0})
    assert not os.listdir(tmp_path)
    writer = Checkpoint(tmp_path, {"format": 0})
    writer.seed = 1
    writer.save({"step": 0})
    assert os.path.exists(writer.path)
    quiet.remove()
    assert os.path.exists(writer.path)
    writer.remove()
    assert not os.path.exists(writer.path)


def test_accelerator_auto_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate fails
    X, y = make_bar_images(4)
    with pytest.raises(ImportError, match="distributed extra"):
        tiny_classifier(accelerator="auto").fit(X, y)


def test_an_accelerator_of_one_process_in_a_launch_of_two_is_refused(monkeypatch):
    """accelerate's Accelerator() on a machine without CUDA ignores a torchrun
    launch (a world of one on every process): each would train alone."""
    from types import SimpleNamespace

    monkeypatch.setenv("WORLD_SIZE", "2")
    alone = SimpleNamespace(num_processes=1, process_index=0, device="cpu")
    with pytest.raises(RuntimeError, match=r"one of 2 \(WORLD_SIZE\).*cpu=True"):
        Processes.of(alone)
    X, y = make_bar_images(4)
    with pytest.raises(RuntimeError, match="WORLD_SIZE"):
        tiny_classifier(accelerator=alone).fit(X, y)


def test_an_accelerator_is_checked():
    X, y = make_bar_images(4)
    with pytest.raises(ValueError, match="accelerator"):
        tiny_classifier(accelerator=3).fit(X, y)


# ----------------------------------------------------------------------------
# one process through the data-parallel code
# ----------------------------------------------------------------------------
@needs_accelerate
@pytest.mark.slow
def test_one_process_with_an_accelerator_is_the_plain_fit_bit_for_bit(tmp_path):
    """The sharded batch sampler, the averaging callbacks, the push over
    blocks and the gathers are all on this path, with one process: every
    parameter, prototype source, probability and history value is equal,
    with augmentation, a validation split and class weights drawing from
    the random streams."""
    X, y = make_bar_images(14)
    params = dict(augment=True, validation_fraction=0.25, class_weight="balanced",
                  batch_size=8)
    plain = tiny_classifier(**params).fit(X, y)
    one = tiny_classifier(**params, accelerator=accelerate.Accelerator(cpu=True)).fit(X, y)
    auto = tiny_classifier(**params, accelerator="auto").fit(X, y)
    for model in (one, auto):
        a, b = plain.module_.state_dict(), model.module_.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        np.testing.assert_array_equal(plain.prototype_source_index_,
                                      model.prototype_source_index_)
        np.testing.assert_array_equal(plain.predict_proba(X), model.predict_proba(X))
        assert _without_times(plain.history_) == _without_times(model.history_)
    # the accelerator is how the fit ran, not part of the model file
    path = tmp_path / "model.protopnet"
    one.save(path)
    loaded = ProtoPNetClassifier.load(path)
    assert loaded.accelerator is None
    np.testing.assert_array_equal(loaded.predict_proba(X), one.predict_proba(X))


def _without_times(history):
    return [{k: v for k, v in r.items() if k not in ("dur", "features_dur")}
            for r in history]


# ----------------------------------------------------------------------------
# two processes
# ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out, processes=2, env=None) -> None:
    """``accelerate launch`` of the run script on ``processes`` CPU processes.

    ``--multi_gpu`` is what starts several processes (through torchrun);
    ``--cpu`` with ``--num_processes 2`` starts one process in accelerate
    1.x unless an MPI hostfile is given. On a machine without CUDA the
    script's ``Accelerator(cpu=True)`` joins a gloo process group.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), RUN_SCRIPT, str(out),
           "--processes", str(processes)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""} | (env or {})
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


@needs_accelerate
@pytest.mark.slow
def test_two_processes_give_the_one_process_model(tmp_path):
    """2 processes x batch 8 against 1 process x batch 16, same seed, same
    images (36: two full global batches and one of 4), in three fits
    (``FITS`` of the run script): warm-up, joint, a push after epoch 2 and
    the final one with a backbone without BatchNorm; SmallCNN's BatchNorm
    calibrated and frozen (warm-up only); and SmallCNN trained in the joint
    stage, where each process normalises by its own piece's statistics (as
    under DDP without SyncBatchNorm), checked for the ranks' agreement only.

    What must be equal exactly: every process's fitted model and history are
    the same bits (the ranks agree), and the prototypes' source images and
    cells are the reference's (every prototype the same real patch).

    What may differ, and by how much: the processes sum the gradient of
    their 8 images each and then the two sums, one process sums 16 images at
    once; float32 addition in another order rounds differently, by a unit in
    the last place (about 1.2e-7 relative). Seven Adam steps carry those
    differences into the weights: measured here at most 1.3e-7 absolute
    (weights up to 2.1), so 1e-6 (about 4 units in the last place of the
    largest weight) for every SGD-trained tensor and the prototypes. The
    last layer is solved to a KKT residual of 1e-6 (``last_layer_tol``) on
    features that differ by those amounts; with ``last_layer_l2=1e-2`` its
    objective is at least 2e-2 strongly convex, so each solution lies within
    about 1e-6 / 2e-2 = 5e-5 of its minimiser: 1e-4 for the two solutions'
    difference (measured: 4e-6), and 1e-5 for the probabilities (measured
    4e-6; a probability moves by at most a quarter of a logit's change).

    The same comparison fails with the push's gather skipped (each process
    keeps the nearest patches of its own block: other sources, prototypes
    0.05 apart, ranks disagreeing) or with the gradients not averaged
    (weights 1e-2 apart, ranks disagreeing); ``PROTOPNET_TEST_BREAK`` of the
    run script does either, for checking that by hand.
    """
    launch(tmp_path)
    X, y = _accelerate_run.data()
    for name, settings in _accelerate_run.FITS.items():
        ranks = [dict(np.load(tmp_path / f"{name}.rank{r}.npz")) for r in (0, 1)]
        assert ranks[0].keys() == ranks[1].keys()
        for key in ranks[0]:
            np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=f"{name} {key}")
        if name == "batchnorm_trained":
            continue  # per-process batch statistics: not the one-process model
        reference = _accelerate_run.fitted_arrays(
            _accelerate_run.classifier(_accelerate_run.BATCH * 2, **settings).fit(X, y), X)
        _check_same_model(ranks[0], reference)
    # checkpoints after every step (rank 0 writing, every rank's random
    # states in them) change nothing, and the file is gone at the end
    for r in (0, 1):
        checkpointed = np.load(tmp_path / f"plain_checkpointed.rank{r}.npz")
        plain = np.load(tmp_path / f"plain.rank{r}.npz")
        for key in plain.files:
            np.testing.assert_array_equal(checkpointed[key], plain[key], err_msg=key)
    assert os.listdir(tmp_path / "ckpt") == []


def _check_same_model(got, reference):
    assert got.keys() == reference.keys()
    np.testing.assert_array_equal(got["source_index"], reference["source_index"])
    np.testing.assert_array_equal(got["location"], reference["location"])
    for key in got:
        if key.startswith("state.") and key != "state.last_layer.weight":
            np.testing.assert_allclose(got[key], reference[key], rtol=0, atol=1e-6,
                                       err_msg=key)
    np.testing.assert_allclose(got["state.last_layer.weight"],
                               reference["state.last_layer.weight"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["proba"], reference["proba"], rtol=0, atol=1e-5)
    # the same steps, and the epochs' metrics are the global batches' means
    history, ref_history = (json.loads(str(h["history"])) for h in (got, reference))
    assert [(r["stage"], r["epoch"]) for r in history] == \
        [(r["stage"], r["epoch"]) for r in ref_history]
    for record, ref in zip(history, ref_history):
        for key in ("train_loss", "train_ce", "train_cluster", "train_acc"):
            if key in ref:
                assert record[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-8), key
