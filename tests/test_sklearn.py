"""The estimator as a scikit-learn citizen: pipelines, search, cloning,
input containers, parameter validation, bad input, and the estimator checks."""

from __future__ import annotations

import os
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.utils import estimator_checks
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_protopnet import ProtoPNetClassifier

from .conftest import forbid_training, make_bar_images, tiny_classifier

# Cheap settings for the tests that fit many times (search, cross-validation).
QUICK = dict(warm_epochs=1, joint_epochs=1, push_start=1, last_layer_tol=1e-4)


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """12 bar images per class as PNG files, labels as strings."""
    from .conftest import write_pngs

    images, labels = make_bar_images(12, seed=1)
    paths = write_pngs(str(tmp_path_factory.mktemp("small")), images)
    return paths, np.where(labels == 0, "h", "v")


# ------------------------------------------------------------------ pipelines
def test_pipeline_as_final_classifier(fitted, bar_files):
    paths, labels = bar_files
    pipe = Pipeline([("protopnet", clone(fitted))]).fit(paths, labels)
    np.testing.assert_allclose(pipe.predict_proba(paths), fitted.predict_proba(paths),
                               atol=1e-6)
    assert pipe.score(paths, labels) == fitted.score(paths, labels)
    assert list(pipe.classes_) == list(fitted.classes_)


def test_pipeline_as_feature_step_before_logistic_regression(small_files):
    paths, labels = small_files
    pipe = make_pipeline(tiny_classifier(**QUICK), LogisticRegression()).fit(paths, labels)
    protopnet, logreg = pipe[0], pipe[-1]
    # the second step saw the prototype similarities as features
    assert logreg.coef_.shape == (1, protopnet.n_prototypes_)
    features = protopnet.transform(paths)
    np.testing.assert_allclose(pipe.predict_proba(paths), logreg.predict_proba(features))
    assert set(pipe.predict(paths)) <= {"h", "v"}
    # fit_transform gives the same features as fit then transform
    again = tiny_classifier(**QUICK)
    np.testing.assert_allclose(again.fit_transform(paths, labels), features, atol=1e-6)


# --------------------------------------------------------------------- search
@pytest.mark.slow
def test_grid_search_with_one_and_two_jobs_agree(small_files):
    paths, labels = small_files
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    results = {}
    for n_jobs in (1, 2):
        search = GridSearchCV(tiny_classifier(**QUICK), {"prototypes_per_class": [1, 2]},
                              cv=cv, n_jobs=n_jobs).fit(paths, labels)
        results[n_jobs] = search
        assert search.best_estimator_.n_prototypes_ == 2 * search.best_params_[
            "prototypes_per_class"]
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    np.testing.assert_allclose(results[1].cv_results_["mean_test_score"],
                               results[2].cv_results_["mean_test_score"])
    np.testing.assert_allclose(results[1].predict_proba(paths), results[2].predict_proba(paths),
                               atol=1e-6)


def test_cross_val_score_on_a_pandas_series(small_files):
    paths, labels = small_files
    scores = cross_val_score(tiny_classifier(**QUICK), pd.Series(paths), pd.Series(labels),
                             cv=StratifiedKFold(2, shuffle=True, random_state=0))
    assert scores.shape == (2,) and ((0 <= scores) & (scores <= 1)).all()


# ------------------------------------------------------ clone and parameters
def test_clone_get_and_set_params(fitted):
    copy = clone(fitted)
    assert not hasattr(copy, "module_")
    params, copied = fitted.get_params(), copy.get_params()
    assert params.keys() == copied.keys()
    assert all(copied[k] == v for k, v in params.items() if k != "backbone")
    assert type(copied["backbone"]) is type(params["backbone"])
    assert copy.set_params(prototypes_per_class=5, checkpoint_dir="ck") is copy
    assert copy.prototypes_per_class == 5 and copy.checkpoint_dir == "ck"
    assert fitted.prototypes_per_class == 3
    with pytest.raises(ValueError, match="no_such"):
        copy.set_params(no_such=1)
    assert "checkpoint_dir" in ProtoPNetClassifier().get_params()


def test_list_object_array_and_series_of_paths_agree(fitted, bar_files):
    paths, _ = bar_files
    expected = fitted.predict_proba(paths)
    for X in (np.array(paths, dtype=object), np.array(paths), pd.Series(paths),
              tuple(paths), [os.path.abspath(p) for p in paths]):
        np.testing.assert_array_equal(fitted.predict_proba(X), expected)


@pytest.mark.parametrize("kind", ["int", "negative int", "str", "other str", "bool",
                                  "pandas"])
