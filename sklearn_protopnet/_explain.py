"""Explanations as data: "this" part of the image looks like "that" prototype.

Every number here is read from the one inference pass
(:func:`._batches.forward_batches`) that ``transform`` and ``decision_function``
use: the similarity of prototype j is the pooled similarity of that pass,
the weight is ``coef_[k, j]``, the contribution their product, and over all
prototypes the contributions add up to the logit. The box of an evidence item
comes from the same pass's similarity map, upsampled by the one box rule of
:mod:`._geometry`, which also gives the prototypes' own boxes at the end of
``fit``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from PIL import Image

from ._batches import forward_batches
from ._geometry import CellGeometry, box_from_map, peak_pixel, upsample_map
from ._images import ImageDataset, ImageSource
from ._maths import softmax
from ._params import check_value
from ._render import scoring_sheet

#: Largest side, in pixels, of the stored prototype crops and source thumbnails.
CROP_MAX_SIDE = 128
THUMBNAIL_MAX_SIDE = 160
#: ``box_percentile="auto"`` of each box rule. The paper's rectangle keeps
#: its 95. The peak rule's region is one connected piece around the peak
#: cell, so at 95 it holds at most 5% of the image, often less than the part
#: the cell's score comes from: on decoy images (parts 4% of the image) the
#: top box held the part's centre in a median 0.74 of test images at 95 and
#: 0.88 at 90, still a median 7% of the image (docs/explanations.md, "The
#: rules among decoys").
AUTO_BOX_PERCENTILE = {"peak": 90.0, "percentile": 95.0}


# --------------------------------------------------------------------------
# the data
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)  # arrays inside: compared and hashed by identity
class Evidence:
    """One prototype's part in one class's logit for one image.

    Attributes
    ----------
    prototype : int
        Index of the prototype (a column of ``transform`` and ``coef_``).
    prototype_class : label
        The class the prototype belongs to.
    explained_class : label
        The class whose logit this item is a term of.
    similarity : float
        ``transform(X)[i, prototype]``: the largest similarity of the
        prototype over the image's cells.
    weight : float
        ``coef_[k, prototype]`` for the explained class k.
    contribution : float
        ``similarity * weight``.
    box : (int, int, int, int)
        (x0, y0, x1, y1), end-exclusive, in pixels of the input image as the
        user sees it (original size, EXIF orientation applied): the box rule
        applied to :attr:`activation_map`. Computed on first access (it needs
        the full-size map) and then kept.
    location : (int, int)
        (row, column) of the latent cell where the prototype fired most.
    similarity_map : ndarray of shape (h, w)
        The prototype's similarity at every latent cell.
    original_size : (int, int)
        (width, height) of the image as the user sees it.
    geometry : CellGeometry
        Where the latent cells lie on the network's input.
    percentile : float
        The box rule's percentile of :attr:`box`.
    box_rule : {"peak", "percentile"}
        The box rule of :attr:`box` (see ``ProtoPNetClassifier(box_rule=...)``).

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
    >>> item = clf.explain(X[:1])[0].evidence[0]  # the top term of the logit
    >>> bool(np.isclose(item.contribution, item.similarity * item.weight))
    True
    >>> x0, y0, x1, y1 = item.box  # in the pixels of X[0]
    >>> item.activation_map.shape  # the similarity map upsampled to X[0]
    (16, 16)
    """

    prototype: int
    prototype_class: object
    explained_class: object
    similarity: float
    weight: float
    contribution: float
    location: tuple[int, int]
    similarity_map: np.ndarray = field(repr=False)
    original_size: tuple[int, int] = field(repr=False)
    geometry: CellGeometry = field(repr=False)
    percentile: float = field(repr=False, default=95.0)
    box_rule: str = field(repr=False, default="peak")

    @cached_property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) by the box rule on :attr:`activation_map`."""
        return box_from_map(self.activation_map, self.percentile,
                            self.peak if self.box_rule == "peak" else None)

    @property
    def peak(self) -> tuple[int, int]:
        """(row, column), in original pixels, of the centre of the peak cell
        (:attr:`location`): where the prototype's score comes from."""
        return peak_pixel(self.location, self.geometry, self.original_size)

    @property
    def activation_map(self) -> np.ndarray:
        """The similarity map upsampled to the input image, (height, width).

        Computed on access, so that explaining large photos does not hold one
        full-size float map per evidence item in memory.
        """
        width, height = self.original_size
        return upsample_map(self.similarity_map, self.geometry, (height, width))


