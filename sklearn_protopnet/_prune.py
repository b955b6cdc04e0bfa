"""The global view (each prototype's nearest training patches) and pruning.

Pruning follows the paper (supplement S8): a prototype whose k nearest
training patches (one per image) mostly come from other classes is not a part
of its class and is removed. Before that, prototypes projected onto the same
patch (duplicates, common when a class's prototypes collapse) are merged into
one whose weights are the sum of theirs, which changes no logit. The last
layer is then solved again, to optimality, on similarities computed once.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.utils.validation import column_or_1d

from ._last_layer import kkt_residual_at, solve_last_layer

#: Per-prototype fitted attributes, re-indexed when prototypes are removed.
PER_PROTOTYPE_ARRAYS = (
    "prototype_source_index_",
    "prototype_location_",
    "prototype_box_",
    "prototype_original_size_",
)
PER_PROTOTYPE_LISTS = (
    "prototype_source_path_",
    "prototype_crop_",
    "prototype_source_thumbnail_",
)


@dataclass(frozen=True)
class NearestPatches:
    """Each prototype's k nearest patches in a set of images, one per image.

    Attributes
    ----------
    index : ndarray of shape (m, k)
        Image indices, nearest first.
    distance : ndarray of shape (m, k)
        Squared latent distances, ascending.
    location : ndarray of shape (m, k, 2)
        (row, column) of the nearest cell in each of those images.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_protopnet import ProtoPNetClassifier
    >>> from sklearn_protopnet.backbones import SmallCNN
    >>> X = np.zeros((8, 16, 16), np.uint8); X[:4, 7:9] = X[4:, :, 7:9] = 255  # bars
    >>> y = np.repeat(["horizontal", "vertical"], 4)
    >>> clf = ProtoPNetClassifier(backbone=SmallCNN(width=4), image_size=16,
    ...                           prototypes_per_class=1, prototype_dim=4, warm_epochs=0,
    ...                           joint_epochs=1, random_state=0).fit(X, y)
    >>> near = clf.nearest_patches(X, k=3)
    >>> near.index.shape, near.distance.shape, near.location.shape
    ((2, 3), (2, 3), (2, 3, 2))
    >>> bool(np.all(np.diff(near.distance, axis=1) >= 0))  # nearest first
    True
    """

    index: np.ndarray
    distance: np.ndarray
    location: np.ndarray


def _pass(estimator, X):
    """(min distances (n, m), their cells (n, m, 2), similarities (n, m)) in one pass."""
    dists, cells, sims = [], [], []
    with estimator._inference(X) as (_, batches):
        for _, _, s, d in batches:
            w = d.shape[3]
            best, arg = d.flatten(2).min(dim=2)
            dists.append(best.double().cpu().numpy())
            cells.append(torch.stack([arg // w, arg % w], dim=-1).cpu().numpy())
            sims.append(s.double().cpu().numpy())
    return np.concatenate(dists), np.concatenate(cells), np.concatenate(sims)


def _check_k(k) -> int:
    """``k`` of the nearest patches, checked before any pass over the images."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    return int(k)


def _nearest(dist, cells, k: int) -> NearestPatches:
    n = dist.shape[0]
    if k > n:
        raise ValueError(f"k={k} nearest patches asked for, but X has {n} images")
    order = np.argsort(dist.T, axis=1, kind="stable")[:, :k]  # (m, k)
    rows = np.arange(order.shape[0])[:, None]
    return NearestPatches(order, dist.T[rows, order], cells.transpose(1, 0, 2)[rows, order])


def nearest_patches(estimator, X, k: int = 6) -> NearestPatches:
    """Each prototype's ``k`` nearest patches in X, one per image (the global view)."""
    k = _check_k(k)
    dist, cells, _ = _pass(estimator, X)
    return _nearest(dist, cells, k)


def merge_duplicates(source_index, location, weight):
    """Merge prototypes projected onto the same patch.

    Returns ``(keep, merged_weight)``: the first prototype of each group of
    duplicates is kept and its weight column becomes the sum of the group's,
    so that for similarities S (equal within a group),
    ``S[:, keep] @ merged_weight[:, keep].T == S @ weight.T``.
    """
    merged = np.array(weight, dtype=np.float64, copy=True)
    first = {}
    keep = []
    for j, key in enumerate(zip(np.asarray(source_index).tolist(),
                                map(tuple, np.asarray(location).tolist()))):
        if key in first:
            merged[:, first[key]] += merged[:, j]
        else:
            first[key] = j
            keep.append(j)
    return np.array(keep, dtype=np.int64), merged


