"""Training checkpoints: exact resumption, refusal of foreign checkpoints,
atomic writes, a fit killed with SIGKILL then resumed, and Ctrl-C
(KeyboardInterrupt, SIGINT): the fit stops within a batch, the checkpoint
ends with the last completed step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch

from sklearn_protopnet import _checkpoint, _training
from sklearn_protopnet._checkpoint import CHECKPOINT_NAME, Checkpoint, training_identity
from sklearn_protopnet._images import check_images
from sklearn_protopnet._sgd import ProtoPNetNet

from .conftest import make_bar_images, tiny_classifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# augmentation on, so that resuming must restore the random streams exactly;
# 9 steps: init, sgd 1, sgd 2, push 2, last layer 2, sgd 3, sgd 4, push 4, last layer 4
SETTINGS = dict(warm_epochs=1, joint_epochs=3, push_start=2, augment=True)


class Interrupt(Exception):
    pass


def interrupt_after(monkeypatch, step: int) -> None:
    """Make the fit die right after the checkpoint of ``step`` is written."""
    save = Checkpoint.save

    def dying_save(self, state):
        save(self, state)
        if state["step"] == step:
            raise Interrupt

    monkeypatch.setattr(Checkpoint, "save", dying_save)


def count_epochs(monkeypatch) -> list:
    calls = []
    partial_fit = ProtoPNetNet.partial_fit

    def counting(self, *args, **kwargs):
        calls.append(1)
        return partial_fit(self, *args, **kwargs)

    monkeypatch.setattr(ProtoPNetNet, "partial_fit", counting)
    return calls


@pytest.fixture(scope="module")
def reference(bar_data):
    images, labels = bar_data
    return tiny_classifier(**SETTINGS).fit(images, labels).predict_proba(images)


@pytest.mark.parametrize("step, epochs_left", [(0, 4), (2, 2), (3, 2), (8, 0)],
                         ids=["after-init", "mid-joint", "between-push-and-last-layer",
                              "after-the-end"])
def test_resumed_fit_equals_uninterrupted_fit(bar_data, reference, tmp_path, monkeypatch,
                                              step, epochs_left):
    images, labels = bar_data
    with monkeypatch.context() as m:
        interrupt_after(m, step)
        with pytest.raises(Interrupt):
            tiny_classifier(checkpoint_dir=tmp_path, **SETTINGS).fit(images, labels)
    assert os.path.exists(tmp_path / CHECKPOINT_NAME)
    calls = count_epochs(monkeypatch)
    import random

    random.seed(5)
    np.random.seed(5)
    caller = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    clf = tiny_classifier(checkpoint_dir=tmp_path, **SETTINGS).fit(images, labels)
    # the checkpoint's states are used inside fit only: the caller's are kept
    assert (random.random(), np.random.rand()) == caller
    assert len(calls) == epochs_left
    np.testing.assert_array_equal(clf.predict_proba(images), reference)  # bit for bit
    stages = [r["stage"] for r in clf.history_]
    assert stages.count("resume") == 1 and stages.count("joint") == 3
    # a successful fit removes its checkpoint, leaving no temporary file either
    assert os.listdir(tmp_path) == []


def test_checkpoint_of_other_parameters_or_data_is_refused(bar_data, tmp_path, monkeypatch):
    images, labels = bar_data
    with monkeypatch.context() as m:
        interrupt_after(m, 1)
        with pytest.raises(Interrupt):
            tiny_classifier(checkpoint_dir=tmp_path, **SETTINGS).fit(images, labels)

    def fail(*args, **kwargs):
        raise AssertionError("training started with a foreign checkpoint")

    monkeypatch.setattr(_training, "fit_stages", fail)
    with pytest.raises(ValueError, match=r"other parameters.*joint_epochs: checkpoint 3, now 4"):
        tiny_classifier(checkpoint_dir=tmp_path, **{**SETTINGS, "joint_epochs": 4}).fit(
            images, labels)
    with pytest.raises(ValueError, match="training data or labels"):
        tiny_classifier(checkpoint_dir=tmp_path, **SETTINGS).fit(images[::-1], labels)
    with pytest.raises(ValueError, match="training data or labels"):
        tiny_classifier(checkpoint_dir=tmp_path, **SETTINGS).fit(images, labels[::-1])
    # what cannot change the model does not make the checkpoint foreign
    identity = training_identity(
        tiny_classifier(checkpoint_dir=tmp_path, **SETTINGS).get_params(), check_images(images),
        np.array([0, 1]), labels)
    identity_verbose = training_identity(
        tiny_classifier(verbose=1, memory_budget=0, checkpoint_dir="elsewhere",
                        **SETTINGS).get_params(), check_images(images), np.array([0, 1]),
        labels)
    assert identity == identity_verbose
    # the refused checkpoint is still there, untouched
    assert os.path.exists(tmp_path / CHECKPOINT_NAME)


def test_corrupt_checkpoint_is_a_clear_error(bar_data, tmp_path):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"half a checkpoint")
    with pytest.raises(ValueError, match="cannot read the checkpoint"):
        tiny_classifier(checkpoint_dir=tmp_path, **SETTINGS).fit(*bar_data)


def test_file_fingerprint_follows_size_and_modification_time(bar_files):
    paths, labels = bar_files
    source = check_images(paths[:4])
    y = np.array([0, 0, 1, 1])
    before = _checkpoint.data_fingerprint(source, ["a", "b"], y)
    assert before == _checkpoint.data_fingerprint(check_images(list(paths[:4])), ["a", "b"], y)
    stat = os.stat(paths[0])
    try:
        os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert _checkpoint.data_fingerprint(source, ["a", "b"], y) != before
    finally:
        os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _checkpoint.data_fingerprint(source, ["a", "c"], y) != before


def test_write_is_atomic(tmp_path, monkeypatch):
    identity = {"format": 1, "params": {}, "data": "x"}
    ckpt = Checkpoint(tmp_path, identity)
    ckpt.seed = 5
    ckpt.save({"step": 1, "weights": torch.ones(3)})

    def torn_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save({"step": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]  # no temporary file left behind
    again = Checkpoint(tmp_path, identity).load()
    assert again.state["step"] == 1 and again.seed == 5
    assert torch.equal(again.state["weights"], torch.ones(3))


def test_rng_states_round_trip():
    import random

    states = _checkpoint.get_rng_states()
    expected = (torch.rand(2), np.random.rand(2), random.random())
    _checkpoint.set_rng_states(states)
    got = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(expected[0], got[0])
    np.testing.assert_array_equal(expected[1], got[1])
    assert expected[2] == got[2]


# -------------------------------------------------------------- SIGKILL
KILL_SETTINGS = dict(warm_epochs=2, joint_epochs=8, push_start=5, push_interval=5,
                     augment=True)

CHILD = """
import sys
from tests.conftest import make_bar_images, tiny_classifier
images, labels = make_bar_images(20)
tiny_classifier(checkpoint_dir=sys.argv[1], verbose=1, **{settings!r}).fit(images, labels)
print("FINISHED", flush=True)
"""


def test_fit_killed_with_sigkill_resumes_to_the_same_model(tmp_path, monkeypatch):
    """A separate process fits with a checkpoint and is killed with SIGKILL once
    a few epochs are checkpointed; the resumed fit runs fewer epochs and ends
    with the model of an uninterrupted fit."""
    code = textwrap.dedent(CHILD.format(settings=KILL_SETTINGS))
    env = dict(os.environ, PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-u", "-c", code, str(tmp_path)], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        for line in child.stdout:
            assert "FINISHED" not in line, "the child finished before it was killed"
            if "joint epoch 4/" in line:  # epochs 1-3 are checkpointed by now
                child.send_signal(signal.SIGKILL)
                break
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    saved = Checkpoint(tmp_path, {}).path
    state = torch.load(saved, weights_only=True)["state"]
    assert state["step"] >= 3

    images, labels = make_bar_images(20)
    calls = count_epochs(monkeypatch)
    resumed = tiny_classifier(checkpoint_dir=tmp_path, **KILL_SETTINGS).fit(images, labels)
    assert 0 < len(calls) < 10
    monkeypatch.undo()
    full = tiny_classifier(**KILL_SETTINGS).fit(images, labels)
    np.testing.assert_array_equal(resumed.predict_proba(images), full.predict_proba(images))
    np.testing.assert_array_equal(resumed.prototype_source_index_,
                                  full.prototype_source_index_)


# -------------------------------------------------------------- Ctrl-C
def _interrupt_on_batch(monkeypatch, k: int) -> list:
    """Make the k-th SGD batch (counting from the start of the fit) raise
    KeyboardInterrupt, as Ctrl-C does; return the list of batches started."""
    calls = []
    train_step = ProtoPNetNet.train_step

    def interrupted(self, batch, **kwargs):
        calls.append(1)
        if len(calls) == k:
            raise KeyboardInterrupt
        return train_step(self, batch, **kwargs)

    monkeypatch.setattr(ProtoPNetNet, "train_step", interrupted)
    return calls


def _saved_state(folder) -> dict:
    return torch.load(Checkpoint(folder, {}).path, weights_only=True)["state"]


def _sgd_epochs(history) -> list:
    return [r["epoch"] for r in history if r.get("stage") in ("warm", "joint")]


def test_keyboard_interrupt_stops_fit_and_leaves_the_fitted_estimator(
        bar_data, reference, tmp_path, monkeypatch):
    """Ctrl-C in the middle of epoch 3 ends fit at once with KeyboardInterrupt
    (skorch's partial_fit would swallow it and let the fit go on), the
    estimator keeps its previous fit, the checkpoint ends with the last
    completed step, and resuming from it gives the uninterrupted model."""
    images, labels = bar_data
    clf = tiny_classifier(checkpoint_dir=tmp_path, **SETTINGS).fit(images, labels)
    proba = clf.predict_proba(images)
    ids = {k: id(v) for k, v in vars(clf).items()}
    digest = joblib.hash(vars(clf))
    # 40 images in batches of 16: 3 batches an epoch, so batch 8 is epoch 3's second
    with monkeypatch.context() as m:
        calls = _interrupt_on_batch(m, 8)
        with pytest.raises(KeyboardInterrupt):
            clf.fit(images, labels)
    assert len(calls) == 8  # no batch ran after the interrupt
    assert {k: id(v) for k, v in vars(clf).items()} == ids
    assert joblib.hash(vars(clf)) == digest
    np.testing.assert_array_equal(clf.predict_proba(images), proba)
    state = _saved_state(tmp_path)
    assert state["step"] == 4  # the last layer after epoch 2; epoch 3 is step 5
    assert _sgd_epochs(json.loads(state["history"])) == [1, 2]

    calls = count_epochs(monkeypatch)
    resumed = tiny_classifier(checkpoint_dir=tmp_path, **SETTINGS).fit(images, labels)
    assert len(calls) == 2
    np.testing.assert_array_equal(resumed.predict_proba(images), reference)


@pytest.mark.parametrize("step_function, per_batch", [
    ("push_prototypes", "latent"),
    ("similarities_of_latents", "distance_map"),  # the last layer reads the push's latents
], ids=["push", "last-layer"])
def test_keyboard_interrupt_in_push_or_last_layer_propagates(bar_data, tmp_path, monkeypatch,
                                                             step_function, per_batch):
    """Ctrl-C during the batches of a push or of the last layer's features
    ends fit at once; the checkpoint ends with the step before."""
    from sklearn_protopnet._network import ProtoPNet

    images, labels = bar_data
    inside, batches = [], []
    step = getattr(_training, step_function)

    def flagged(*args, **kwargs):
        inside.append(1)
        try:
            return step(*args, **kwargs)
        finally:
            inside.pop()

    original = getattr(ProtoPNet, per_batch)

    def interrupted(self, x):
        if inside:
            batches.append(1)
            if len(batches) == 2:
                raise KeyboardInterrupt
        return original(self, x)

    monkeypatch.setattr(_training, step_function, flagged)
    monkeypatch.setattr(ProtoPNet, per_batch, interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_classifier(checkpoint_dir=tmp_path, **SETTINGS).fit(images, labels)
    assert len(batches) == 2
    # push after epoch 2 is step 3, its last layer step 4
    assert _saved_state(tmp_path)["step"] == (2 if step_function == "push_prototypes" else 3)


SIGINT_SETTINGS = dict(SETTINGS, batch_size=2)  # 20 batches an epoch

SIGINT_CHILD = """
import signal
import sys
import time

# a child started from a background job inherits SIGINT ignored, and Python
# then installs no KeyboardInterrupt handler: install it, as a terminal has
signal.signal(signal.SIGINT, signal.default_int_handler)

from sklearn_protopnet._sgd import ProtoPNetNet
from tests.conftest import make_bar_images, tiny_classifier

train_step = ProtoPNetNet.train_step
batches = []


def slow_step(self, batch, **kwargs):
    # from epoch 3 on, a batch takes 0.5 s: the rest of an epoch, 10 s
    batches.append(1)
    print("BATCH", len(batches), flush=True)
    if len(batches) > 40:
        time.sleep(0.5)
    return train_step(self, batch, **kwargs)


ProtoPNetNet.train_step = slow_step
images, labels = make_bar_images(20)
tiny_classifier(checkpoint_dir=sys.argv[1], verbose=1, **{settings!r}).fit(images, labels)
print("FINISHED", flush=True)
"""


def test_fit_interrupted_with_sigint_stops_within_a_batch_and_resumes(tmp_path, monkeypatch):
    """Ctrl-C (SIGINT) in a child process during the third batch of epoch 3:
    the child exits at once with a KeyboardInterrupt traceback, without
    running the epoch's other 17 batches; its checkpoint ends after the last
    layer of epoch 2, and the resumed fit ends with the uninterrupted model."""
    import time

    code = textwrap.dedent(SIGINT_CHILD.format(settings=SIGINT_SETTINGS))
    env = dict(os.environ, PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-u", "-c", code, str(tmp_path)], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    after = []
    try:
        for line in child.stdout:
            assert "FINISHED" not in line, "the child finished before it was interrupted"
            if line.startswith("BATCH 43"):  # epoch 3 (batches 41-60) is running
                child.send_signal(signal.SIGINT)
                sent = time.perf_counter()
                break
        after = child.stdout.read().splitlines()
        child.wait(timeout=30)
        took = time.perf_counter() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    stderr = child.stderr.read()
    assert child.returncode != 0 and "KeyboardInterrupt" in stderr.splitlines()[-1], stderr
    # within a batch: at most the batch running when the signal came printed
    # after it (a wall-clock bound would measure the machine's load instead)
    assert sum(line.startswith("BATCH") for line in after) <= 1, (after, took)
    assert not any("joint epoch 3/" in line or "FINISHED" in line for line in after), after
    state = _saved_state(tmp_path)
    assert state["step"] == 4
    assert _sgd_epochs(json.loads(state["history"])) == [1, 2]

    images, labels = make_bar_images(20)
    calls = count_epochs(monkeypatch)
    resumed = tiny_classifier(checkpoint_dir=tmp_path, **SIGINT_SETTINGS).fit(images, labels)
    assert len(calls) == 2
    monkeypatch.undo()
    full = tiny_classifier(**SIGINT_SETTINGS).fit(images, labels)
    np.testing.assert_array_equal(resumed.predict_proba(images), full.predict_proba(images))
    assert _sgd_epochs(resumed.history_) == _sgd_epochs(full.history_) == [1, 2, 3, 4]


# -------------------------------------------------------------- history flags
# 2 warm and 4 joint epochs with a validation set; 11 steps: init, sgd 1, sgd 2,
# push 2, last layer 2, sgd 3 to 6, push 6, last layer 6
FLAG_SETTINGS = dict(warm_epochs=2, joint_epochs=4, push_start=2, validation_fraction=0.25,
                     augment=True)


def _epochs(history) -> list:
    return [r for r in history if r.get("stage") in ("warm", "joint")]


def _expected_flag(records, i, key) -> bool:
    higher = _training.HIGHER_IS_BETTER[key.split("_", 1)[1]]
    earlier = [r[key] for r in records[:i]]
    value = records[i][key]
    return not earlier or (value > max(earlier) if higher else value < min(earlier))


@pytest.fixture(scope="module")
def flagged_fit(bar_data):
    return tiny_classifier(**FLAG_SETTINGS).fit(*bar_data)


def test_best_flags_mark_improvements_over_the_whole_fit(flagged_fit):
    """``<metric>_best`` is True exactly when the metric improves on every
    earlier epoch of the fit, warm-up and joint stages together, in the
    metric's direction (accuracy and separation: higher is better)."""
    records = _epochs(flagged_fit.history_)
    assert [r["stage"] for r in records] == ["warm"] * 2 + ["joint"] * 4
    keys = [p + m for p in ("train_", "valid_") for m in ("loss", "ce", "cluster",
                                                          "separation", "acc")]
    for i, record in enumerate(records):
        assert sorted(k for k in record if k.endswith("_best")) == sorted(
            k + "_best" for k in keys)
        for key in keys:
            assert record[key + "_best"] == _expected_flag(records, i, key), (i, key)
    # the epoch first reaching the highest validation accuracy is flagged
    best = max(r["valid_acc"] for r in records)
    assert records[[r["valid_acc"] for r in records].index(best)]["valid_acc_best"]
    assert records[0]["valid_acc_best"] and records[0]["train_acc_best"]
    # "best" spans the stages: the first joint epoch is compared with the
    # warm-up's (were the flags per stage, all of them would be True)
    first_joint = records[2]
    assert not all(first_joint[k + "_best"] for k in keys)


def test_best_flags_and_records_of_a_resumed_fit_equal_an_uninterrupted_one(
        bar_data, flagged_fit, tmp_path, monkeypatch):
    images, labels = bar_data
    with monkeypatch.context() as m:
        interrupt_after(m, 6)  # after joint epoch 4
        with pytest.raises(Interrupt):
            tiny_classifier(checkpoint_dir=tmp_path, **FLAG_SETTINGS).fit(images, labels)
    resumed = tiny_classifier(checkpoint_dir=tmp_path, **FLAG_SETTINGS).fit(images, labels)
    assert [r["stage"] for r in resumed.history_].count("resume") == 1

    def comparable(history):
        return [{k: v for k, v in r.items() if k != "dur"} for r in _epochs(history)]

    assert comparable(resumed.history_) == comparable(flagged_fit.history_)


def test_sgd_loss_leaves_out_the_constant_l1_term(flagged_fit):
    """The last layer is frozen in the SGD stages, so its L1 term is a
    constant: the recorded loss is CE + cluster_coef * Clst - separation_coef
    * Sep, and the off-class L1 norm is recorded at each last-layer solve."""
    clf = flagged_fit
    separation_coef = clf.auto_values_.get("separation_coef", clf.separation_coef)
    for r in _epochs(clf.history_):
        assert not any("l1" in k for k in r)
        for p in ("train_", "valid_"):
            expected = (r[p + "ce"] + clf.cluster_coef * r[p + "cluster"]
                        - separation_coef * r[p + "separation"])
            assert r[p + "loss"] == pytest.approx(expected, rel=1e-6, abs=1e-7)
    last = [r for r in clf.history_ if r["stage"] == "last_layer"][-1]
    own = clf.module_.own_class_mask().numpy()
    assert last["off_class_l1"] == pytest.approx(np.abs(clf.coef_[~own]).sum(), rel=1e-6)


def test_the_last_layer_reads_the_latents_of_the_push_before_it(bar_data, monkeypatch):
    """One forward pass serves a push and the last layer after it when the
    latent maps fit in what the decoded images leave of memory_budget; the
    model is the one two passes give, bit for bit."""
    from sklearn_protopnet._network import ProtoPNet

    images, labels = bar_data
    calls = []
    latent = ProtoPNet.latent

    def counting(self, x):
        calls.append(len(x))
        return latent(self, x)

    monkeypatch.setattr(ProtoPNet, "latent", counting)
    shared = tiny_classifier(**SETTINGS).fit(images, labels)
    shared_images = sum(calls)
    calls.clear()
    decoded = images.size * 3  # (n, 16, 16) gray to (n, 3, 16, 16) uint8
    two_passes = tiny_classifier(**SETTINGS, memory_budget=decoded).fit(images, labels)
    pushes = sum(r["stage"] == "push" for r in shared.history_)
    assert sum(calls) - shared_images == pushes * len(images)  # one pass of the images each
    np.testing.assert_array_equal(shared.predict_proba(images), two_passes.predict_proba(images))
    np.testing.assert_array_equal(shared.coef_, two_passes.coef_)
