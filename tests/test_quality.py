"""Explanation-quality metrics: each checked against a hand computation or a
case whose answer is known (no noise, nothing masked, the whole image)."""

from __future__ import annotations

import copy
import doctest

import numpy as np
import pytest
import torch
from sklearn.utils import check_random_state

import sklearn_protopnet
from sklearn_protopnet import (
    DeletionResult,
    PointingGameResult,
    StabilityResult,
    deletion_check,
    evidence_stability,
    locality,
    pointing_game,
    prototype_duplicates,
    prototype_purity,
)

from .conftest import make_bar_images, tiny_classifier


@pytest.fixture(scope="module")
def bars():
    """Twelve bar images the model never saw, as an array (16 px, grey)."""
    return make_bar_images(6, seed=5)[0]


def _peak_pixels(fitted, X):
    """(n, 2) (x, y): the pixel at the centre of the top evidence's peak cell,
    for images the size of the network's input (no scaling to undo)."""
    g = fitted.cell_geometry_
    out = []
    for e in fitted.explain(X, top_k=1):
        cy, cx = g.centre(*e.evidence[0].location)
        out.append((int(round(cx)), int(round(cy))))
    return np.array(out)


# ----------------------------------------------------------------------------
# evidence_stability
# ----------------------------------------------------------------------------
def test_stability_without_noise_is_exact(fitted, bar_files):
    paths, _ = bar_files
    result = evidence_stability(fitted, paths[::4], noise_std=0, n_repeats=2, top_k=3)
    assert isinstance(result, StabilityResult)
    n = len(paths[::4])
    for name in ("jaccard", "top1_unchanged", "prediction_unchanged"):
        np.testing.assert_array_equal(getattr(result, name), np.ones(n))
    for name in ("displacement_cells", "displacement_pixels", "similarity_change"):
        np.testing.assert_array_equal(getattr(result, name), np.zeros(n))
    assert result.summary()["mean_jaccard"] == 1.0 and result.top_k == 3


def test_stability_is_the_hand_computation(fitted, bars):
    """One noisy copy per image, drawn as documented, explained by hand."""
    noise_std, top_k = 30.0, 3
    result = evidence_stability(fitted, bars, noise_std=noise_std, n_repeats=1, top_k=top_k,
                                random_state=0)
    seed = check_random_state(0).randint(2**31 - 1)
    rgb = np.repeat(bars[..., None], 3, axis=3)
    noisy = np.stack([
        np.clip(np.rint(x + np.random.default_rng([seed, i]).normal(0, noise_std, x.shape)),
                0, 255).astype(np.uint8)
        for i, x in enumerate(rgb)])
    stride = np.array(fitted.cell_geometry_.stride)
    for i, (clean, moved) in enumerate(zip(fitted.explain(rgb, top_k=top_k),
                                           fitted.explain(noisy, top_k=None))):
        a = [item.prototype for item in clean.evidence]
        everything = moved.evidence_for(clean.predicted, top_k=None)
        b = [item.prototype for item in everything[:top_k]]
        where = {item.prototype: np.array(item.location) for item in everything}
        steps = [where[j] - np.array(item.location) for j, item in zip(a, clean.evidence)]
        assert result.jaccard[i] == len(set(a) & set(b)) / len(set(a) | set(b))
        assert result.top1_unchanged[i] == (a[0] == b[0])
        assert result.prediction_unchanged[i] == (moved.predicted == clean.predicted)
        assert result.displacement_cells[i] == pytest.approx(
            np.mean([np.hypot(*s) for s in steps]))
        # 16 px images on a 16 px model: original pixels are input pixels
        assert result.displacement_pixels[i] == pytest.approx(
            np.mean([np.hypot(*(s * stride)) for s in steps]))
        assert result.similarity_change[i] == pytest.approx(
            np.abs(moved.similarities[a] - clean.similarities[a]).mean())
    # the noise is strong enough that the comparison is not of equal things
    assert result.mean_jaccard < 1 or result.mean_displacement_cells > 0


