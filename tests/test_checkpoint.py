"""Training checkpoints: exact resumption, refusal of foreign checkpoints,
atomic writes, and a fit killed with SIGKILL then resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

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
    np.testing.assert_allclose(clf.predict_proba(images), reference, rtol=0, atol=1e-6)
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
    np.testing.assert_allclose(resumed.predict_proba(images), full.predict_proba(images),
                               rtol=0, atol=1e-6)
    np.testing.assert_array_equal(resumed.prototype_source_index_,
                                  full.prototype_source_index_)