@dataclass(frozen=True, eq=False)  # arrays inside: compared and hashed by identity
class PrototypeParts:
    """The "that" of every prototype, as stored in the fitted estimator.

    Attributes
    ----------
    prototype_class : ndarray of shape (m,)
        Class label of each prototype.
    source_index : ndarray of shape (m,)
        Index, into the X given to fit, of each prototype's source image.
    source_path : list of str or None
        The source image's path (None for array input).
    box : ndarray of shape (m, 4)
        (x0, y0, x1, y1), end-exclusive, in the source image's original pixels.
    crop : list of uint8 ndarrays (h, w, 3)
        The pixels inside each box.
    thumbnail : list of uint8 ndarrays (h, w, 3)
        Each whole source image, shrunk.
    original_size : ndarray of shape (m, 2)
        (width, height) of each source image as the user sees it.
    percentile : float
        The box rule's percentile of ``box`` and ``crop``, set at fit.
    box_rule : {"peak", "percentile"}
        The box rule of ``box`` and ``crop``, set at fit.

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
    >>> from sklearn_protopnet import PrototypeParts
    >>> parts = PrototypeParts.of(clf)
    >>> parts.prototype_class.tolist()
    ['horizontal', 'vertical']
    >>> parts.source_name(0)  # fit was given an array, not files
    'X[...] of fit'
    """

    prototype_class: np.ndarray
    source_index: np.ndarray
    source_path: list
    box: np.ndarray
    crop: list
    thumbnail: list
    original_size: np.ndarray
    percentile: float
    box_rule: str

    @classmethod
    def of(cls, estimator) -> PrototypeParts:
        """The parts of a fitted :class:`~sklearn_protopnet.ProtoPNetClassifier`.

        Parameters
        ----------
        estimator : ProtoPNetClassifier
            A fitted model.

        Returns
        -------
        PrototypeParts
        """
        return cls(
            prototype_class=estimator.prototype_class_,
            source_index=np.asarray(estimator.prototype_source_index_),
            source_path=list(estimator.prototype_source_path_),
            box=np.asarray(estimator.prototype_box_),
            crop=list(estimator.prototype_crop_),
            thumbnail=list(estimator.prototype_source_thumbnail_),
            original_size=np.asarray(estimator.prototype_original_size_),
            percentile=float(estimator.box_percentile_),
            box_rule=str(estimator.box_rule_),
        )

    def source_name(self, j: int) -> str:
        """The name of a prototype's source image.

        Parameters
        ----------
        j : int
            The prototype.

        Returns
        -------
        str
            Its path, or ``X[i] of fit`` when fit was given an array.
        """
        path = self.source_path[j]
        return path if path is not None else f"X[{int(self.source_index[j])}] of fit"