def test_labels_of_every_kind(bar_data, kind):
    """Labels come back as given: their dtype, their values, classes_ sorted."""
    images, labels = bar_data
    y = {"int": labels * 7 + 3, "negative int": labels * 5 - 2,
         "str": np.where(labels, "b", "a"), "other str": np.where(labels, "yes", "no"),
         "bool": labels.astype(bool), "pandas": pd.Series(np.where(labels, "b", "a"))}[kind]
    clf = tiny_classifier(**{**QUICK, "joint_epochs": 4}).fit(images, y)
    pred = clf.predict(images)
    assert pred.dtype == np.asarray(y).dtype
    assert set(pred.tolist()) <= set(np.asarray(y).tolist())
    np.testing.assert_array_equal(clf.classes_, np.unique(np.asarray(y)))
    # the labels are mapped back the right way round: these bars are easy (the
    # model fits all 40), a constant predictor scores 0.5, a random one >= 0.95
    # with probability 1e-9
    assert clf.score(images, y) >= 0.95


@pytest.mark.parametrize("data, params, seed", [
    ("arrays", dict(joint_epochs=1), 0),
    ("files", QUICK, 7),
])
def test_two_fits_with_one_random_state_give_identical_probabilities(bar_data, small_files,
                                                                     data, params, seed):
    """With augmentation, one random_state gives one model, another another."""
    X, y = bar_data if data == "arrays" else small_files
    a = tiny_classifier(**params, augment=True, random_state=seed).fit(X, y)
    b = tiny_classifier(**params, augment=True, random_state=seed).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    # refitting the same object gives the same model again (fit is idempotent)
    proba = a.predict_proba(X)
    np.testing.assert_array_equal(a.fit(X, y).predict_proba(X), proba)
    c = tiny_classifier(**params, augment=True, random_state=seed + 1).fit(X, y)
    assert not np.allclose(a.coef_, c.coef_)


# ---------------------------------------------------------- bad hyperparameters
@pytest.mark.parametrize(
    "param, value",
    [("prototypes_per_class", 0), ("prototypes_per_class", 1.5), ("image_size", 4),
     ("image_size", (16,)), ("image_size", (16, "a")), ("image_size", (16, 4)),
     ("image_size", True), ("add_on", "wide"), ("similarity", "dot"), ("batch_size", 0),
     ("joint_lr_gamma", 0.0), ("lr_backbone", "fast"), ("validation_fraction", 1.0),
     ("checkpoint_dir", 3), ("device", 0), ("device", "gpu"), ("augment", "yes"), ("backbone", 3),
     ("last_layer_tol", 0.0), ("memory_budget", -1), ("warm_epochs", -1)],
)
def test_bad_hyperparameter_fails_at_fit_naming_it(bar_data, monkeypatch, param, value):
    forbid_training(monkeypatch)
    clf = tiny_classifier(**{param: value})  # construction never validates
    with pytest.raises((InvalidParameterError, ValueError), match=param):
        clf.fit(*bar_data)


def test_not_fitted_error_before_fit(bar_data):
    images, _ = bar_data
    # before the input is looked at: the file does not exist
    with pytest.raises(NotFittedError):
        ProtoPNetClassifier().predict(["x.png"])
    clf = tiny_classifier()
    for method in ("predict", "predict_proba", "predict_log_proba", "decision_function",
                   "transform"):
        with pytest.raises(NotFittedError):
            getattr(clf, method)(images)
    for attribute in ("coef_", "prototype_class_", "n_prototypes_"):
        with pytest.raises(NotFittedError):
            getattr(clf, attribute)