def test_stability_displacement_in_pixels_follows_the_original_size(fitted, bars):
    """32 px images on a 16 px model: a cell is 2 x stride original pixels."""
    big = np.kron(bars, np.ones((2, 2), dtype=np.uint8))
    result = evidence_stability(fitted, big, noise_std=40, n_repeats=3, random_state=1)
    (sy, sx) = fitted.cell_geometry_.stride
    assert sy == sx
    assert result.displacement_cells.max() > 0
    np.testing.assert_allclose(result.displacement_pixels, 2 * sx * result.displacement_cells)


def test_stability_is_reproducible_and_checks_its_arguments(fitted, bars):
    one = evidence_stability(fitted, bars[:4], noise_std=20, n_repeats=2, random_state=3)
    two = evidence_stability(fitted, bars[:4], noise_std=20, n_repeats=2, random_state=3)
    for name in ("jaccard", "displacement_cells", "similarity_change"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))
    # image i's noise does not depend on the other images
    alone = evidence_stability(fitted, bars[:2], noise_std=20, n_repeats=2, random_state=3)
    np.testing.assert_array_equal(alone.similarity_change, one.similarity_change[:2])
    with pytest.raises(ValueError, match="noise_std"):
        evidence_stability(fitted, bars, noise_std=-1)
    with pytest.raises(ValueError, match="n_repeats"):
        evidence_stability(fitted, bars, n_repeats=0)
    with pytest.raises(ValueError, match="top_k"):
        evidence_stability(fitted, bars, top_k=0)


# ----------------------------------------------------------------------------
# deletion_check
# ----------------------------------------------------------------------------
def test_deletion_boxes_are_the_evidence_and_random_boxes_lie_beside_it(fitted, bars):
    result = deletion_check(fitted, bars, n_random=7, random_state=0)
    assert isinstance(result, DeletionResult)
    n = len(bars)
    assert result.box.shape == (n, 4) and result.random_boxes.shape == (n, 7, 4)
    assert result.random_similarity_drop.shape == result.random_logit_drop.shape == (n, 7)
    for i, e in enumerate(fitted.explain(bars, top_k=1)):
        assert result.prototype[i] == e.evidence[0].prototype
        assert tuple(result.box[i]) == e.evidence[0].box
        assert result.predicted_class[i] == e.predicted
        # another batch: equal to the backbone's float32 rounding (test_numerics)
        assert result.logit[i] == pytest.approx(e.logit(), abs=1e-5)
    x0, y0, x1, y1 = result.box.T
    rx0, ry0, rx1, ry1 = np.moveaxis(result.random_boxes, 2, 0)
    np.testing.assert_array_equal(rx1 - rx0, np.broadcast_to((x1 - x0)[:, None], rx0.shape))
    np.testing.assert_array_equal(ry1 - ry0, np.broadcast_to((y1 - y0)[:, None], ry0.shape))
    assert rx0.min() >= 0 and ry0.min() >= 0 and rx1.max() <= 16 and ry1.max() <= 16
    overlaps = ((rx0 < x1[:, None]) & (rx1 > x0[:, None])
                & (ry0 < y1[:, None]) & (ry1 > y0[:, None]))
    assert not result.random_overlap.any()  # boxes of a few cells always fit beside
    assert not overlaps.any()
    # the positions are spread, not one box repeated
    assert len({tuple(b) for b in result.random_boxes.reshape(-1, 4)}) > n


