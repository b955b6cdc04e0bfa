"""ProtoPNetClassifier: the scikit-learn surface of the method.

The estimator checks its input, encodes the labels, hands the training to
:func:`._training.train` and stores what it returns; its inference methods
read the one forward pass of :func:`._batches.forward_batches`. Its
hyperparameters are declared in :mod:`._params`.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, _fit_context
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ._backbones import check_backbone_arguments
from ._batches import forward_batches, gather_outputs, on_device, resolve_device
from ._images import ImageDataset, check_images
from ._maths import log_softmax, softmax
from ._params import Hyperparameters, declare_hyperparameters
from ._training import resolve_auto, train


def _check_validation_split(fraction: float, y_enc: np.ndarray, classes) -> None:
    """Refuse, before any image is decoded, a validation_fraction that the
    stratified split (scikit-learn's ``train_test_split``) cannot make."""
    n, k = len(y_enc), len(classes)
    n_valid = int(np.ceil(fraction * n))
    n_train = n - n_valid
    counts = np.bincount(y_enc, minlength=k)
    if counts.min() < 2:
        rare = classes[int(np.argmin(counts))]
        rare = rare.item() if isinstance(rare, np.generic) else rare  # 1, not np.int64(1)
        raise ValueError(
            f"validation_fraction={fraction:g} needs at least 2 images of every class to "
            f"stratify the split, but class {rare!r} has {int(counts.min())}"
        )
    if n_valid < k or n_train < k:
        raise ValueError(
            f"validation_fraction={fraction:g} of {n} images gives {n_valid} validation and "
            f"{n_train} training images; the stratified split needs at least one image of "
            f"each of the {k} classes on both sides"
        )


def _image_weights(class_weight, sample_weight, y, classes):
    """Each image's weight (class weight times sample weight), checked; None
    when neither is given."""
    if class_weight is None and sample_weight is None:
        return None
    from sklearn.utils.class_weight import compute_sample_weight
    from sklearn.utils.validation import _check_sample_weight

    weight = np.ones(len(y))
    if sample_weight is not None:
        weight = _check_sample_weight(sample_weight, weight, dtype=np.float64,
                                      ensure_non_negative=True)
    if class_weight is not None:
        if isinstance(class_weight, dict):
            unknown = [k for k in class_weight if k not in set(classes.tolist())]
            if unknown:
                raise ValueError(f"class_weight names labels that are not in y: {unknown!r}; "
                                 f"the classes are {classes.tolist()!r}")
            bad = {k: v for k, v in class_weight.items()
                   if not isinstance(v, (int, float, np.number)) or not v >= 0}
            if bad:
                raise ValueError(f"class_weight values must be non-negative numbers, got "
                                 f"{bad!r}")
        weight = weight * compute_sample_weight(class_weight, y)
    if not weight.sum() > 0:
        raise ValueError("the image weights (sample_weight times class_weight) are all 0")
    return weight


@declare_hyperparameters
class ProtoPNetClassifier(TransformerMixin, ClassifierMixin, BaseEstimator):
    """Prototypical part network ("This looks like that") as a classifier.

    An image is classified by comparing its parts (cells of a convolutional
    feature map) with learned prototypical parts of each class, each a real
    patch of a training image; the logit of class k is the sum over
    prototypes of similarity x weight. Trained in stages: warm-up, joint
    training with cluster and separation costs, prototype projection (push)
    and a last layer solved as a convex problem.

    {parameters}

    Attributes
    ----------
    classes_ : ndarray of shape (K,)
    coef_ : ndarray of shape (K, m)
        Last-layer weights (no bias): ``decision_function = transform @ coef_.T``.
    prototype_class_ : ndarray of shape (m,)
        Class label of each prototype.
    prototype_source_index_ : ndarray of shape (m,)
        Index, into the X given to fit, of the image each prototype was
        projected onto.
    prototype_location_ : ndarray of shape (m, 2)
        (row, column) of that patch in the latent feature map.
    image_size_ : (int, int)
        (height, width) images are resized to: the network's input.
    feature_map_shape_ : (int, int)
        (height, width) of the latent feature map.
    cell_geometry_ : CellGeometry
        Where each latent cell lies on the resized image (stride, offset,
        receptive field), used for every box.
    history_ : list of dict
        One record per epoch (stage, losses, metrics, duration), per push and
        per last-layer solve (objective, KKT residual, iterations), and with
        ``early_stopping`` the stop and the restore of the best epoch.
    best_epoch_ : int or None
        With ``early_stopping``, the epoch (counting warm-up) of the lowest
        held-out cross-entropy, whose network was restored before the final
        push and last layer; None without early stopping.
    auto_values_ : dict
        The value each training parameter given as "auto" stood for in this
        fit (``normalize``, ``lr_backbone``, ``prototype_dim``,
        ``separation_coef``, ...), by name; ``device`` and ``accelerator``
        are not recorded.
    module_ : ProtoPNet
        The fitted network, on the CPU.
    prototype_source_path_ : list of str or None
        Path of each prototype's source image (None for array input).
    prototype_box_ : ndarray of shape (m, 4)
        (x0, y0, x1, y1), end-exclusive, of each prototype in its source
        image's original pixels (the box rule, ``box_percentile``).
    prototype_crop_ : list of m uint8 arrays (h, w, 3)
        The image inside each box, at most 128 px a side.
    prototype_source_thumbnail_ : list of m uint8 arrays (h, w, 3)
        Each whole source image, at most 160 px a side.
    prototype_original_size_ : ndarray of shape (m, 2)
        (width, height) of each prototype's source image as the user sees it
        (original size, EXIF orientation applied).
    box_percentile_ : float
        The box rule's percentile of ``prototype_box_`` and ``prototype_crop_``,
        and ``explain``'s default.
    box_rule_ : str
        The box rule of ``prototype_box_`` and ``prototype_crop_``, and
        ``explain``'s default.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_protopnet import ProtoPNetClassifier
    >>> from sklearn_protopnet.backbones import SmallCNN
    >>> X = np.zeros((20, 16, 16), dtype=np.uint8)
    >>> X[:10, 4:6, 2:12] = 255  # ten horizontal bars
    >>> X[10:, 2:12, 4:6] = 255  # ten vertical bars
    >>> y = np.repeat(["horizontal", "vertical"], 10)
    >>> clf = ProtoPNetClassifier(backbone=SmallCNN(width=8), image_size=16,
    ...                           prototypes_per_class=2, prototype_dim=8, warm_epochs=1,
    ...                           joint_epochs=2, augment=False, random_state=0).fit(X, y)
    >>> clf.predict(X[[0, 19]]).tolist()
    ['horizontal', 'vertical']
    >>> logits = clf.decision_function(X[:3])
    >>> bool(np.allclose(logits, clf.transform(X[:3]) @ clf.coef_.T))
    True
    """

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Train in stages on images X and labels y.

        Parameters
        ----------
        X : sequence of image paths, or array of shape (n, H, W[, C])
            Paths (list, numpy array or pandas Series of str or path-like)
            of image files Pillow can read, or one numeric image array
            (uint8, 16-bit, bool, or float in [0, 1]; 1, 3 or 4 channels).
        y : array-like of shape (n,)
            Class labels of any kind scikit-learn accepts; at least two.
        sample_weight : array-like of shape (n,), default=None
            Non-negative weight of each image in the SGD stages' loss and the
            last layer's objective, multiplied by ``class_weight``; only
            ratios matter. Every image, whatever its weight, may be the
            source of a prototype.

        Returns
        -------
        self : ProtoPNetClassifier
            Fitted. On any error the estimator is left exactly as it was:
            fitted state is assigned only once training has finished.

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
        >>> clf.n_prototypes_, clf.classes_.tolist()
        (2, ['horizontal', 'vertical'])
        >>> [record["stage"] for record in clf.history_][-2:]  # the last push and solve
        ['push', 'last_layer']
        """
        # the cheap checks of the parameters first: a typo is named in an
        # instant, not after every image header has been read
        check_backbone_arguments(self.backbone, self.weights, self.normalize)
        device = resolve_device(self.device)
        if self.mixed_precision and device.type != "cuda":
            raise ValueError(
                f"mixed_precision=True needs a CUDA device; the fit would run on {device}. "
                "Use mixed_precision=False on the CPU."
            )
        source = check_images(X)
        y = column_or_1d(y, warn=True)
        if len(y) != len(source):
            raise ValueError(f"X has {len(source)} images but y has {len(y)} labels")
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        if len(encoder.classes_) < 2:
            raise ValueError(
                f"y has a single class ({encoder.classes_[0]!r}); at least 2 are needed"
            )
        y_enc = encoder.transform(y).astype(np.int64)
        hp = Hyperparameters.of(self)
        fraction = resolve_auto(hp).validation_fraction
        if fraction is not None:
            _check_validation_split(fraction, y_enc, encoder.classes_)
        weight = _image_weights(self.class_weight, sample_weight, y, encoder.classes_)
        state = train(hp, source, y_enc, encoder.classes_, device, weight)
        self.__dict__.update(state)
        return self

    # ---------------------------------------------------------- conventions
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # X is a sequence of image paths (strings) or an (n, H, W[, C]) image
        # array; a tabular (n_samples, n_features) matrix is not an image set.
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags

    # ---------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Write the fitted model to a single file, without pickle.

        A zip archive holding the parameters and metadata as JSON and the
        tensors as a ``torch.save`` dict read back with
        ``torch.load(weights_only=True)``; see ``docs/scikit-learn.md``.

        Parameters
        ----------
        path : str or path
            The file to write (replaced atomically if it exists).

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
        >>> import os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> clf.save(os.path.join(folder, "bars.protopnet"))
        >>> loaded = ProtoPNetClassifier.load(os.path.join(folder, "bars.protopnet"))
        >>> bool(np.array_equal(loaded.predict_proba(X), clf.predict_proba(X)))
        True
        """
        from ._persistence import save

        save(self, path)

    @classmethod
    def load(cls, path, backbone=None) -> ProtoPNetClassifier:
        """Read a model written by :meth:`save`; never runs code from the file.

        Parameters
        ----------
        path : str or path
            A file written by :meth:`save`.
        backbone : torch.nn.Module or None, default=None
            Needed only when the model was fitted with a backbone module other
            than a torchvision name or one of ``sklearn_protopnet.backbones``:
            an instance of the same architecture; its weights are replaced by
            the saved ones.

        Returns
        -------
        ProtoPNetClassifier
            The fitted model, on the CPU.

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
        >>> import os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> clf.save(os.path.join(folder, "bars.protopnet"))
        >>> loaded = ProtoPNetClassifier.load(os.path.join(folder, "bars.protopnet"))
        >>> bool(np.array_equal(loaded.coef_, clf.coef_))
        True
        """
        from ._persistence import load

        return load(cls, path, backbone=backbone)

    # ------------------------------------------------------------ inference
    @property
    def coef_(self) -> np.ndarray:
        """Last-layer weights (K, m): the only copy is in ``module_``."""
        check_is_fitted(self, "module_")
        return self.module_.last_layer.weight.detach().cpu().double().numpy().copy()

    @property
    def prototype_class_(self) -> np.ndarray:
        """Class label of each prototype (m,)."""
        check_is_fitted(self, "module_")
        return self.classes_[self.module_.prototype_class.cpu().numpy()]

    @property
    def n_prototypes_(self) -> int:
        """The number m of prototypes."""
        check_is_fitted(self, "module_")
        return self.module_.n_prototypes

    @contextmanager
    def _inference(self, X):
        """The one inference pass over X, streamed in batches.

        Yields ``(source, batches)``, ``batches`` iterating over
        ``(start, logits, similarities, distance_map)`` tensors
        (:func:`._batches.forward_batches`) on ``device``. The fitted network
        stays on the CPU; on another device a copy of it made on first use
        serves every call (:func:`._batches.on_device`), so nothing moves
        between calls and two threads may predict at once. ``transform``,
        ``decision_function``, ``explain`` and ``prune`` all read it. The
        data loader draws its seed from a generator of its own, so the
        user's global torch RNG is left as it was.
        """
        check_is_fitted(self, "module_")
        source = check_images(X)
        device = resolve_device(self.device, cpu_fallback=True)
        dataset = ImageDataset(source, self.image_size_)
        module = on_device(self.module_, device)
        yield source, forward_batches(module, dataset, self.batch_size, device,
                                      self.num_workers)

    def _outputs(self, X):
        """(logits, similarities) as float64 arrays, streamed in batches."""
        with self._inference(X) as (_, batches):
            return gather_outputs(batches)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the columns of :meth:`transform`: one per prototype.

        Parameters
        ----------
        input_features : None
            Ignored (images have no input feature names); accepted for
            scikit-learn's output API.

        Returns
        -------
        ndarray of str objects, shape (m,)
            ``"prototype{j}_{class}"``: prototype j and the class it belongs
            to, e.g. ``"prototype3_cat"``; they follow pruning.

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
        >>> clf.get_feature_names_out().tolist()
        ['prototype0_horizontal', 'prototype1_vertical']
        """
        check_is_fitted(self, "module_")
        return np.asarray([f"prototype{j}_{label}" for j, label in
                           enumerate(self.prototype_class_)], dtype=object)

    def decision_function(self, X) -> np.ndarray:
        """The logits of each image.

        Parameters
        ----------
        X : sequence of image paths, or image array
            As for :meth:`fit`.

        Returns
        -------
        ndarray of shape (n, K)
            Equal to ``transform(X) @ coef_.T``, in float64.

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
        >>> logits = clf.decision_function(X[:3])
        >>> logits.shape
        (3, 2)
        >>> bool(np.allclose(logits, clf.transform(X[:3]) @ clf.coef_.T))
        True
        """
        return self._outputs(X)[0]

    def transform(self, X) -> np.ndarray:
        """Each prototype's largest similarity over the image's patches.

        Parameters
        ----------
        X : sequence of image paths, or image array
            As for :meth:`fit`.

        Returns
        -------
        ndarray of shape (n, m)
            Column j is prototype j's similarity, in float64.

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
        >>> clf.transform(X).shape  # 8 images, 2 prototypes
        (8, 2)
        """
        return self._outputs(X)[1]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities: the softmax of the logits.

        Parameters
        ----------
        X : sequence of image paths, or image array
            As for :meth:`fit`.

        Returns
        -------
        ndarray of shape (n, K)
            Columns in the order of ``classes_``.

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
        >>> proba = clf.predict_proba(X[:3])
        >>> proba.shape, bool(np.allclose(proba.sum(axis=1), 1))
        ((3, 2), True)
        """
        return softmax(self.decision_function(X))

    def predict_log_proba(self, X) -> np.ndarray:
        """The log-softmax of the logits; finite where the softmax underflows.

        Parameters
        ----------
        X : sequence of image paths, or image array
            As for :meth:`fit`.

        Returns
        -------
        ndarray of shape (n, K)
            Columns in the order of ``classes_``.

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
        >>> bool(np.allclose(np.exp(clf.predict_log_proba(X[:3])), clf.predict_proba(X[:3])))
        True
        """
        return log_softmax(self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        """The class of the largest logit.

        Parameters
        ----------
        X : sequence of image paths, or image array
            As for :meth:`fit`.

        Returns
        -------
        ndarray of shape (n,)
            Labels as given to :meth:`fit`.

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
        >>> labels = clf.predict(X[:3])
        >>> labels.shape, set(labels) <= {"horizontal", "vertical"}
        ((3,), True)
        """
        logits = self.decision_function(X)  # first: it checks that the model is fitted
        return self.classes_[np.argmax(logits, axis=1)]

    # -------------------------------------------------------- explanations
    def explain(self, X, top_k=10, classes="predicted", box_percentile=None,
                box_rule=None) -> list:
        """Explain the logits of each image of X, prototype by prototype.

        Parameters
        ----------
        X : sequence of image paths, or image array
            As for :meth:`fit`.
        top_k : int or None, default=10
            Evidence items kept per class, by contribution; None keeps every
            prototype, and then the contributions add up to the logit.
        classes : "predicted", "all", a label or a list of labels, default="predicted"
            The classes whose evidence is listed; the first is
            ``Explanation.evidence`` ("all" starts with the predicted class).
        box_percentile : float, "auto" or None, default=None
            The box rule's percentile for the test images' boxes; None uses
            the fit's (``box_percentile_``), the rule of the prototypes'
            boxes, or with another ``box_rule`` that rule's "auto"
            percentile (90 for "peak", 95 for "percentile"). Another value
            changes the test images' boxes only, and the sheets and the
            report say so.
        box_rule : {"peak", "percentile"} or None, default=None
            The box rule for the test images' boxes; None uses the fit's
            (``box_rule_``). As with ``box_percentile``, another value
            changes the test images' boxes only, and the sheets say so.

        Returns
        -------
        list of Explanation
            One per image; see :class:`sklearn_protopnet.Explanation`.

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
        >>> e = clf.explain(X[:1], top_k=None)[0]  # all prototypes: the whole sum
        >>> e.predicted == clf.predict(X[:1])[0]
        True
        >>> bool(np.isclose(sum(item.contribution for item in e.evidence), e.logit()))
        True
        """
        check_is_fitted(self, "module_")
        from ._explain import explain

        return explain(self, X, top_k=top_k, classes=classes, box_percentile=box_percentile,
                       box_rule=box_rule)

    def nearest_patches(self, X, k=6):
        """Each prototype's k nearest patches in X, one per image (the global view).

        Parameters
        ----------
        X : sequence of image paths, or image array
            As for :meth:`fit`.
        k : int, default=6
            Patches per prototype; at most the number of images.

        Returns
        -------
        NearestPatches
            ``index`` (m, k) into X, ``distance`` (m, k) squared latent
            distances, ascending, ``location`` (m, k, 2) latent cells.

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
        >>> clf.nearest_patches(X, k=3).index.shape  # (prototypes, k)
        (2, 3)
        """
        check_is_fitted(self, "module_")
        from ._prune import nearest_patches

        return nearest_patches(self, X, k=k)

    def prune(self, X, y, k=6, min_own=3):
        """Merge duplicate prototypes, drop impure ones, re-solve the last layer.

        Prototypes projected onto the same patch are merged into one whose
        weights are the sum of theirs (no logit changes). Then a prototype is
        removed when fewer than ``min_own`` of its ``k`` nearest patches in X
        (one per image) come from images of its own class (paper, S8). The
        last layer is solved again on the similarities of X. Every
        per-prototype attribute follows; the estimator is unchanged on error.

        Parameters
        ----------
        X : sequence of image paths, or image array
            Labelled images, usually the training set.
        y : array-like of shape (n,)
            Their labels, among ``classes_``.
        k : int, default=6
            Nearest patches looked at per prototype.
        min_own : int, default=3
            Own-class patches among them that a prototype needs to stay.

        Returns
        -------
        self : ProtoPNetClassifier

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
        >>> clf = clf.prune(X, y, k=4, min_own=1)
        >>> clf.history_[-1]["stage"], clf.n_prototypes_ <= 2
        ('prune', True)
        """
        check_is_fitted(self, "module_")
        from ._prune import prune

        self.__dict__.update(prune(self, X, y, k=k, min_own=min_own))
        return self

    def prototype_gallery(self, path=None):
        """Every prototype, grouped by class, with its source, as a picture.

        Parameters
        ----------
        path : str, path or None, default=None
            Where to save it as PNG, if given.

        Returns
        -------
        PIL.Image.Image

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
        >>> image = clf.prototype_gallery()  # or clf.prototype_gallery("gallery.png")
        >>> image.mode
        'RGB'
        """
        check_is_fitted(self, "module_")
        from ._explain import PrototypeParts
        from ._render import prototype_gallery

        image = prototype_gallery(PrototypeParts.of(self), self.classes_)
        if path is not None:
            image.save(path, format="PNG")
        return image

    def report(self, X, path, top_k=5, y=None) -> str:
        """Write a self-contained HTML report: a summary, the prototypes and X's explanations.

        Parameters
        ----------
        X : sequence of image paths, or image array
            The images to explain.
        path : str or path
            The HTML file to write.
        top_k : int or None, default=5
            Evidence items per class, as in :meth:`explain`.
        y : array-like of shape (n,), default=None
            The true labels of X, if known: the summary then gives the
            accuracy and the correct counts per class, and marks the wrong
            predictions.

        Returns
        -------
        str
            The path written.

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
        >>> import os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> path = clf.report(X, os.path.join(folder, "report.html"))
        >>> "<h1>" in open(path, encoding="utf-8").read()
        True
        """
        check_is_fitted(self, "module_")
        from ._report import write_report

        return write_report(self, X, path, top_k=top_k, y=y)
