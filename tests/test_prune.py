"""The global view and pruning: nearest patches, duplicates merged, impure prototypes dropped."""

import copy

import numpy as np
import pytest
import torch

from sklearn_protopnet._network import SIMILARITY_EPSILON
from sklearn_protopnet._prune import impure_prototypes, merge_duplicates


def _kkt_ok(clf, S, y_enc):
    """The optimality conditions of the last layer at coef_ on S (see test_classifier)."""
    W = clf.coef_
    P = np.exp(S @ W.T - (S @ W.T).max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    G = (P - np.eye(len(clf.classes_))[y_enc]).T @ S / len(y_enc) + clf.last_layer_l2 * W
    own = clf.classes_[:, None] == clf.prototype_class_[None, :]
    l1 = clf.last_layer_l1
    assert np.abs(G[own]).max() < 1e-4
    nz = ~own & (W != 0)
    assert np.allclose(G[nz], -l1 * np.sign(W[nz]), atol=1e-4)
    assert (np.abs(G[~own & (W == 0)]) <= l1 + 1e-4).all()


def _with_duplicate(fitted, a=0, b=1):
    """A copy of ``fitted`` in which prototype b is projected onto a's patch."""
    clf = copy.deepcopy(fitted)
    assert clf.prototype_class_[a] == clf.prototype_class_[b]
    with torch.no_grad():
        clf.module_.prototypes[b] = clf.module_.prototypes[a]
    clf.prototype_source_index_[b] = clf.prototype_source_index_[a]
    clf.prototype_location_[b] = clf.prototype_location_[a]
    return clf


def test_merge_duplicates_keeps_every_logit():
    rng = np.random.default_rng(0)
    source = np.array([3, 5, 3, 7, 5, 3])
    location = np.array([[1, 1], [0, 2], [1, 1], [1, 1], [0, 2], [2, 0]])
    groups = {(3, 1, 1): [0, 2], (5, 0, 2): [1, 4], (7, 1, 1): [3], (3, 2, 0): [5]}
    S = rng.random((10, 6))
    for members in groups.values():  # duplicates have equal similarities
        S[:, members] = S[:, members[:1]]
    W = rng.normal(size=(3, 6))
    keep, merged = merge_duplicates(source, location, W)
    np.testing.assert_array_equal(keep, [0, 1, 3, 5])
    np.testing.assert_allclose(S[:, keep] @ merged[:, keep].T, S @ W.T, rtol=1e-12)
    np.testing.assert_allclose(merged[:, 0], W[:, 0] + W[:, 2])


def test_nearest_patches_are_the_smallest_distances(fitted, bar_files):
    paths, _ = bar_files
    near = fitted.nearest_patches(paths, k=4)
    m = fitted.n_prototypes_
    assert near.index.shape == near.distance.shape == (m, 4)
    assert near.location.shape == (m, 4, 2)
    # invert the log similarity of transform: d = (1 - eps e^s) / (e^s - 1)
    e = np.exp(fitted.transform(paths))
    d = (1 - SIMILARITY_EPSILON * e) / (e - 1)
    for j in range(m):
        assert len(set(near.index[j])) == 4  # one patch per image
        np.testing.assert_allclose(near.distance[j], np.sort(d[:, j])[:4], rtol=1e-3, atol=1e-5)
        assert (np.diff(near.distance[j]) >= 0).all()
    # a prototype's nearest patch is its own source patch, at distance 0
    np.testing.assert_allclose(near.distance[:, 0], 0.0, atol=1e-4)
    h, w = fitted.feature_map_shape_
    assert (near.location >= 0).all() and (near.location[..., 0] < h).all()
    assert (near.location[..., 1] < w).all()
    for bad in (2.7, True, 0):
        with pytest.raises(ValueError, match="k must be an int >= 1"):
            fitted.nearest_patches(paths, k=bad)
    with pytest.raises(ValueError, match="but X has"):
        fitted.nearest_patches(paths[:3], k=4)


def test_inference_and_prune_leave_the_global_random_state_alone(fitted, bar_files):
    import copy

    paths, labels = bar_files
    clf = copy.deepcopy(fitted)
    state = torch.get_rng_state()
    clf.predict_proba(paths)
    clf.explain(paths[:2])
    clf.prune(paths, labels)
    assert torch.equal(torch.get_rng_state(), state)


def test_prune_merges_duplicates(fitted, bar_files):
    paths, labels = bar_files
    clf = _with_duplicate(fitted)
    m = clf.n_prototypes_
    before = clf.decision_function(paths)
    keep, merged = merge_duplicates(clf.prototype_source_index_, clf.prototype_location_,
                                    clf.coef_)
    assert 1 not in keep
    S = clf.transform(paths)
    np.testing.assert_allclose(S[:, keep] @ merged[:, keep].T, before, rtol=1e-5, atol=1e-5)

    crops = list(clf.prototype_crop_)
    clf.prune(paths, labels, k=6, min_own=0)  # merging only
    record = clf.history_[-1]
    assert record["stage"] == "prune" and 1 in record["merged_duplicates"]
    kept = record["kept"]
    assert kept == keep.tolist()
    assert len(kept) == clf.n_prototypes_ < m
    assert clf.coef_.shape == (2, clf.n_prototypes_)
    assert clf.transform(paths).shape == (len(paths), clf.n_prototypes_)
    np.testing.assert_array_equal(clf.prototype_class_, fitted.prototype_class_[kept])
    np.testing.assert_array_equal(clf.prototype_source_index_,
                                  fitted.prototype_source_index_[kept])
    assert all(np.array_equal(a, crops[j]) for a, j in zip(clf.prototype_crop_, kept))
    assert len(clf.prototype_source_thumbnail_) == len(clf.prototype_source_path_) == len(kept)
    assert clf.prototype_box_.shape == (len(kept), 4)
    # after the re-solve: the identity and optimality on the similarities of X
    S = clf.transform(paths)
    np.testing.assert_allclose(clf.decision_function(paths), S @ clf.coef_.T,
                               rtol=1e-5, atol=1e-5)
    _kkt_ok(clf, S, np.searchsorted(clf.classes_, labels))
    assert fitted.n_prototypes_ == m  # the original is untouched


def test_prune_removes_prototypes_with_other_class_neighbours(fitted, bar_files):
    paths, labels = bar_files
    clf = copy.deepcopy(fitted)
    near = clf.nearest_patches(paths, k=6)
    # relabel the 6 nearest images of prototype 0 so that they belong to the other class
    target = 0
    other = clf.classes_[clf.classes_ != clf.prototype_class_[target]][0]
    y = np.array(labels, dtype=object)
    y[near.index[target]] = other
    y_enc = np.searchsorted(clf.classes_, y.astype(str))
    pc = np.searchsorted(clf.classes_, clf.prototype_class_)
    expected = np.flatnonzero(impure_prototypes(near, y_enc, pc, 3))
    assert target in expected and len(expected) < clf.n_prototypes_
    keep_dup, _ = merge_duplicates(clf.prototype_source_index_, clf.prototype_location_,
                                   clf.coef_)
    clf.prune(paths, y.astype(str), k=6, min_own=3)
    record = clf.history_[-1]
    assert set(record["removed_impure"]) == set(expected) & set(keep_dup.tolist())
    assert target not in record["kept"]
    S = clf.transform(paths)
    np.testing.assert_allclose(clf.decision_function(paths), S @ clf.coef_.T,
                               rtol=1e-5, atol=1e-5)
    _kkt_ok(clf, S, np.searchsorted(clf.classes_, y.astype(str)))
    (e,) = clf.explain(paths[:1], top_k=None)
    np.testing.assert_allclose(sum(x.contribution for x in e.evidence), e.logit(), rtol=1e-5)


def test_prune_rejects_bad_input_and_changes_nothing(fitted, bar_files):
    paths, labels = bar_files
    clf = copy.deepcopy(fitted)
    W = clf.coef_
    with pytest.raises(ValueError, match="not fitted on"):
        clf.prune(paths, np.full(len(paths), "circle"))
    with pytest.raises(ValueError, match="labels"):
        clf.prune(paths, labels[:-1])
    with pytest.raises(ValueError, match="min_own"):
        clf.prune(paths, labels, k=6, min_own=7)
    with pytest.raises(ValueError, match="every prototype"):
        clf.prune(paths, np.where(labels == labels[0], labels[-1], labels[0]), min_own=6)
    np.testing.assert_array_equal(clf.coef_, W)
    assert clf.n_prototypes_ == fitted.n_prototypes_