def test_deletion_drops_are_the_estimators_own_numbers(fitted, bars):
    """Mask by hand with the reported boxes: the same drops from transform."""
    result = deletion_check(fitted, bars, n_random=2, random_state=0)
    rgb = np.repeat(bars[..., None], 3, axis=3)
    W = fitted.coef_
    k = np.searchsorted(fitted.classes_, result.predicted_class)
    for fill in ("mean", (10, 200, 30)):
        result = deletion_check(fitted, bars, fill=fill, n_random=2, random_state=0)
        masked, random = rgb.copy(), rgb.copy()
        for i in range(len(rgb)):
            colour = (np.rint(rgb[i].reshape(-1, 3).mean(0)) if fill == "mean"
                      else np.array(fill))
            x0, y0, x1, y1 = result.box[i]
            masked[i, y0:y1, x0:x1] = colour
            x0, y0, x1, y1 = result.random_boxes[i, 1]
            random[i, y0:y1, x0:x1] = colour
        S, Sm, Sr = (fitted.transform(a) for a in (rgb, masked, random))
        rows, j = np.arange(len(rgb)), result.prototype
        np.testing.assert_allclose(result.similarity_drop, S[rows, j] - Sm[rows, j],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(result.random_similarity_drop[:, 1],
                                   S[rows, j] - Sr[rows, j], rtol=1e-5, atol=1e-5)
        L, Lm = S @ W.T, Sm @ W.T
        np.testing.assert_allclose(result.logit_drop, L[rows, k] - Lm[rows, k],
                                   rtol=1e-5, atol=1e-4)
        assert np.abs(result.similarity_drop).max() > 1e-3  # the masks changed something


def test_deleting_nothing_drops_nothing(fitted):
    """On a constant image, filling with its mean colour changes no pixel: every
    drop is zero, up to the float32 rounding of another batch of the forward
    pass, and no mask "wins" by that rounding."""
    grey = np.full((3, 16, 16), 90, dtype=np.uint8)
    for fill in ("mean", 90):
        result = deletion_check(fitted, grey, fill=fill, n_random=4, random_state=0)
        for drops in (result.similarity_drop, result.random_similarity_drop,
                      result.logit_drop, result.random_logit_drop):
            np.testing.assert_allclose(drops, 0.0, atol=1e-5)
        assert result.similarity_win_rate == 0.0 and result.logit_win_rate == 0.0


def test_deletion_checks_its_arguments(fitted, bars):
    for fill in ("median", -1, 256, (1, 2)):
        with pytest.raises(ValueError, match="fill"):
            deletion_check(fitted, bars, fill=fill)
    with pytest.raises(ValueError, match="n_random"):
        deletion_check(fitted, bars, n_random=0)
    with pytest.raises(ValueError, match="top_k"):
        deletion_check(fitted, bars, explain_kwargs={"top_k": 3})


# ----------------------------------------------------------------------------
# the planted motif: the metrics tell a model that found it from one that did not
# ----------------------------------------------------------------------------
#: the settings the planted-motif measurements were made with: the small-data
#: advice (a constant joint rate, separation 0.4) on the earlier defaults
#: (backbone rate 3e-4, step schedule), which the "auto" rules now replace
EARLIER = dict(lr_backbone=3e-4, joint_lr_schedule="step")
SMALL_DATA = dict(EARLIER, separation_coef=0.4, joint_lr_gamma=1.0)


#: The draw of the two models. Whether a draw finds the motif is the
#: training's question (benchmarks/planted_motif.py: seed 3 is the one of
#: five where the small-data model points at it least, 0.60), not the
#: metrics': these tests need one model that found it and one that did not.
MOTIF_SEED = 0


def _motif_model(**settings):
    from sklearn_protopnet._synthetic import make_motif_images
    from sklearn_protopnet.backbones import SmallCNN

    X, y, _ = make_motif_images(100, seed=MOTIF_SEED)
    with torch.random.fork_rng():
        torch.manual_seed(MOTIF_SEED)
        backbone = SmallCNN(width=8)
    return tiny_classifier(backbone=backbone, image_size=32, prototypes_per_class=2,
                           prototype_dim=16, warm_epochs=2, joint_epochs=20, push_start=100,
                           random_state=MOTIF_SEED, **settings).fit(X, y)


@pytest.mark.slow
def test_metrics_on_the_planted_motif():
    """Small-data settings put the prototypes on the motif (docs/explanations.md):
    masking the evidence box removes the similarity, random boxes do not, and
    the evidence points at the motif. With prototypes initialised on patches
    (which end on background and distractors) the part metrics fall."""
    from sklearn_protopnet._synthetic import MOTIF, make_motif_images

    X_test, _, centres = make_motif_images(20, seed=100 + MOTIF_SEED)
    parts = np.concatenate([centres - MOTIF / 2, centres + MOTIF / 2], axis=1)
    good = _motif_model(**SMALL_DATA)
    deletion = deletion_check(good, X_test, random_state=0)
    assert deletion.similarity_win_rate >= 0.9 and deletion.logit_win_rate >= 0.9
    summary = deletion.summary()
    assert summary["mean_relative_similarity_drop"] > 0.5
    assert abs(summary["mean_relative_random_similarity_drop"]) < 0.1
    good_pointing = pointing_game(good, X_test, parts)
    good_locality = locality(good, X_test, parts)
    assert good_pointing.score >= 0.7 and good_locality.box_overlaps.mean() >= 0.9

    bad = _motif_model(prototype_init="patches", **EARLIER)
    bad_pointing = pointing_game(bad, X_test, parts)
    bad_locality = locality(bad, X_test, parts)
    assert bad_pointing.score <= 0.3
    assert bad_locality.mean_energy < good_locality.mean_energy / 2
    assert bad_locality.mean_iou < good_locality.mean_iou / 2


# ----------------------------------------------------------------------------
# prototype_duplicates
# ----------------------------------------------------------------------------
def _same_patch_groups(clf) -> list[list[int]]:
    groups: dict = {}
    for j, (i, loc) in enumerate(zip(clf.prototype_source_index_, clf.prototype_location_)):
        groups.setdefault((int(i), tuple(int(v) for v in loc)), []).append(j)
    return [g for g in groups.values() if len(g) > 1]


def test_duplicates_of_the_fitted_model_are_its_same_patch_groups(fitted):
    result = prototype_duplicates(fitted, tol=0)
    assert [g.tolist() for g in result.same_patch] == _same_patch_groups(fitted)
    assert [g.tolist() for g in result.groups] == _same_patch_groups(fitted)
    m = fitted.n_prototypes_
    assert result.distance.shape == (m, m)
    np.testing.assert_allclose(result.distance, result.distance.T)
    assert not np.any(np.diag(result.distance))


def test_forced_duplicates_are_reported(fitted):
    clf = copy.deepcopy(fitted)
    m = clf.n_prototypes_
    before = {frozenset(g.tolist()) for g in prototype_duplicates(clf).groups}
    # a, b not duplicates yet; then b becomes a copy of a
    a, b = next((a, b) for a in range(m) for b in range(a + 1, m)
                if not any({a, b} <= g for g in before))
    source = np.array(clf.prototype_source_index_)
    location = np.array(clf.prototype_location_)
    with torch.no_grad():
        clf.module_.prototypes[b] = clf.module_.prototypes[a]
    source[b], location[b] = source[a], location[a]
    clf.prototype_source_index_, clf.prototype_location_ = source, location
    result = prototype_duplicates(clf)
    assert any({a, b} <= set(g.tolist()) for g in result.same_patch)
    assert result.distance[a, b] == 0.0

    # nearly equal vectors on different patches: a duplicate by distance only
    c = next(j for j in range(m) if j not in (a, b))
    d = next(j for j in range(m) if j not in (a, b, c))
    source[d] = source[c]  # the same image, another cell: not the same patch
    location[d] = location[c] + np.array([0, 1]) if location[c][1] == 0 else location[c] - 1
    with torch.no_grad():
        clf.module_.prototypes[d] = clf.module_.prototypes[c] + 1e-6
    result = prototype_duplicates(clf, tol=1e-4)
    assert any({c, d} <= set(g.tolist()) for g in result.groups)
    assert not any({c, d} <= set(g.tolist()) for g in result.same_patch)
    assert result.n_redundant >= 2
    strict = prototype_duplicates(clf, tol=1e-7)
    assert not any({c, d} <= set(g.tolist()) for g in strict.groups)
    with pytest.raises(ValueError, match="tol"):
        prototype_duplicates(clf, tol=-1)


# ----------------------------------------------------------------------------
# prototype_purity
# ----------------------------------------------------------------------------
def test_purity_is_the_count_of_own_class_neighbours(fitted, bar_files):
    paths, labels = bar_files
    shuffled = np.random.default_rng(0).permutation(labels)  # so that purity varies
    for y in (labels, shuffled):
        result = prototype_purity(fitted, paths, y, k=6)
        nearest = fitted.nearest_patches(paths, k=6)
        own = (y[nearest.index] == fitted.prototype_class_[:, None]).sum(axis=1)
        np.testing.assert_array_equal(result.own, own)
        np.testing.assert_allclose(result.purity, own / 6)
        np.testing.assert_array_equal(result.nearest.index, nearest.index)
    assert len(set(result.purity.tolist())) > 1
    # two classes: swapping the labels turns purity p into 1 - p
    flipped = np.where(shuffled == "horizontal", "vertical", "horizontal")
    np.testing.assert_allclose(prototype_purity(fitted, paths, flipped, k=6).purity,
                               1 - result.purity)
    with pytest.raises(ValueError, match="labels"):
        prototype_purity(fitted, paths, labels[:-1])
    with pytest.raises(ValueError, match="not fitted on"):
        prototype_purity(fitted, paths, np.where(labels == "horizontal", "diagonal", labels))


# ----------------------------------------------------------------------------
# pointing_game and locality
# ----------------------------------------------------------------------------
def test_pointing_game_whole_image_corner_and_peak_pixel(fitted, bars):
    n = len(bars)
    whole = pointing_game(fitted, bars, [(0, 0, 16, 16)] * n, top_k=2)
    assert isinstance(whole, PointingGameResult)
    assert whole.hits.shape == (n, 2) and whole.score == 1.0
    # a 4 x 4 corner box, the corner farthest from the peak: never hit
    peaks = _peak_pixels(fitted, bars)
    far = [(12, 12, 16, 16) if x < 8 and y < 8 else (12, 0, 16, 4) if x < 8 else
           (0, 12, 4, 16) if y < 8 else (0, 0, 4, 4) for x, y in peaks]
    assert pointing_game(fitted, bars, far).score == 0.0
    # a one-pixel box on the peak pixel: always hit; the transposed box only
    # where x == y
    exact = pointing_game(fitted, bars, [(x, y, x + 1, y + 1) for x, y in peaks])
    np.testing.assert_array_equal(exact.peak_xy[:, 0], peaks)
    assert exact.score == 1.0
    transposed = pointing_game(fitted, bars, [(y, x, y + 1, x + 1) for x, y in peaks])
    np.testing.assert_array_equal(transposed.hits[:, 0], peaks[:, 0] == peaks[:, 1])
    assert transposed.score < 1.0
    # several boxes per image: a hit if any holds the peak
    assert pointing_game(fitted, bars, [[b, (x, y, x + 1, y + 1)] for b, (x, y) in
                                        zip(far, peaks)]).score == 1.0


def test_pointing_game_tolerance_is_the_distance_from_the_peak_pixel_to_the_box(fitted, bars):
    """A one-pixel box d pixels right of the peak pixel: the peak pixel's centre
    is d - 0.5 from it, so a tolerance of d - 0.5 hits and one just below
    misses; 0 is the strict game. Diagonally the distance is Euclidean."""
    peaks = _peak_pixels(fitted, bars)
    for d in (1, 3):
        boxes = [(x + d, y, x + d + 1, y + 1) for x, y in peaks]
        assert pointing_game(fitted, bars, boxes).score == 0.0
        assert pointing_game(fitted, bars, boxes, tolerance=d - 0.5 - 1e-9).score == 0.0
        result = pointing_game(fitted, bars, boxes, tolerance=d - 0.5)
        assert result.score == 1.0 and result.tolerance == d - 0.5
    diagonal = [(x + 3, y + 4, x + 4, y + 5) for x, y in peaks]  # (2.5, 3.5) away
    assert pointing_game(fitted, bars, diagonal, tolerance=3.5).score == 0.0
    assert pointing_game(fitted, bars, diagonal, tolerance=np.hypot(2.5, 3.5)).score == 1.0
    for bad in (-1, float("nan"), "2"):
        with pytest.raises(ValueError, match="tolerance"):
            pointing_game(fitted, bars, diagonal, tolerance=bad)


def test_pointing_game_on_the_activation_maps_argmax(fitted, bars):
    argmax = []
    for e in fitted.explain(bars, top_k=1):
        a = e.evidence[0].activation_map
        r, c = np.unravel_index(np.argmax(a), a.shape)
        argmax.append((c, r))
    result = pointing_game(fitted, bars, [(x, y, x + 1, y + 1) for x, y in argmax],
                           peak="map")
    assert result.score == 1.0 and result.peak == "map"
    np.testing.assert_array_equal(result.peak_xy[:, 0], argmax)


def test_part_boxes_are_checked(fitted, bars):
    n = len(bars)
    with pytest.raises(ValueError, match="part_boxes has"):
        pointing_game(fitted, bars, [(0, 0, 16, 16)] * (n - 1))
    with pytest.raises(ValueError, match="non-empty"):
        pointing_game(fitted, bars, [[]] * n)
    with pytest.raises(ValueError, match="x0 < x1"):
        locality(fitted, bars, [(5, 0, 5, 16)] * n)
    with pytest.raises(ValueError, match="peak"):
        pointing_game(fitted, bars, [(0, 0, 16, 16)] * n, peak="box")


def test_locality_is_the_share_of_the_activation_in_the_box(fitted, bars):
    n = len(bars)
    whole = locality(fitted, bars, np.tile([0, 0, 16, 16], (n, 1)), top_k=2)
    np.testing.assert_allclose(whole.energy, 1.0)
    assert whole.box_inside.all() and whole.box_overlaps.all()
    explanations = fitted.explain(bars, top_k=2)
    area = np.array([[(b[2] - b[0]) * (b[3] - b[1]) for b in
                      (item.box for item in e.evidence)] for e in explanations])
    np.testing.assert_allclose(whole.iou, area / 256)
    # the left half, by hand
    left = locality(fitted, bars, [(0, 0, 8, 16)] * n, top_k=2)
    for i, e in enumerate(explanations):
        for t, item in enumerate(e.evidence):
            a = item.activation_map.astype(np.float64)
            a -= a.min()
            assert left.energy[i, t] == pytest.approx(a[:, :8].sum() / a.sum())
            x0, y0, x1, y1 = item.box
            inter = max(0, min(x1, 8) - x0) * (y1 - y0)
            assert left.iou[i, t] == pytest.approx(inter / (area[i, t] + 128 - inter))
            assert left.box_inside[i, t] == (x1 <= 8)
            assert left.box_overlaps[i, t] == (x0 < 8)
    assert 0 < left.mean_energy < 1
    # left and right halves share the activation between them
    right = locality(fitted, bars, [(8, 0, 16, 16)] * n, top_k=2)
    np.testing.assert_allclose(left.energy + right.energy, 1.0)


# ----------------------------------------------------------------------------
# the public surface
# ----------------------------------------------------------------------------
def test_docstring_examples_run():
    from sklearn_protopnet import _quality

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    ran = set()
    for test in doctest.DocTestFinder().find(_quality):
        if test.examples:
            runner.run(test)
            ran.add(test.name.rsplit(".", 1)[-1])
    assert runner.summarize(verbose=False).failed == 0
    assert {"evidence_stability", "deletion_check", "prototype_duplicates", "prototype_purity",
            "pointing_game", "locality"} <= ran
    for name in ran:
        assert name in sklearn_protopnet.__all__