@dataclass
class Explanation:
    """Why the model gave one image its logits, prototype by prototype.

    Attributes
    ----------
    name : str
        The image's path, or ``X[i]`` for an array.
    predicted : label
        The predicted class.
    classes : ndarray of shape (K,)
    logits : ndarray of shape (K,)
        ``decision_function`` of the image.
    probabilities : ndarray of shape (K,)
        ``predict_proba`` of the image.
    similarities : ndarray of shape (m,)
        ``transform`` of the image.
    explained_class : label
        The class of :attr:`evidence` (the predicted class by default).
    evidence : list of Evidence
        The explained class's evidence, by contribution, largest first.
    evidence_by_class : dict
        Label -> list of Evidence for every class asked for.
    original_size : (int, int)
        (width, height) of the image as the user sees it.
    top_k : int or None
        Items kept per class; None keeps every prototype, and then the
        contributions add up to the logit.
    box_percentile : float
        The box rule's percentile of this image's evidence boxes.
    box_rule : {"peak", "percentile"}
        The box rule of this image's evidence boxes.
    prototypes : PrototypeParts
        The "that" side: every prototype's crop, source and box.

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
    >>> e = clf.explain(X[:1], top_k=None)[0]  # every prototype: the full sum
    >>> e.predicted == clf.predict(X[:1])[0]
    True
    >>> bool(np.isclose(sum(i.contribution for i in e.evidence), e.logit()))
    True
    >>> e.save("sheet.png")  # the scoring sheet; in a notebook, just show e
    """

    name: str
    predicted: object
    classes: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray
    similarities: np.ndarray
    explained_class: object
    evidence: list
    evidence_by_class: dict
    original_size: tuple[int, int]
    top_k: int | None
    box_percentile: float
    box_rule: str
    prototypes: PrototypeParts = field(repr=False)
    _weights: np.ndarray = field(repr=False)
    _maps: np.ndarray = field(repr=False)  # (m, h, w) similarity maps
    _geometry: CellGeometry = field(repr=False)
    _source: ImageSource = field(repr=False)
    _index: int = field(repr=False)

    def logit(self, label=None) -> float:
        """The logit of a class.

        Parameters
        ----------
        label : label or None, default=None
            A class; None is the explained class.

        Returns
        -------
        float
        """
        label = self.explained_class if label is None else label
        return float(self.logits[_class_index(self.classes, label)])

    @property
    def runner_up(self):
        """The class with the largest logit other than the explained class."""
        k = _class_index(self.classes, self.explained_class)
        order = np.argsort(-self.logits, kind="stable")
        return self.classes[next(int(j) for j in order if j != k)]

    def evidence_for(self, label, top_k: int | None | str = "same") -> list:
        """Evidence for any class, computed from the stored maps on demand.

        Parameters
        ----------
        label : label
            One of ``classes``.
        top_k : int, None or "same", default="same"
            Items kept, by contribution; "same" is :attr:`top_k`.

        Returns
        -------
        list of Evidence
            Largest contribution first.
        """
        if label in self.evidence_by_class and top_k == "same":
            return self.evidence_by_class[label]
        top_k = self.top_k if top_k == "same" else _check_top_k(top_k)
        return _class_evidence(
            self.similarities, self._weights, self._maps, self.classes,
            _class_index(self.classes, label), self.prototypes.prototype_class, top_k,
            self.original_size, self._geometry, self.box_percentile, self.box_rule,
        )

    def image(self) -> Image.Image:
        """The input image as the user sees it.

        Returns
        -------
        PIL.Image.Image
            RGB, read again from its file (or the array).
        """
        return self._source.open(self._index)

    def save(self, path) -> None:
        """Write the scoring sheet as a PNG file.

        Parameters
        ----------
        path : str, path or file object
            Where to write it.
        """
        scoring_sheet(self).save(path, format="PNG")

    def _repr_png_(self) -> bytes:
        import io

        buffer = io.BytesIO()
        self.save(buffer)
        return buffer.getvalue()


# --------------------------------------------------------------------------
# the computation
# --------------------------------------------------------------------------
def _class_index(classes: np.ndarray, label) -> int:
    if np.ndim(label) != 0:  # a sequence would be compared element by element
        raise ValueError(f"a class label must be a single value, got {label!r}")
    hits = np.flatnonzero(classes == label)
    if len(hits) == 0:
        raise ValueError(f"unknown class {label!r}; the classes are {list(classes)}")
    return int(hits[0])


def _check_top_k(top_k):
    if top_k is None:
        return None
    if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    return int(top_k)


