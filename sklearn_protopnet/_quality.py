"""How good are the explanations? Metrics that need no part annotations, and two
that do.

Each function takes a fitted :class:`~sklearn_protopnet.ProtoPNetClassifier`
and returns a frozen record of per-image (or per-prototype) arrays with
summary means (``summary()`` gives them as a dict of floats):

- :func:`evidence_stability`: does the top evidence stay the same, at the
  same place, under small pixel noise? (Huang et al., ICCV 2023; Sacha et al.,
  AAAI 2024)
- :func:`deletion_check`: does masking the evidence box lower the
  prototype's similarity and the logit more than masking random boxes of the
  same size? (Petsiuk et al., BMVC 2018; Samek et al., 2017)
- :func:`prototype_duplicates`: prototypes that are one prototype counted
  twice (ProtoPShare, Rymarczyk et al., 2021, merges them).
- :func:`prototype_purity`: the share of each prototype's nearest patches
  that come from its own class (Chen et al., NeurIPS 2019, supplement S8).
- :func:`pointing_game` and :func:`locality`: for images with part boxes,
  whether the evidence peak falls on a part and how much of the activation
  lies on it (Zhang et al., ECCV 2016; Wang et al., CVPR-W 2020).

They read the explanations only through their public meaning:
``Evidence.prototype``, ``Evidence.location`` (the latent cell where the
prototype's similarity is largest), ``Evidence.box`` (whatever box rule is in
force), ``Evidence.activation_map`` and ``estimator.cell_geometry_``.
docs/quality.md gives the definitions and the figures on synthetic data.

Perturbed images are made from the pixels the user sees (``ImageSource.open``:
RGB, original size, EXIF orientation applied) and given back to the
estimator as uint8 arrays, grouped by size; the unperturbed reference goes
through the same path, so that a zero perturbation changes nothing.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ._images import check_images
from ._prune import NearestPatches

#: Bytes of uint8 pixels given to the estimator in one call, at most (one image
#: more if a single image is larger).
_BUDGET = 1 << 27


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------
def _check_int(name: str, value, low: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_explain_kwargs(explain_kwargs) -> dict:
    if explain_kwargs is None:
        return {}
    if not isinstance(explain_kwargs, dict):
        raise TypeError(f"explain_kwargs must be a dict or None, got {explain_kwargs!r}")
    clash = {"X", "top_k", "classes"} & set(explain_kwargs)
    if clash:
        raise ValueError(f"explain_kwargs may not set {sorted(clash)}: the metric sets them")
    return dict(explain_kwargs)


def _chunks(source, per_image: int = 1, budget: int = _BUDGET):
    """Lists of indices of images of one size, in order, each at most ``budget``
    bytes when every image is held ``per_image`` times."""
    by_size: dict = {}
    for i in range(len(source)):
        by_size.setdefault(source.original_size(i), []).append(i)
    for (width, height), indices in by_size.items():
        step = max(1, budget // (width * height * 3 * per_image))
        for start in range(0, len(indices), step):
            yield indices[start : start + step]


def _pixels(source, indices) -> np.ndarray:
    """(len(indices), H, W, 3) uint8: the images as the user sees them."""
    return np.stack([np.array(source.open(i).convert("RGB"), dtype=np.uint8)
                     for i in indices])


def _seed(random_state) -> int:
    """One integer from ``random_state``; image i draws from ``default_rng([seed, i])``,
    so its draws do not depend on how the images are grouped."""
    return int(check_random_state(random_state).randint(2**31 - 1))


def _cell_xy(geometry, cells: np.ndarray, original_size) -> np.ndarray:
    """(..., 2) (x, y) in original pixels (pixel centres at integers) of the centres
    of latent cells (..., 2) given as (row, column)."""
    cells = np.asarray(cells, dtype=np.float64)
    width, height = original_size
    H, W = geometry.image_size
    row = geometry.offset[0] + cells[..., 0] * geometry.stride[0]
    col = geometry.offset[1] + cells[..., 1] * geometry.stride[1]
    # input pixel p is at original (p + 0.5) * original / input - 0.5, the
    # mapping the upsampling of the similarity maps uses
    x = (col + 0.5) * width / W - 0.5
    y = (row + 0.5) * height / H - 0.5
    return np.stack([x, y], axis=-1)


def _pixel_of(xy: np.ndarray, original_size) -> np.ndarray:
    """(..., 2) integer (x, y): the pixel holding each point, inside the image."""
    width, height = original_size
    ix = np.clip(np.floor(xy[..., 0] + 0.5), 0, width - 1)
    iy = np.clip(np.floor(xy[..., 1] + 0.5), 0, height - 1)
    return np.stack([ix, iy], axis=-1).astype(np.int64)


def _label_index(classes, label) -> int:
    return int(np.flatnonzero(classes == label)[0])


# --------------------------------------------------------------------------
# 1. stability of the evidence under pixel noise
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class StabilityResult:
    """How the top evidence of each image moves under Gaussian pixel noise.

    Every per-image value is a mean over the ``n_repeats`` noisy copies of
    the image. The evidence compared is that of the class predicted for the
    clean image, in the clean and in each noisy copy (also when the noise
    changes the prediction, which :attr:`prediction_unchanged` counts).

    Attributes
    ----------
    jaccard : ndarray of shape (n,)
        ``|A & B| / |A | B|`` of the clean top-k prototype set A and the
        noisy one B.
    top1_unchanged : ndarray of shape (n,)
        Fraction of copies whose top-1 prototype is the clean one.
    prediction_unchanged : ndarray of shape (n,)
        Fraction of copies predicted as the clean image.
    displacement_cells : ndarray of shape (n,)
        Euclidean distance, in latent cells, between the clean and the noisy
        peak cell (``Evidence.location``) of each clean top-k prototype,
        averaged over those prototypes.
    displacement_pixels : ndarray of shape (n,)
        The same distance between the cells' centres mapped to the image's
        original pixels by ``cell_geometry_``.
    similarity_change : ndarray of shape (n,)
        Mean absolute change of the clean top-k prototypes' similarities.
    noise_std : float
        Standard deviation of the noise, in [0, 255] pixel units.
    n_repeats : int
        Noisy copies per image.
    top_k : int
        Prototypes compared per image.

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
    >>> from sklearn_protopnet import evidence_stability
    >>> result = evidence_stability(clf, X, noise_std=0, n_repeats=1, top_k=1)
    >>> result.top1_unchanged_rate  # no noise: nothing moves
    1.0
    >>> result.summary()["mean_jaccard"]
    1.0
    """

    jaccard: np.ndarray
    top1_unchanged: np.ndarray
    prediction_unchanged: np.ndarray
    displacement_cells: np.ndarray
    displacement_pixels: np.ndarray
    similarity_change: np.ndarray
    noise_std: float
    n_repeats: int
    top_k: int

    @property
    def mean_jaccard(self) -> float:
        """Mean of :attr:`jaccard` over the images."""
        return float(np.mean(self.jaccard))

    @property
    def top1_unchanged_rate(self) -> float:
        """Mean of :attr:`top1_unchanged` over the images."""
        return float(np.mean(self.top1_unchanged))

    @property
    def prediction_unchanged_rate(self) -> float:
        """Mean of :attr:`prediction_unchanged` over the images."""
        return float(np.mean(self.prediction_unchanged))

    @property
    def mean_displacement_cells(self) -> float:
        """Mean of :attr:`displacement_cells` over the images."""
        return float(np.mean(self.displacement_cells))

    @property
    def mean_displacement_pixels(self) -> float:
        """Mean of :attr:`displacement_pixels` over the images."""
        return float(np.mean(self.displacement_pixels))

    def summary(self) -> dict:
        """The summary means.

        Returns
        -------
        dict
            Name -> float: ``mean_jaccard``, ``top1_unchanged_rate``,
            ``prediction_unchanged_rate``, ``mean_displacement_cells``,
            ``mean_displacement_pixels``, ``mean_similarity_change``.
        """
        return {
            "mean_jaccard": self.mean_jaccard,
            "top1_unchanged_rate": self.top1_unchanged_rate,
            "prediction_unchanged_rate": self.prediction_unchanged_rate,
            "mean_displacement_cells": self.mean_displacement_cells,
            "mean_displacement_pixels": self.mean_displacement_pixels,
            "mean_similarity_change": float(np.mean(self.similarity_change)),
        }


def _noisy(pixels: np.ndarray, rng, noise_std: float) -> np.ndarray:
    noise = rng.normal(0.0, noise_std, size=pixels.shape)
    return np.clip(np.rint(pixels + noise), 0, 255).astype(np.uint8)


def evidence_stability(estimator, X, noise_std=8.0, n_repeats=5, top_k=5,
                       random_state=None) -> StabilityResult:
    """How stable the top evidence is under small Gaussian pixel noise.

    Each image (as the user sees it: RGB, original size) gets ``n_repeats``
    noisy copies, ``clip(rint(x + N(0, noise_std^2)), 0, 255)`` per pixel and
    channel, and each copy is explained like the clean image. For the class
    predicted on the clean image, the clean top-k evidence is compared with
    the copy's: the overlap of the prototype sets, the top-1 prototype, and
    how far each clean top-k prototype's peak cell moves. A stability score
    under noise in the spirit of Huang et al. (ICCV 2023) and the location,
    activation and ranking changes of Sacha et al. (AAAI 2024).

    Parameters
    ----------
    estimator : ProtoPNetClassifier
        A fitted model.
    X : sequence of image paths, or image array
        As for ``predict``.
    noise_std : float, default=8.0
        Standard deviation of the noise in [0, 255] pixel units; 0 gives
        copies equal to the image.
    n_repeats : int, default=5
        Noisy copies per image.
    top_k : int, default=5
        Evidence items compared, at most the number m of prototypes; with
        ``top_k >= m`` both sets are every prototype and :attr:`jaccard` is 1
        whatever the noise.
    random_state : int, RandomState instance or None, default=None
        Seeds the noise; image i's noise is drawn from its own generator, so
        it does not depend on the other images in X.

    Returns
    -------
    StabilityResult
        Per-image arrays of shape (n,) and their means.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_protopnet import ProtoPNetClassifier, evidence_stability
    >>> from sklearn_protopnet.backbones import SmallCNN
    >>> X = np.random.default_rng(0).integers(0, 60, (16, 16, 16), dtype=np.uint8)
    >>> y = np.arange(16) % 2
    >>> X[y == 0, 6:8, 3:11] = 255; X[y == 1, 3:11, 6:8] = 255
    >>> clf = ProtoPNetClassifier(backbone=SmallCNN(width=4), image_size=16,
    ...                           prototypes_per_class=2, prototype_dim=4, warm_epochs=0,
    ...                           joint_epochs=1, augment=False, random_state=0).fit(X, y)
    >>> result = evidence_stability(clf, X, noise_std=0, n_repeats=1, top_k=2)
    >>> result.jaccard.shape, result.mean_jaccard, result.mean_displacement_pixels
    ((16,), 1.0, 0.0)
    """
    check_is_fitted(estimator, "module_")
    if not isinstance(noise_std, numbers.Real) or isinstance(noise_std, bool) or not (
            np.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    n_repeats = _check_int("n_repeats", n_repeats, 1)
    top_k = min(_check_int("top_k", top_k, 1), int(estimator.n_prototypes_))
    source = check_images(X)
    seed = _seed(random_state)
    geometry = estimator.cell_geometry_
    n = len(source)
    jac, top1, pred, disp_c, disp_p, dsim = (np.zeros((n, n_repeats)) for _ in range(6))
    for indices in _chunks(source, per_image=2):
        pixels = _pixels(source, indices)
        size = source.original_size(indices[0])
        clean = estimator.explain(pixels, top_k=top_k)
        reference = []
        for e in clean:
            protos = [item.prototype for item in e.evidence]
            reference.append((e.predicted, protos,
                              np.array([item.location for item in e.evidence]),
                              e.similarities[protos]))
        rngs = [np.random.default_rng([seed, i]) for i in indices]
        for r in range(n_repeats):
            noisy = np.stack([_noisy(p, g, noise_std) for p, g in zip(pixels, rngs)])
            for i, e, (label, protos, cells, sims) in zip(
                    indices, estimator.explain(noisy, top_k=top_k), reference):
                items = e.evidence_for(label)
                got = [item.prototype for item in items]
                jac[i, r] = len(set(protos) & set(got)) / len(set(protos) | set(got))
                top1[i, r] = got[0] == protos[0]
                pred[i, r] = e.predicted == label
                where = {item.prototype: item.location for item in items}
                if any(j not in where for j in protos):  # fell out of the top k
                    where = {item.prototype: item.location
                             for item in e.evidence_for(label, top_k=None)}
                moved = np.array([where[j] for j in protos])
                disp_c[i, r] = np.hypot(*(moved - cells).T.astype(np.float64)).mean()
                shift = _cell_xy(geometry, moved, size) - _cell_xy(geometry, cells, size)
                disp_p[i, r] = np.hypot(shift[:, 0], shift[:, 1]).mean()
                dsim[i, r] = np.abs(e.similarities[protos] - sims).mean()
    return StabilityResult(
        jaccard=jac.mean(1), top1_unchanged=top1.mean(1), prediction_unchanged=pred.mean(1),
        displacement_cells=disp_c.mean(1), displacement_pixels=disp_p.mean(1),
        similarity_change=dsim.mean(1), noise_std=float(noise_std), n_repeats=n_repeats,
        top_k=top_k,
    )


# --------------------------------------------------------------------------
# 2. deletion of the evidence box against random boxes
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class DeletionResult:
    """What masking the top evidence box does, against random boxes of its size.

    A drop is the clean value minus the masked value: positive when masking
    lowers it.

    Attributes
    ----------
    prototype : ndarray of shape (n,)
        The top evidence item's prototype (predicted class).
    predicted_class : ndarray of shape (n,)
        The class predicted for the clean image, whose logit is followed.
    box : ndarray of shape (n, 4)
        Its box (x0, y0, x1, y1), end-exclusive, in original pixels.
    random_boxes : ndarray of shape (n, n_random, 4)
        The random boxes: the same width and height, inside the image.
    random_overlap : ndarray of shape (n,)
        True where no box of that size fits beside the evidence box, so the
        random boxes were drawn anywhere (overlapping it).
    similarity : ndarray of shape (n,)
        The prototype's similarity on the clean image.
    similarity_drop : ndarray of shape (n,)
        Its drop when the evidence box is masked.
    random_similarity_drop : ndarray of shape (n, n_random)
        Its drop for each random box.
    logit : ndarray of shape (n,)
        The predicted class's logit on the clean image.
    logit_drop : ndarray of shape (n,)
        Its drop when the evidence box is masked.
    random_logit_drop : ndarray of shape (n, n_random)
        Its drop for each random box.

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
    >>> from sklearn_protopnet import deletion_check
    >>> result = deletion_check(clf, X, n_random=2, random_state=0)
    >>> result.random_similarity_drop.shape  # (images, random boxes)
    (8, 2)
    >>> 0.0 <= result.summary()["similarity_win_rate"] <= 1.0
    True
    """

    prototype: np.ndarray
    predicted_class: np.ndarray
    box: np.ndarray
    random_boxes: np.ndarray
    random_overlap: np.ndarray
    similarity: np.ndarray
    similarity_drop: np.ndarray
    random_similarity_drop: np.ndarray
    logit: np.ndarray
    logit_drop: np.ndarray
    random_logit_drop: np.ndarray

    @property
    def similarity_win(self) -> np.ndarray:
        """(n,) bool: the evidence mask lowers the similarity more than the
        median random mask does, by more than 1e-6 relative (float rounding)."""
        return _wins(self.similarity_drop, self.random_similarity_drop, self.similarity)

    @property
    def logit_win(self) -> np.ndarray:
        """(n,) bool: the evidence mask lowers the logit more than the median
        random mask does, by more than 1e-6 relative (float rounding)."""
        return _wins(self.logit_drop, self.random_logit_drop, self.logit)

    @property
    def similarity_win_rate(self) -> float:
        """Fraction of images where :attr:`similarity_win` holds."""
        return float(np.mean(self.similarity_win))

    @property
    def logit_win_rate(self) -> float:
        """Fraction of images where :attr:`logit_win` holds."""
        return float(np.mean(self.logit_win))

    def summary(self) -> dict:
        """The summary means.

        Returns
        -------
        dict
            Name -> float: the win rates, the mean drops (evidence and
            random, relative to the clean similarity for the similarity), and
            the fraction of images whose random boxes had to overlap.
        """
        sim = np.where(self.similarity > 0, self.similarity, np.nan)
        return {
            "similarity_win_rate": self.similarity_win_rate,
            "logit_win_rate": self.logit_win_rate,
            "mean_similarity_drop": float(np.mean(self.similarity_drop)),
            "mean_random_similarity_drop": float(np.mean(self.random_similarity_drop)),
            "mean_relative_similarity_drop": float(np.nanmean(self.similarity_drop / sim)),
            "mean_relative_random_similarity_drop": float(np.nanmean(
                self.random_similarity_drop / sim[:, None])),
            "mean_logit_drop": float(np.mean(self.logit_drop)),
            "mean_random_logit_drop": float(np.mean(self.random_logit_drop)),
            "random_overlap_rate": float(np.mean(self.random_overlap)),
        }


#: Relative margin a drop must beat the median random drop by: the same pixels
#: in another batch of the forward pass can differ in the last float32 bits.
_TIE = 1e-6


def _wins(drop, random_drop, clean) -> np.ndarray:
    margin = _TIE * np.maximum(1.0, np.abs(clean))
    return drop > np.median(random_drop, axis=1) + margin


def _check_fill(fill):
    if isinstance(fill, str):
        if fill != "mean":
            raise ValueError(f'fill must be "mean", a number or an RGB triple, got {fill!r}')
        return fill
    value = np.asarray(fill, dtype=np.float64)
    if value.shape not in ((), (3,)) or not np.all((value >= 0) & (value <= 255)):
        raise ValueError(f"fill must be a number or RGB triple in [0, 255], got {fill!r}")
    return np.broadcast_to(np.rint(value), (3,)).astype(np.uint8)


def _random_boxes(rng, box, original_size, n: int):
    """``n`` boxes of ``box``'s size inside the image, uniformly among the places
    that do not overlap ``box``; anywhere if there is none. Returns (boxes, overlap)."""
    x0, y0, x1, y1 = box
    width, height = original_size
    bw, bh = x1 - x0, y1 - y0
    xs, ys = np.arange(width - bw + 1), np.arange(height - bh + 1)
    free_x = (xs + bw <= x0) | (xs >= x1)  # no overlap along x, whatever y
    free_y = (ys + bh <= y0) | (ys >= y1)
    # non-overlapping places: (free x, any y), disjoint from (other x, free y)
    a = int(free_x.sum()) * len(ys)
    b = int((~free_x).sum()) * int(free_y.sum())
    if a + b == 0:
        left = xs[rng.integers(0, len(xs), n)]
        top = ys[rng.integers(0, len(ys), n)]
        return np.stack([left, top, left + bw, top + bh], axis=1).astype(np.int64), True
    k = rng.integers(0, a + b, n)
    left, top = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    in_a = k < a
    if in_a.any():
        ka = k[in_a]
        left[in_a], top[in_a] = xs[free_x][ka // len(ys)], ys[ka % len(ys)]
    if not in_a.all():
        kb, fy = k[~in_a] - a, ys[free_y]
        left[~in_a], top[~in_a] = xs[~free_x][kb // len(fy)], fy[kb % len(fy)]
    overlap = False
    boxes = np.stack([left, top, left + bw, top + bh], axis=1).astype(np.int64)
    return boxes, overlap


def _masked(pixels: np.ndarray, box, value) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    out = pixels.copy()
    out[y0:y1, x0:x1] = value
    return out


def deletion_check(estimator, X, fill="mean", n_random=10, random_state=None,
                   explain_kwargs=None) -> DeletionResult:
    """Mask the top evidence box; compare with masking random boxes of its size.

    For each image, the top evidence item of the predicted class (largest
    contribution) gives a prototype j and a box. The box is filled with
    ``fill`` and the drop of prototype j's similarity and of the predicted
    class's logit is measured; the same is done for ``n_random`` boxes of the
    same width and height drawn uniformly among the places inside the image
    that do not overlap the evidence box (anywhere when there is none,
    flagged in ``random_overlap``). If the box is where the prototype's
    evidence is, masking it should lower the similarity more than most random
    masks: the deletion test of Petsiuk et al. (RISE, BMVC 2018) and the
    region perturbation of Samek et al. (IEEE TNNLS 2017), applied to one box.

    Parameters
    ----------
    estimator : ProtoPNetClassifier
        A fitted model.
    X : sequence of image paths, or image array
        As for ``predict``.
    fill : "mean", float or (float, float, float), default="mean"
        What the masked pixels become: the image's mean colour, or a grey
        level or RGB colour in [0, 255].
    n_random : int, default=10
        Random boxes per image.
    random_state : int, RandomState instance or None, default=None
        Seeds the random boxes; image i draws from its own generator.
    explain_kwargs : dict or None, default=None
        Passed on to ``estimator.explain`` for the evidence boxes (for
        example ``{"box_percentile": 90}``); None uses its defaults.

    Returns
    -------
    DeletionResult
        Per-image drops, the boxes, and the win rates.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_protopnet import ProtoPNetClassifier, deletion_check
    >>> from sklearn_protopnet.backbones import SmallCNN
    >>> X = np.random.default_rng(0).integers(0, 60, (16, 16, 16), dtype=np.uint8)
    >>> y = np.arange(16) % 2
    >>> X[y == 0, 6:8, 3:11] = 255; X[y == 1, 3:11, 6:8] = 255
    >>> clf = ProtoPNetClassifier(backbone=SmallCNN(width=4), image_size=16,
    ...                           prototypes_per_class=2, prototype_dim=4, warm_epochs=0,
    ...                           joint_epochs=1, augment=False, random_state=0).fit(X, y)
    >>> result = deletion_check(clf, X[:4], n_random=3, random_state=0)
    >>> result.similarity_drop.shape, result.random_similarity_drop.shape
    ((4,), (4, 3))
    >>> 0.0 <= result.similarity_win_rate <= 1.0
    True
    """
    check_is_fitted(estimator, "module_")
    fill = _check_fill(fill)
    n_random = _check_int("n_random", n_random, 1)
    kwargs = _check_explain_kwargs(explain_kwargs)
    source = check_images(X)
    seed = _seed(random_state)
    coef = estimator.coef_
    classes = estimator.classes_
    n = len(source)
    proto = np.zeros(n, dtype=np.int64)
    predicted = np.empty(n, dtype=classes.dtype)
    boxes = np.zeros((n, 4), dtype=np.int64)
    rboxes = np.zeros((n, n_random, 4), dtype=np.int64)
    overlap = np.zeros(n, dtype=bool)
    sim, sim_drop, logit, logit_drop = (np.zeros(n) for _ in range(4))
    rsim_drop, rlogit_drop = np.zeros((n, n_random)), np.zeros((n, n_random))
    per = 2 + n_random
    for indices in _chunks(source, per_image=per + 1):
        pixels = _pixels(source, indices)
        size = source.original_size(indices[0])
        clean = estimator.explain(pixels, top_k=1, **kwargs)
        stack, ks = [], []
        for i, image, e in zip(indices, pixels, clean):
            item = e.evidence[0]
            proto[i], predicted[i] = item.prototype, e.predicted
            boxes[i] = item.box
            rboxes[i], overlap[i] = _random_boxes(np.random.default_rng([seed, i]),
                                                  boxes[i], size, n_random)
            value = (np.rint(image.reshape(-1, 3).mean(0)).astype(np.uint8)
                     if isinstance(fill, str) else fill)
            stack += [image, _masked(image, boxes[i], value)]
            stack += [_masked(image, b, value) for b in rboxes[i]]
            ks.append(_label_index(classes, e.predicted))
        S = estimator.transform(np.stack(stack)).reshape(len(indices), per, -1)
        L = S @ coef.T
        for b, (i, k) in enumerate(zip(indices, ks)):
            j = proto[i]
            sim[i], logit[i] = S[b, 0, j], L[b, 0, k]
            sim_drop[i], logit_drop[i] = S[b, 0, j] - S[b, 1, j], L[b, 0, k] - L[b, 1, k]
            rsim_drop[i] = S[b, 0, j] - S[b, 2:, j]
            rlogit_drop[i] = L[b, 0, k] - L[b, 2:, k]
    return DeletionResult(
        prototype=proto, predicted_class=predicted, box=boxes, random_boxes=rboxes,
        random_overlap=overlap, similarity=sim, similarity_drop=sim_drop,
        random_similarity_drop=rsim_drop, logit=logit, logit_drop=logit_drop,
        random_logit_drop=rlogit_drop,
    )


# --------------------------------------------------------------------------
# 3. duplicate prototypes
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class DuplicatesResult:
    """Groups of prototypes that are, or nearly are, one prototype.

    Attributes
    ----------
    groups : list of ndarray
        Each a sorted array of two or more prototype indices, connected by
        either criterion (same source patch, or latent vectors closer than
        ``tol``); ordered by their first member.
    same_patch : list of ndarray
        The groups of prototypes projected onto the same patch (same
        ``prototype_source_index_`` and ``prototype_location_``).
    distance : ndarray of shape (m, m)
        Euclidean distances between the prototypes' latent vectors.
    tol : float
        The distance below which two prototypes are duplicates.

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
    >>> from sklearn_protopnet import prototype_duplicates
    >>> result = prototype_duplicates(clf)
    >>> result.distance.shape  # between the 2 prototypes
    (2, 2)
    >>> result.n_redundant == sum(len(g) - 1 for g in result.groups)
    True
    """

    groups: list
    same_patch: list
    distance: np.ndarray
    tol: float

    @property
    def n_redundant(self) -> int:
        """Prototypes a merge would remove: the sum of ``len(group) - 1``."""
        return int(sum(len(g) - 1 for g in self.groups))

    def summary(self) -> dict:
        """The counts.

        Returns
        -------
        dict
            ``n_groups``, ``n_redundant``, ``n_same_patch_groups`` and the
            smallest distance between two prototypes, ``min_distance``.
        """
        m = len(self.distance)
        off = self.distance[~np.eye(m, dtype=bool)]
        return {
            "n_groups": float(len(self.groups)),
            "n_redundant": float(self.n_redundant),
            "n_same_patch_groups": float(len(self.same_patch)),
            "min_distance": float(off.min()) if off.size else float("nan"),
        }


def _components(m: int, edges) -> list:
    parent = list(range(m))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in edges:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict = {}
    for j in range(m):
        members.setdefault(find(j), []).append(j)
    groups = [np.array(g, dtype=np.int64) for g in members.values() if len(g) > 1]
    return sorted(groups, key=lambda g: int(g[0]))


def prototype_duplicates(estimator, tol=1e-4) -> DuplicatesResult:
    """Groups of duplicate prototypes: the same source patch, or nearly the same vector.

    Two prototypes are duplicates when they were projected onto the same
    training patch (same ``prototype_source_index_`` and
    ``prototype_location_``, hence the same vector) or when their latent
    vectors (``module_.prototypes``) are closer than ``tol`` in Euclidean
    distance; groups are the connected components of that relation. Such
    prototypes are one prototype counted several times, a known failure of
    ProtoPNet reported by users of the reference code; ProtoPShare
    (Rymarczyk et al., KDD 2021) merges similar prototypes, and
    ``ProtoPNetClassifier.prune`` merges same-patch duplicates.

    Parameters
    ----------
    estimator : ProtoPNetClassifier
        A fitted model.
    tol : float, default=1e-4
        Latent distance below which two prototypes are duplicates; the latent
        features lie in (0, 1), so distances between distinct patches are
        usually of order 0.1 to 1. 0 keeps the same-patch criterion only.

    Returns
    -------
    DuplicatesResult
        The groups and the distance matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_protopnet import ProtoPNetClassifier, prototype_duplicates
    >>> from sklearn_protopnet.backbones import SmallCNN
    >>> X = np.random.default_rng(0).integers(0, 60, (16, 16, 16), dtype=np.uint8)
    >>> y = np.arange(16) % 2
    >>> X[y == 0, 6:8, 3:11] = 255; X[y == 1, 3:11, 6:8] = 255
    >>> clf = ProtoPNetClassifier(backbone=SmallCNN(width=4), image_size=16,
    ...                           prototypes_per_class=2, prototype_dim=4, warm_epochs=0,
    ...                           joint_epochs=1, augment=False, random_state=0).fit(X, y)
    >>> result = prototype_duplicates(clf)
    >>> result.distance.shape
    (4, 4)
    >>> all(len(group) >= 2 for group in result.groups)
    True
    """
    check_is_fitted(estimator, "module_")
    if not isinstance(tol, numbers.Real) or isinstance(tol, bool) or not (
            np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    vectors = estimator.module_.prototypes.detach().cpu().double().numpy()
    m = len(vectors)
    vectors = vectors.reshape(m, -1)
    distance = cdist(vectors, vectors)  # direct differences: exactly 0 for equal vectors
    source = np.asarray(estimator.prototype_source_index_).reshape(m)
    location = np.asarray(estimator.prototype_location_).reshape(m, 2)
    same = ((source[:, None] == source[None, :])
            & (location[:, None, :] == location[None, :, :]).all(-1))
    upper = np.triu(np.ones((m, m), dtype=bool), k=1)
    patch_edges = np.argwhere(same & upper)
    close_edges = np.argwhere((distance < tol) & upper)
    return DuplicatesResult(
        groups=_components(m, np.concatenate([patch_edges, close_edges])),
        same_patch=_components(m, patch_edges),
        distance=distance,
        tol=float(tol),
    )


# --------------------------------------------------------------------------
# 4. purity: the pruning criterion as a score
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PurityResult:
    """Each prototype's share of own-class images among its nearest patches.

    Attributes
    ----------
    purity : ndarray of shape (m,)
        Fraction of the prototype's k nearest patches (one per image) that
        come from images of its own class.
    own : ndarray of shape (m,)
        Their number.
    neighbour_labels : ndarray of shape (m, k)
        The labels of those images, nearest first.
    prototype_class : ndarray of shape (m,)
        Each prototype's class.
    nearest : NearestPatches
        The nearest patches the score was counted on.
    k : int
        Patches per prototype.

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
    >>> from sklearn_protopnet import prototype_purity
    >>> result = prototype_purity(clf, X, y, k=4)
    >>> result.purity.shape
    (2,)
    >>> bool(0.0 <= result.mean_purity <= 1.0)
    True
    """

    purity: np.ndarray
    own: np.ndarray
    neighbour_labels: np.ndarray
    prototype_class: np.ndarray
    nearest: NearestPatches
    k: int

    @property
    def mean_purity(self) -> float:
        """Mean of :attr:`purity` over the prototypes."""
        return float(np.mean(self.purity))

    def summary(self) -> dict:
        """The summary figures.

        Returns
        -------
        dict
            ``mean_purity``, ``min_purity`` and ``impure_fraction`` (the
            share of prototypes with purity below one half).
        """
        return {
            "mean_purity": self.mean_purity,
            "min_purity": float(np.min(self.purity)),
            "impure_fraction": float(np.mean(self.purity < 0.5)),
        }


def prototype_purity(estimator, X, y, k=6) -> PurityResult:
    """The fraction of each prototype's k nearest patches that are of its class.

    The nearest patches are ``estimator.nearest_patches(X, k)``: for each
    prototype, the k images of X with the smallest latent distance to it,
    one patch per image. The paper prunes a prototype when too few of them
    come from its own class (Chen et al., NeurIPS 2019, supplement S8;
    ``ProtoPNetClassifier.prune``); here the fraction is the score.

    Parameters
    ----------
    estimator : ProtoPNetClassifier
        A fitted model.
    X : sequence of image paths, or image array
        Labelled images, usually the training set.
    y : array-like of shape (n,)
        Their labels, among ``classes_``.
    k : int, default=6
        Nearest patches per prototype, at most the number of images.

    Returns
    -------
    PurityResult
        Per-prototype purity and the neighbours it was counted on.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_protopnet import ProtoPNetClassifier, prototype_purity
    >>> from sklearn_protopnet.backbones import SmallCNN
    >>> X = np.random.default_rng(0).integers(0, 60, (16, 16, 16), dtype=np.uint8)
    >>> y = np.arange(16) % 2
    >>> X[y == 0, 6:8, 3:11] = 255; X[y == 1, 3:11, 6:8] = 255
    >>> clf = ProtoPNetClassifier(backbone=SmallCNN(width=4), image_size=16,
    ...                           prototypes_per_class=2, prototype_dim=4, warm_epochs=0,
    ...                           joint_epochs=1, augment=False, random_state=0).fit(X, y)
    >>> result = prototype_purity(clf, X, y, k=4)
    >>> result.purity.shape, result.neighbour_labels.shape
    ((4,), (4, 4))
    """
    check_is_fitted(estimator, "module_")
    k = _check_int("k", k, 1)
    y = column_or_1d(y)
    unknown = sorted(set(y.tolist()) - set(estimator.classes_.tolist()), key=str)
    if unknown:
        raise ValueError(f"y holds labels the model was not fitted on: {unknown[:5]}")
    n = len(check_images(X))
    if len(y) != n:
        raise ValueError(f"X has {n} images but y has {len(y)} labels")
    nearest = estimator.nearest_patches(X, k=k)
    labels = y[nearest.index]
    prototype_class = np.asarray(estimator.prototype_class_)
    own = (labels == prototype_class[:, None]).sum(axis=1)
    return PurityResult(purity=own / k, own=own, neighbour_labels=labels,
                        prototype_class=prototype_class, nearest=nearest, k=k)


# --------------------------------------------------------------------------
# 5-6. with part boxes: pointing game and locality
# --------------------------------------------------------------------------
def _check_part_boxes(part_boxes, n: int) -> list:
    """One float array (b, 4) of (x0, y0, x1, y1) per image, b >= 1."""
    if isinstance(part_boxes, np.ndarray) and part_boxes.ndim == 2:
        part_boxes = list(part_boxes)
    if isinstance(part_boxes, (str, bytes)) or not hasattr(part_boxes, "__len__"):
        raise TypeError("part_boxes must be a sequence: one box, or a list of boxes, per image")
    if len(part_boxes) != n:
        raise ValueError(f"X has {n} images but part_boxes has {len(part_boxes)} entries")
    out = []
    for i, entry in enumerate(part_boxes):
        boxes = np.asarray(entry, dtype=np.float64)
        if boxes.ndim == 1:
            boxes = boxes[None, :]
        if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
            raise ValueError(
                f"part_boxes[{i}] must be one (x0, y0, x1, y1) box or a non-empty list of "
                f"them; got {entry!r}")
        if not np.isfinite(boxes).all() or np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(
                boxes[:, 3] <= boxes[:, 1]):
            raise ValueError(f"part_boxes[{i}] needs finite boxes with x0 < x1 and y0 < y1, "
                             f"got {entry!r}")
        out.append(boxes)
    return out


def _inside(points: np.ndarray, boxes: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """(k,) bool: integer (x, y) pixels (k, 2) inside any end-exclusive box (b, 4),
    or with ``tolerance`` > 0, whose centre is at most that far from one."""
    x, y = points[:, None, 0], points[:, None, 1]
    inside = ((boxes[None, :, 0] <= x) & (x < boxes[None, :, 2])
              & (boxes[None, :, 1] <= y) & (y < boxes[None, :, 3])).any(axis=1)
    if tolerance > 0:
        cx, cy = x + 0.5, y + 0.5
        dx = np.maximum(np.maximum(boxes[None, :, 0] - cx, cx - boxes[None, :, 2]), 0.0)
        dy = np.maximum(np.maximum(boxes[None, :, 1] - cy, cy - boxes[None, :, 3]), 0.0)
        inside |= (np.hypot(dx, dy) <= tolerance).any(axis=1)
    return inside


def _union_mask(boxes: np.ndarray, original_size) -> np.ndarray:
    """(height, width) bool: the pixels whose index lies in any box."""
    width, height = original_size
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in np.ceil(boxes).astype(np.int64):
        mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return mask


def _top_evidence(estimator, X, top_k, kwargs):
    top_k = min(_check_int("top_k", top_k, 1), int(estimator.n_prototypes_))
    explanations = estimator.explain(X, top_k=top_k, **kwargs)
    return top_k, explanations


@dataclass(frozen=True, eq=False)
class PointingGameResult:
    """Whether the peak of each top evidence item falls inside a part box.

    Attributes
    ----------
    hits : ndarray of shape (n, top_k)
        True where the item's peak pixel lies in one of the image's boxes.
    peak_xy : ndarray of shape (n, top_k, 2)
        The peak pixel (x, y), in original pixels.
    prototype : ndarray of shape (n, top_k)
        The items' prototypes, largest contribution first.
    peak : {"cell", "map"}
        How the peak was found.
    tolerance : float
        The distance in original pixels within which a peak next to a box
        still hit.

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
    >>> from sklearn_protopnet import pointing_game
    >>> result = pointing_game(clf, X, [(0, 0, 16, 16)] * 8)  # the whole image
    >>> result.score, result.hits.shape
    (1.0, (8, 1))
    """

    hits: np.ndarray
    peak_xy: np.ndarray
    prototype: np.ndarray
    peak: str
    tolerance: float = 0.0

    @property
    def score(self) -> float:
        """Mean of :attr:`hits` over images and items: with ``top_k=1``, the
        fraction of images whose top evidence points at a part."""
        return float(np.mean(self.hits))

    @property
    def any_hit_rate(self) -> float:
        """Fraction of images where at least one of the top-k items hits."""
        return float(np.mean(self.hits.any(axis=1)))

    def summary(self) -> dict:
        """The scores.

        Returns
        -------
        dict
            ``score``, ``any_hit_rate`` and ``top1_score`` (first item only).
        """
        return {"score": self.score, "any_hit_rate": self.any_hit_rate,
                "top1_score": float(np.mean(self.hits[:, 0]))}


def pointing_game(estimator, X, part_boxes, top_k=1, peak="cell",
                  tolerance=0.0) -> PointingGameResult:
    """The pointing game: does the peak of the top evidence fall on a part?

    For each image and each of its top-k evidence items of the predicted
    class, the peak pixel is the pixel holding the centre of the item's peak
    cell (``Evidence.location``) mapped to original pixels by
    ``cell_geometry_`` (``peak="cell"``), or the argmax of its upsampled
    ``activation_map`` (``peak="map"``). It is a hit when it lies inside one
    of the image's part boxes, or, with a ``tolerance``, when the peak
    pixel's centre is at most that many pixels from one. The pointing game
    of Zhang et al. ("Top-down neural attention by excitation backprop",
    ECCV 2016 / IJCV 2018), with the prototype's peak as the pointing; their
    hits allow 15 pixels of tolerance on images of a few hundred pixels.

    Parameters
    ----------
    estimator : ProtoPNetClassifier
        A fitted model.
    X : sequence of image paths, or image array
        As for ``predict``.
    part_boxes : array of shape (n, 4), or list of boxes or lists of boxes
        Per image, one (x0, y0, x1, y1) box, end-exclusive, in original
        pixels (as ``Evidence.box``), or a non-empty list of such boxes.
    top_k : int, default=1
        Evidence items scored per image.
    peak : {"cell", "map"}, default="cell"
        Where an item points: its peak cell's centre, or its activation
        map's largest pixel.
    tolerance : float, default=0
        Original pixels by which a peak may miss a box and still hit (the
        distance from the peak pixel's centre to the box); 0 asks for the
        peak inside.

    Returns
    -------
    PointingGameResult
        Per-item hits and peaks, and the score.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_protopnet import ProtoPNetClassifier, pointing_game
    >>> from sklearn_protopnet.backbones import SmallCNN
    >>> X = np.random.default_rng(0).integers(0, 60, (16, 16, 16), dtype=np.uint8)
    >>> y = np.arange(16) % 2
    >>> X[y == 0, 6:8, 3:11] = 255; X[y == 1, 3:11, 6:8] = 255
    >>> clf = ProtoPNetClassifier(backbone=SmallCNN(width=4), image_size=16,
    ...                           prototypes_per_class=2, prototype_dim=4, warm_epochs=0,
    ...                           joint_epochs=1, augment=False, random_state=0).fit(X, y)
    >>> pointing_game(clf, X, [(0, 0, 16, 16)] * 16).score  # the whole image
    1.0
    """
    check_is_fitted(estimator, "module_")
    if peak not in ("cell", "map"):
        raise ValueError(f'peak must be "cell" or "map", got {peak!r}')
    if (not isinstance(tolerance, numbers.Real) or isinstance(tolerance, bool)
            or not np.isfinite(tolerance) or tolerance < 0):
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    boxes = _check_part_boxes(part_boxes, len(check_images(X)))
    top_k, explanations = _top_evidence(estimator, X, top_k, {})
    geometry = estimator.cell_geometry_
    n = len(explanations)
    hits = np.zeros((n, top_k), dtype=bool)
    peaks = np.zeros((n, top_k, 2), dtype=np.int64)
    proto = np.zeros((n, top_k), dtype=np.int64)
    for i, e in enumerate(explanations):
        if peak == "cell":
            cells = np.array([item.location for item in e.evidence])
            peaks[i] = _pixel_of(_cell_xy(geometry, cells, e.original_size), e.original_size)
        else:
            for t, item in enumerate(e.evidence):
                a = item.activation_map
                row, col = np.unravel_index(int(np.argmax(a)), a.shape)
                peaks[i, t] = (col, row)
        proto[i] = [item.prototype for item in e.evidence]
        hits[i] = _inside(peaks[i], boxes[i], float(tolerance))
    return PointingGameResult(hits=hits, peak_xy=peaks, prototype=proto, peak=peak,
                              tolerance=float(tolerance))


@dataclass(frozen=True, eq=False)
class LocalityResult:
    """How much of each top evidence item's activation lies on a part.

    Attributes
    ----------
    energy : ndarray of shape (n, top_k)
        Share of the item's activation map, minus its minimum, that lies
        inside the union of the image's part boxes (the area share of that
        union for a constant map).
    iou : ndarray of shape (n, top_k)
        Intersection over union of the item's evidence box and that union.
    box_inside : ndarray of shape (n, top_k)
        True where the evidence box lies entirely inside the union.
    box_overlaps : ndarray of shape (n, top_k)
        True where the evidence box and the union share a pixel.
    prototype : ndarray of shape (n, top_k)
        The items' prototypes, largest contribution first.

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
    >>> from sklearn_protopnet import locality
    >>> result = locality(clf, X, [(0, 0, 16, 16)] * 8)  # the whole image
    >>> round(result.mean_energy, 6)
    1.0
    """

    energy: np.ndarray
    iou: np.ndarray
    box_inside: np.ndarray
    box_overlaps: np.ndarray
    prototype: np.ndarray

    @property
    def mean_energy(self) -> float:
        """Mean of :attr:`energy` over images and items."""
        return float(np.mean(self.energy))

    @property
    def mean_iou(self) -> float:
        """Mean of :attr:`iou` over images and items."""
        return float(np.mean(self.iou))

    def summary(self) -> dict:
        """The summary means.

        Returns
        -------
        dict
            ``mean_energy``, ``mean_iou``, ``box_inside_rate`` and
            ``box_overlap_rate``.
        """
        return {"mean_energy": self.mean_energy, "mean_iou": self.mean_iou,
                "box_inside_rate": float(np.mean(self.box_inside)),
                "box_overlap_rate": float(np.mean(self.box_overlaps))}


def locality(estimator, X, part_boxes, top_k=1, explain_kwargs=None) -> LocalityResult:
    """The share of the top evidence's activation that lies on the part.

    For each image and each of its top-k evidence items of the predicted
    class, with ``a = activation_map - activation_map.min()`` (non-negative)
    and U the union of the image's part boxes: ``energy = a[U].sum() /
    a.sum()`` (the area share of U when the map is constant), and the
    evidence box's intersection over union with U, whether it lies inside U
    and whether it touches it. The energy-based pointing game of Score-CAM
    (Wang et al., CVPR workshops 2020), on a prototype's activation map.

    Parameters
    ----------
    estimator : ProtoPNetClassifier
        A fitted model.
    X : sequence of image paths, or image array
        As for ``predict``.
    part_boxes : array of shape (n, 4), or list of boxes or lists of boxes
        As for :func:`pointing_game`.
    top_k : int, default=1
        Evidence items scored per image.
    explain_kwargs : dict or None, default=None
        Passed on to ``estimator.explain`` for the evidence boxes (for
        example ``{"box_percentile": 90}``); None uses its defaults.

    Returns
    -------
    LocalityResult
        Per-item energy share and box overlap.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_protopnet import ProtoPNetClassifier, locality
    >>> from sklearn_protopnet.backbones import SmallCNN
    >>> X = np.random.default_rng(0).integers(0, 60, (16, 16, 16), dtype=np.uint8)
    >>> y = np.arange(16) % 2
    >>> X[y == 0, 6:8, 3:11] = 255; X[y == 1, 3:11, 6:8] = 255
    >>> clf = ProtoPNetClassifier(backbone=SmallCNN(width=4), image_size=16,
    ...                           prototypes_per_class=2, prototype_dim=4, warm_epochs=0,
    ...                           joint_epochs=1, augment=False, random_state=0).fit(X, y)
    >>> result = locality(clf, X, [(0, 0, 16, 16)] * 16)  # the whole image
    >>> result.mean_energy, bool(result.box_inside.all())
    (1.0, True)
    """
    check_is_fitted(estimator, "module_")
    kwargs = _check_explain_kwargs(explain_kwargs)
    boxes = _check_part_boxes(part_boxes, len(check_images(X)))
    top_k, explanations = _top_evidence(estimator, X, top_k, kwargs)
    n = len(explanations)
    energy, iou = np.zeros((n, top_k)), np.zeros((n, top_k))
    inside = np.zeros((n, top_k), dtype=bool)
    overlaps = np.zeros((n, top_k), dtype=bool)
    proto = np.zeros((n, top_k), dtype=np.int64)
    for i, e in enumerate(explanations):
        mask = _union_mask(boxes[i], e.original_size)
        area = int(mask.sum())
        for t, item in enumerate(e.evidence):
            a = item.activation_map.astype(np.float64)
            a = a - a.min()
            total = a.sum()
            energy[i, t] = a[mask].sum() / total if total > 0 else mask.mean()
            x0, y0, x1, y1 = item.box
            inter = int(mask[y0:y1, x0:x1].sum())
            box_area = (x1 - x0) * (y1 - y0)
            union = box_area + area - inter
            iou[i, t] = inter / union if union else 0.0
            inside[i, t] = inter == box_area
            overlaps[i, t] = inter > 0
            proto[i, t] = item.prototype
    return LocalityResult(energy=energy, iou=iou, box_inside=inside, box_overlaps=overlaps,
                          prototype=proto)


__all__ = [
    "DeletionResult",
    "DuplicatesResult",
    "LocalityResult",
    "PointingGameResult",
    "PurityResult",
    "StabilityResult",
    "deletion_check",
    "evidence_stability",
    "locality",
    "pointing_game",
    "prototype_duplicates",
    "prototype_purity",
]