# ------------------------------------------------------------------ bad input
def _text_file(folder):
    path = os.path.join(folder, "notes.png")
    with open(path, "w") as f:
        f.write("this is text, not an image\n")
    return path


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("y of another length", ValueError, "labels"),
        ("a single class", ValueError, "single class"),
        ("empty X", ValueError, "empty"),
        ("NaN in the images", ValueError, "NaN"),
        ("images of NaN only", ValueError, "NaN"),
        ("floats beyond [0, 1]", ValueError, r"\[0, 1\]"),
        ("inf in the images", ValueError, "infinite"),
        ("a tabular 2-d array", ValueError, "shape"),
        ("a 5-d array", ValueError, "shape"),
        ("a directory as a path", IsADirectoryError, "directory"),
        ("a text file as a path", OSError, "notes.png"),
        ("a dict", TypeError, "image paths"),
        ("an int", TypeError, "int"),
        ("a single path", TypeError, "single path"),
        ("a list of arrays", TypeError, "one numeric array"),
        ("a 2-d DataFrame", TypeError, "2-d"),
    ],
)
def test_bad_input_is_rejected_before_training(bar_data, small_files, tmp_path, monkeypatch,
                                               case, error, match):
    images, labels = bar_data
    paths, path_labels = small_files
    X, y = images, labels
    if case == "y of another length":
        y = labels[:-1]
    elif case == "a single class":
        y = np.zeros_like(labels)
    elif case == "empty X":
        X, y = images[:0], labels[:0]
    elif case in ("NaN in the images", "inf in the images"):
        X = images / 255.0
        X[3, 2, 2] = np.nan if case.startswith("NaN") else np.inf
    elif case == "images of NaN only":
        X = images.astype(float) * np.nan
    elif case == "floats beyond [0, 1]":
        X = images.astype(float)
    elif case == "a tabular 2-d array":
        X = images.reshape(len(images), -1)
    elif case == "a 5-d array":
        X = images[:, :, :, None, None]
    elif case == "a directory as a path":
        X, y = list(paths[:-1]) + [str(tmp_path)], path_labels
    elif case == "a text file as a path":
        X, y = list(paths[:-1]) + [_text_file(str(tmp_path))], path_labels
    elif case == "a dict":
        X = {"a": 1}
    elif case == "an int":
        X = 3
    elif case == "a single path":
        X = "one/path.png"
    elif case == "a list of arrays":
        X = list(images)
    elif case == "a 2-d DataFrame":
        X = pd.DataFrame({"path": paths, "other": paths})
        y = path_labels
    forbid_training(monkeypatch)
    with pytest.raises(error, match=match):
        tiny_classifier().fit(X, y)


def test_text_file_is_rejected_before_training_when_streaming(small_files, tmp_path,
                                                              monkeypatch):
    paths, labels = small_files
    forbid_training(monkeypatch)
    with pytest.raises(OSError, match="notes.png"):
        tiny_classifier(memory_budget=0).fit(list(paths[:-1]) + [_text_file(str(tmp_path))],
                                             labels)


def test_read_only_memmap_images(bar_data, tmp_path):
    """The image analogue of check_readonly_memmap_input."""
    images, labels = bar_data
    joblib.dump(images, tmp_path / "x.joblib")
    mapped = joblib.load(tmp_path / "x.joblib", mmap_mode="r")
    assert not mapped.flags.writeable
    clf = tiny_classifier(**QUICK).fit(mapped, labels)
    np.testing.assert_array_equal(clf.predict_proba(mapped), clf.predict_proba(images))


# ------------------------------------------------------------ estimator checks
# The checks of sklearn.utils.estimator_checks that apply to an estimator
# whose X is a set of images. The data checks generate tabular
# (n_samples, n_features) matrices, which are not images: the tags say so
# (input_tags.two_d_array=False), and check_estimator then skips them; their
# image analogues are the tests in this file (see docs/scikit-learn.md).
API_CHECKS = [
    "check_estimator_cloneable",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimators_unfitted",
]


@pytest.mark.parametrize("check", API_CHECKS)
def test_sklearn_estimator_check(check):
    getattr(estimator_checks, check)("ProtoPNetClassifier", tiny_classifier())


def test_tags_describe_image_input_and_checks_on_tables_are_skipped():
    from sklearn.utils import get_tags

    tags = get_tags(ProtoPNetClassifier())
    assert not tags.input_tags.two_d_array
    assert tags.input_tags.three_d_array and tags.input_tags.string
    assert tags.estimator_type == "classifier" and tags.transformer_tags is not None
    assert tags.requires_fit and not tags.input_tags.allow_nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator_checks.check_estimator(tiny_classifier())
    assert any("Can't test estimator" in str(w.message) for w in caught)


def test_fit_adds_only_public_trailing_underscore_attributes(bar_data):
    """Image analogues of check_dont_overwrite_parameters,
    check_estimators_overwrite_params and check_estimators_fit_returns_self."""
    clf = tiny_classifier(**QUICK)
    before = dict(vars(clf))
    params = joblib.hash(clf.get_params())
    assert clf.fit(*bar_data) is clf
    added = set(vars(clf)) - set(before)
    assert added and all(k.endswith("_") and not k.startswith("_") for k in added)
    assert joblib.hash(clf.get_params()) == params
    assert all(vars(clf)[k] is v for k, v in before.items())


def test_predictions_do_not_depend_on_the_batch(fitted, bar_files):
    """Image analogue of check_methods_subset_invariance and
    check_methods_sample_order_invariance."""
    paths, _ = bar_files
    proba = fitted.predict_proba(paths)
    one_by_one = np.vstack([fitted.predict_proba([p]) for p in paths[:5]])
    # float32 convolutions may round differently for another batch size
    np.testing.assert_allclose(one_by_one, proba[:5], atol=1e-5)
    order = np.random.default_rng(0).permutation(len(paths))
    np.testing.assert_allclose(fitted.predict_proba([paths[i] for i in order]), proba[order],
                               atol=1e-5)
