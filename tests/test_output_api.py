"""scikit-learn's output API and inference across calls and threads."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_protopnet._batches import on_device

from .conftest import tiny_classifier


def test_feature_names_say_which_prototype_of_which_class(fitted):
    names = fitted.get_feature_names_out()
    assert len(names) == fitted.n_prototypes_ and len(set(names)) == len(names)
    for j, (name, label) in enumerate(zip(names, fitted.prototype_class_)):
        assert name == f"prototype{j}_{label}"


def test_set_output_pandas_on_the_estimator_and_in_a_pipeline(bar_files):
    paths, labels = bar_files
    index = pd.Index([f"img{i}" for i in range(len(paths))])
    X = pd.Series(paths, index=index)
    clf = tiny_classifier(joint_epochs=1).set_output(transform="pandas")
    frame = clf.fit_transform(X, labels)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(clf.get_feature_names_out())
    assert frame.index.equals(index)
    np.testing.assert_array_equal(frame.to_numpy(), clf.transform(paths).to_numpy())
    pipe = make_pipeline(tiny_classifier(joint_epochs=1), StandardScaler())
    out = pipe.set_output(transform="pandas").fit_transform(X, labels)
    assert list(out.columns) == list(pipe[0].get_feature_names_out())
    np.testing.assert_allclose(out.mean().to_numpy(), 0.0, atol=1e-9)
    assert list(pipe.get_feature_names_out()) == list(out.columns)


def test_inference_on_the_cpu_never_moves_the_network(fitted, bar_files, monkeypatch):
    paths, _ = bar_files
    expected = fitted.predict_proba(paths)

    def refuse(*args, **kwargs):
        raise AssertionError("the fitted network was moved")

    for name in ("to", "cpu", "cuda"):
        monkeypatch.setattr(fitted.module_, name, refuse)
    np.testing.assert_array_equal(fitted.predict_proba(paths), expected)
    assert next(fitted.module_.parameters()).device.type == "cpu"


def test_two_threads_predict_at_once(fitted, bar_files):
    paths, _ = bar_files
    expected = fitted.predict_proba(paths)
    results, errors = [None] * 4, []

    def work(k):
        try:
            results[k] = fitted.predict_proba(paths)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_a_device_copy_is_made_once_and_again_only_after_a_change():
    """On the "meta" device, which every machine has, as a stand-in for CUDA."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    first = on_device(net, "meta")
    assert first is not net and next(first.parameters()).device.type == "meta"
    assert next(net.parameters()).device.type == "cpu"  # the original stays
    assert on_device(net, "meta") is first
    with torch.no_grad():
        net[0].weight.add_(1.0)  # changed in place: the copy is stale
    assert on_device(net, "meta") is not first
    assert on_device(net, "cpu") is net


@pytest.mark.parametrize("input_features", [None])
def test_feature_names_need_a_fitted_model(input_features):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        tiny_classifier().get_feature_names_out(input_features)