def impure_prototypes(neighbours: NearestPatches, y_enc, prototype_class, min_own: int):
    """Boolean mask of prototypes with fewer than ``min_own`` own-class neighbours."""
    own = (np.asarray(y_enc)[neighbours.index] == np.asarray(prototype_class)[:, None])
    return own.sum(axis=1) < min_own


def prune(estimator, X, y, k: int = 6, min_own: int = 3) -> dict:
    """The fitted state after merging duplicates, pruning and a new last layer.

    Nothing of ``estimator`` is changed here; the caller assigns the result.
    """
    k = _check_k(k)
    if not isinstance(min_own, (int, np.integer)) or not 0 <= min_own <= k:
        raise ValueError(f"min_own must be an int in [0, k={k}], got {min_own!r}")
    y = column_or_1d(y)
    unknown = sorted(set(y.tolist()) - set(estimator.classes_.tolist()), key=str)
    if unknown:
        raise ValueError(f"y holds labels the model was not fitted on: {unknown[:5]}")
    y_enc = np.searchsorted(estimator.classes_, y)
    dist, cells, S = _pass(estimator, X)
    if len(y_enc) != len(S):
        raise ValueError(f"X has {len(S)} images but y has {len(y_enc)} labels")
    module = estimator.module_
    pc = module.prototype_class.cpu().numpy()
    W = estimator.coef_

    keep, merged = merge_duplicates(estimator.prototype_source_index_,
                                    estimator.prototype_location_, W)
    neighbours = _nearest(dist, cells, k)
    impure = impure_prototypes(neighbours, y_enc, pc, min_own)
    removed = [int(j) for j in keep if impure[j]]
    keep = np.array([j for j in keep if not impure[j]], dtype=np.int64)
    if len(keep) == 0:
        raise ValueError(
            f"pruning would remove every prototype (none has {min_own} of its {k} nearest "
            "patches in its own class); lower min_own or check X and y"
        )
    n_classes = len(estimator.classes_)
    orphan = sorted(set(range(n_classes)) - set(pc[keep].tolist()))
    if orphan:
        warnings.warn(
            f"after pruning, classes {[estimator.classes_[c] for c in orphan]} have no "
            "prototype of their own", UserWarning, stacklevel=3,
        )

    new = copy.deepcopy(module)
    with torch.no_grad():
        new.prototypes = torch.nn.Parameter(module.prototypes.detach()[keep].clone(),
                                            requires_grad=False)
        new.prototype_class = module.prototype_class[keep].clone()
        # no random initialisation (it would draw from the global torch RNG):
        # the weights are set from the solution below
        new.last_layer = torch.nn.utils.skip_init(torch.nn.Linear, len(keep), n_classes,
                                                  bias=False)
        new.last_layer.weight.requires_grad_(False)
    own = new.own_class_mask().cpu().numpy()
    sol = solve_last_layer(S[:, keep], y_enc, own, estimator.last_layer_l1,
                           estimator.last_layer_l2, merged[:, keep],
                           tol=estimator.last_layer_tol,
                           max_iter=estimator.last_layer_max_iter)
    with torch.no_grad():
        new.last_layer.weight.copy_(torch.from_numpy(sol.weight))

    state = {"module_": new}
    for name in PER_PROTOTYPE_ARRAYS:
        if hasattr(estimator, name):
            state[name] = np.asarray(getattr(estimator, name))[keep].copy()
    for name in PER_PROTOTYPE_LISTS:
        if hasattr(estimator, name):
            values = getattr(estimator, name)
            state[name] = [values[j] for j in keep]
    kept_set = set(keep.tolist())
    merged_away = [j for j in range(len(pc)) if j not in kept_set and j not in removed]
    state["history_"] = list(estimator.history_) + [{
        "stage": "prune", "k": int(k), "min_own": int(min_own),
        "kept": keep.tolist(), "removed_impure": removed, "merged_duplicates": merged_away,
        "objective": sol.objective, "kkt_residual": sol.kkt_residual,
        # the residual at the float32 weights the module actually holds
        "kkt_residual_float32": kkt_residual_at(
            new.last_layer.weight.double().numpy(), S[:, keep], y_enc, own,
            estimator.last_layer_l1, estimator.last_layer_l2),
        "iterations": sol.iterations, "converged": sol.converged,
    }]
    return state


__all__ = ["NearestPatches", "nearest_patches", "merge_duplicates", "impure_prototypes",
           "prune"]