def _class_evidence(sims, weights, maps, classes, k, prototype_class, top_k, original_size,
                    geometry, percentile, box_rule) -> list:
    contributions = sims * weights[k]
    # stable: equal contributions keep prototype order, so results are reproducible
    order = np.argsort(-contributions, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    items = []
    for j in order:
        j = int(j)
        cell_map = maps[j]
        r, c = np.unravel_index(int(np.argmax(cell_map)), cell_map.shape)
        items.append(
            Evidence(
                prototype=j,
                prototype_class=prototype_class[j],
                explained_class=classes[k],
                similarity=float(sims[j]),
                weight=float(weights[k, j]),
                contribution=float(contributions[j]),
                location=(int(r), int(c)),
                similarity_map=cell_map,
                original_size=original_size,
                geometry=geometry,
                percentile=percentile,
                box_rule=box_rule,
            )
        )
    return items


def explain(estimator, X, top_k=10, classes="predicted", box_percentile=None,
            box_rule=None) -> list:
    """One :class:`Explanation` per image of X; see ``ProtoPNetClassifier.explain``."""
    top_k = _check_top_k(top_k)
    parts = PrototypeParts.of(estimator)
    # by default the rule the prototypes' boxes were drawn with at fit; another
    # rule without a percentile takes that rule's "auto" percentile
    if box_rule is None:
        box_rule = parts.box_rule
    else:
        check_value("box_rule", box_rule, "explain")
    if box_percentile is None:
        percentile = (parts.percentile if box_rule == parts.box_rule
                      else AUTO_BOX_PERCENTILE[box_rule])
    else:
        check_value("box_percentile", box_percentile, "explain")
        percentile = (AUTO_BOX_PERCENTILE[box_rule] if box_percentile == "auto"
                      else float(box_percentile))
    labels = estimator.classes_
    if isinstance(classes, str) and classes in ("predicted", "all"):
        wanted = classes
    else:
        asked = classes if isinstance(classes, (list, tuple, np.ndarray)) else [classes]
        wanted = [labels[_class_index(labels, c)] for c in asked]
        if not wanted:
            raise ValueError("classes is empty")
    weights = estimator.coef_
    geometry = estimator.cell_geometry_
    out = []
    with estimator._inference(X) as (source, batches):
        for start, logits_t, sims_t, dist_t in batches:
            with torch.no_grad():
                maps_t = estimator.module_.similarity(dist_t)
            logits = logits_t.double().cpu().numpy()
            sims = sims_t.double().cpu().numpy()
            maps = maps_t.float().cpu().numpy()
            for b in range(len(logits)):
                out.append(_one(start + b, source, logits[b], sims[b], maps[b], labels,
                                weights, parts, wanted, top_k, geometry, percentile,
                                box_rule))
    return out


def _one(i, source, logits, sims, maps, labels, weights, parts, wanted, top_k, geometry,
         percentile, box_rule) -> Explanation:
    proba = softmax(logits)
    predicted = labels[int(np.argmax(logits))]
    if wanted == "predicted":
        asked = [predicted]
    elif wanted == "all":
        asked = [predicted] + [c for c in labels if c != predicted]
    else:
        asked = wanted
    original_size = source.original_size(i)
    by_class = {
        c: _class_evidence(sims, weights, maps, labels, _class_index(labels, c),
                           parts.prototype_class, top_k, original_size, geometry, percentile,
                           box_rule)
        for c in asked
    }
    return Explanation(
        name=source.name(i), predicted=predicted, classes=labels, logits=logits,
        probabilities=proba, similarities=sims, explained_class=asked[0],
        evidence=by_class[asked[0]], evidence_by_class=by_class,
        original_size=original_size, top_k=top_k, box_percentile=percentile,
        box_rule=box_rule,
        prototypes=parts, _weights=weights, _maps=maps, _geometry=geometry,
        _source=source, _index=i,
    )


# --------------------------------------------------------------------------
# "that": the prototypes' own parts, computed once at the end of fit
# --------------------------------------------------------------------------
def _shrunk(img: Image.Image, max_side: int) -> np.ndarray:
    img = img.copy()
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


@torch.no_grad()
def prototype_parts(module, source: ImageSource, source_index, geometry: CellGeometry,
                    image_size, percentile: float, batch_size: int, cache=None,
                    device="cpu", box_rule: str = "peak") -> dict:
    """Fitted attributes holding each prototype's source, box, crop and thumbnail.

    The box is the same rule as for test images: the prototype's similarity
    map on its source image, upsampled to the original size, thresholded at
    ``percentile``. Only plain arrays, lists and strings are returned, so the
    model explains and draws without its training files.
    """
    source_index = np.asarray(source_index)
    m = len(source_index)
    unique = np.unique(source_index)
    dataset = ImageDataset(source, image_size, cache=cache).subset(unique, transform=None)
    boxes = np.zeros((m, 4), dtype=np.int64)
    sizes = np.zeros((m, 2), dtype=np.int64)
    crops, thumbs = [None] * m, [None] * m
    # one source image at full size at a time: decoded, used by its prototypes, dropped
    for start, _, _, dist in forward_batches(module, dataset, batch_size, device):
        maps = module.similarity(dist).float().cpu().numpy()
        for b, i in enumerate(unique[start : start + len(maps)]):
            img = source.open(int(i))
            width, height = img.size
            thumbnail = _shrunk(img, THUMBNAIL_MAX_SIDE)
            for j in np.flatnonzero(source_index == i):
                up = upsample_map(maps[b, j], geometry, (height, width))
                peak = None
                if box_rule == "peak":  # the cell the prototype was pushed onto
                    cell = np.unravel_index(int(np.argmax(maps[b, j])), maps[b, j].shape)
                    peak = peak_pixel(cell, geometry, (width, height))
                boxes[j] = box_from_map(up, percentile, peak)
                sizes[j] = (width, height)
                crops[j] = _shrunk(img.crop(tuple(int(v) for v in boxes[j])), CROP_MAX_SIDE)
                thumbs[j] = thumbnail.copy()
    paths = [source.paths[int(i)] if source.is_paths else None for i in source_index]
    return {
        "prototype_source_path_": paths,
        "prototype_box_": boxes,
        "prototype_crop_": crops,
        "prototype_source_thumbnail_": thumbs,
        "prototype_original_size_": sizes,
        "box_percentile_": float(percentile),
        "box_rule_": str(box_rule),
    }


__all__ = ["Evidence", "Explanation", "PrototypeParts", "explain", "prototype_parts"]
