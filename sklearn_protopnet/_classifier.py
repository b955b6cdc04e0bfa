"""ProtoPNetClassifier: the scikit-learn surface of the method."""

from __future__ import annotations

import numbers
import os
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, _fit_context
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ._backbones import build_backbone, probe_backbone
from ._checkpoint import Checkpoint, training_identity
from ._explain import prototype_parts
from ._geometry import cell_geometry
from ._images import ImageDataset, check_images, decode_all, make_augmentation
from ._network import ProtoPNet
from ._push import forward_batches, gather_outputs
from ._training import TrainingConfig, fit_stages

_DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of decoded uint8 images kept in memory


def _image_size(value) -> tuple[int, int]:
    if isinstance(value, numbers.Integral):
        return int(value), int(value)
    h, w = value
    return int(h), int(w)


def _check_image_size(value) -> bool:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return value >= 8
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, numbers.Integral) and v >= 8 for v in value)
    )


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


@contextmanager
def _python_and_numpy_rng_kept():
    """Restore the global ``random`` and ``numpy.random`` states on exit (a
    resumed fit sets them from its checkpoint), as ``fork_rng`` does for torch."""
    import random

    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def resolve_device(device, cpu_fallback: bool = False) -> torch.device:
    """The torch device of the ``device`` parameter.

    A CUDA device on a machine without CUDA is an error for training; with
    ``cpu_fallback`` (inference: a model fitted on a GPU, loaded elsewhere)
    it warns and gives the CPU, where the outputs are the same.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        if cpu_fallback:
            warnings.warn(
                f"device={str(device)!r}, but CUDA is not available here; running on the "
                "CPU (set_params(device='cpu') silences this)", UserWarning, stacklevel=4,
            )
            return torch.device("cpu")
        raise ValueError(f"device={str(device)!r} was asked for, but CUDA is not available")
    return device


class ProtoPNetClassifier(TransformerMixin, ClassifierMixin, BaseEstimator):
    """Prototypical part network ("This looks like that") as a classifier.

    An image is classified by comparing its parts (cells of a convolutional
    feature map) with learned prototypical parts of each class, each a real
    patch of a training image; the logit of class k is the sum over
    prototypes of similarity x weight. Trained in stages: warm-up, joint
    training with cluster and separation costs, prototype projection (push)
    and a last layer solved as a convex problem.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="resnet18"
        A torchvision model name (see :func:`sklearn_protopnet.list_backbones`),
        cut at its last convolutional feature map, or any module mapping
        (N, 3, H, W) images to a feature map (N, C, h, w). A module is copied,
        never trained in place.
    weights : None, str or path, default=None
        None for random initialisation, a torchvision weights name such as
        ``"DEFAULT"`` or ``"IMAGENET1K_V1"`` (downloaded where there is
        internet), or the path of a local state_dict file.
    image_size : int or (int, int), default=224
        Images are resized to this (height, width).
    normalize : "auto", "imagenet", None or (mean, std), default="auto"
        Per-channel normalisation of images scaled to [0, 1] before the
        backbone. "auto" uses the statistics of the torchvision weights (the
        ImageNet ones) and ImageNet statistics for other backbones; None
        feeds [0, 1] images unchanged; (mean, std) takes 3 values each (or
        one of each).
    mixed_precision : bool, default=False
        Run the SGD stages under float16 autocast with gradient scaling (CUDA
        only; refused on the CPU). Push, similarities and prediction always
        run in float32, with the logits in float64, so
        ``decision_function == transform @ coef_.T`` to float64 rounding.
    prototypes_per_class : int, default=10
        Prototypes allocated to each class; m = prototypes_per_class x K.
    prototype_dim : int, default=128
        Depth D of the latent space and of each (1x1) prototype.
    add_on : {"regular", "bottleneck"}, default="regular"
        The 1x1 convolutions between the backbone and the prototypes.
    similarity : {"log", "linear"}, default="log"
        ``log((d + 1) / (d + 1e-4))`` or ``-d`` of the squared distance d.
    prototype_init : {"discriminative", "patches", "uniform"}, default="discriminative"
        "uniform" draws prototypes uniformly in [0, 1) as the reference does;
        "patches" then moves each to its nearest latent patch of its own class
        before training starts (a push at initialisation); "discriminative"
        starts each prototype of class k on a latent patch that is close to
        patches of class-k images and far from those of other classes (the
        cluster-minus-separation margin, scored on a sample of images), so
        that prototypes do not start on background every class shares (see
        the docs for figures).
    warm_epochs : int, default=5
        Epochs with the backbone frozen (add-on and prototypes learn).
    joint_epochs : int, default=20
        Epochs in which backbone, add-on and prototypes learn together.
    push_start, push_interval : int, default=10, 10
        A push and last-layer cycle runs after epoch ``push_start`` and every
        ``push_interval`` epochs after it (counting warm-up epochs);
        ``push_interval=0`` disables intermediate pushes. ``fit`` always ends
        with a push and the last layer.
    batch_size : int, default=32
    lr_backbone : float or "auto", default="auto"
        Adam learning rate of the backbone in the joint stage; "auto" is 1e-4
        (the reference's) for pretrained weights and 3e-4 for a randomly
        initialised backbone.
    lr_add_on, lr_prototypes : float, default=3e-3
    weight_decay_add_on : float, default=1e-3
    joint_lr_step, joint_lr_gamma : int, float, default=5, 0.1
        Step decay of the joint stage's learning rates.
    cluster_coef, separation_coef : float, default=0.8, 0.08
        Weights of the cluster cost and of the separation cost (subtracted).
    last_layer_l1 : float, default=1e-4
        L1 penalty on the last-layer weights that link a prototype to
        another class, in the SGD loss and in the convex last-layer problem.
    last_layer_l2 : float, default=1e-4
        Small ridge penalty that makes the last-layer problem strongly convex
        so that its minimum exists (see the docs); 0 gives the reference
        objective.
    last_layer_tol : float, default=1e-6
        The last-layer solver stops when its KKT residual is below this.
    last_layer_max_iter : int, default=20000
    augment : bool or callable, default=True
        Augmentation of the SGD stages (random resized crop, flip, small
        rotation and shear) on uint8 (3, H, W) tensors; a callable replaces
        it. Push, the last layer, predict and explain never augment.
    validation_fraction : float or None, default=None
        Hold out this stratified fraction from the SGD stages to monitor
        ``valid_*`` metrics in ``history_``. Push and the last layer use all
        samples.
    memory_budget : int, default=2 GiB
        Bytes of decoded images kept in memory during ``fit``; within it every
        image is decoded once per fit, beyond it images are streamed.
    num_workers : int, default=0
        DataLoader worker processes for decoding and augmentation.
    checkpoint_dir : None, str or path, default=None
        When set, the training state (network, optimiser, schedule position,
        push results, history, RNG states) is written atomically to
        ``checkpoint_dir/protopnet-checkpoint.pt`` after every epoch and every
        push and last-layer step. A ``fit`` with the same parameters and data
        resumes after the last completed step and ends with the model an
        uninterrupted fit gives (on the CPU); a checkpoint written by a fit
        with other parameters or data is refused with an error. The file is
        deleted when ``fit`` succeeds.
    device : str or torch.device, default="auto"
        "auto" uses CUDA when available, else the CPU. Fitted state always
        lives on the CPU.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
        1 prints each epoch's losses and the push and last-layer timings.
    box_percentile : float, default=95.0
        The box of a prototype (at the end of ``fit``) and of an evidence item
        (in ``explain``) is the smallest rectangle holding every pixel at or
        above this percentile of the upsampled similarity map. Like every
        parameter it takes effect at ``fit`` (``box_percentile_``), so that
        prototypes and test images share one rule.

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
        (height, width) images are resized to.
    feature_map_shape_ : (int, int)
        (h, w) of the latent feature map.
    cell_geometry_ : CellGeometry
        Where each latent cell lies on the resized image (stride, offset,
        receptive field), used for every box.
    history_ : list of dict
        One record per epoch (stage, losses, metrics, duration), per push and
        per last-layer solve (objective, KKT residual, iterations).
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
    prototype_source_size_ : ndarray of shape (m, 2)
        Original (width, height) of each source image.
    box_percentile_ : float
        The box rule's percentile of ``prototype_box_`` and ``prototype_crop_``,
        and ``explain``'s default.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_protopnet import ProtoPNetClassifier
    >>> from sklearn_protopnet.backbones import SmallCNN
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 255, size=(20, 16, 16), dtype=np.uint8)
    >>> y = np.repeat([0, 1], 10)
    >>> clf = ProtoPNetClassifier(backbone=SmallCNN(), image_size=16, prototypes_per_class=2,
    ...                           prototype_dim=8, warm_epochs=1, joint_epochs=1,
    ...                           random_state=0).fit(X, y)
    >>> clf.predict_proba(X).shape
    (20, 2)
    """

    _parameter_constraints: dict = {
        "backbone": [str, torch.nn.Module],
        "weights": [None, str, os.PathLike],
        "image_size": [Interval(numbers.Integral, 8, None, closed="left"), tuple, list],
        "normalize": [StrOptions({"auto", "imagenet"}), None, tuple, list],
        "mixed_precision": ["boolean"],
        "prototypes_per_class": [Interval(numbers.Integral, 1, None, closed="left")],
        "prototype_dim": [Interval(numbers.Integral, 1, None, closed="left")],
        "add_on": [StrOptions({"regular", "bottleneck"})],
        "similarity": [StrOptions({"log", "linear"})],
        "prototype_init": [StrOptions({"discriminative", "patches", "uniform"})],
        "warm_epochs": [Interval(numbers.Integral, 0, None, closed="left")],
        "joint_epochs": [Interval(numbers.Integral, 0, None, closed="left")],
        "push_start": [Interval(numbers.Integral, 1, None, closed="left")],
        "push_interval": [Interval(numbers.Integral, 0, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "lr_backbone": [StrOptions({"auto"}), Interval(numbers.Real, 0, None, closed="left")],
        "lr_add_on": [Interval(numbers.Real, 0, None, closed="left")],
        "lr_prototypes": [Interval(numbers.Real, 0, None, closed="left")],
        "weight_decay_add_on": [Interval(numbers.Real, 0, None, closed="left")],
        "joint_lr_step": [Interval(numbers.Integral, 1, None, closed="left")],
        "joint_lr_gamma": [Interval(numbers.Real, 0, 1, closed="right")],
        "cluster_coef": [Interval(numbers.Real, 0, None, closed="left")],
        "separation_coef": [Interval(numbers.Real, 0, None, closed="left")],
        "last_layer_l1": [Interval(numbers.Real, 0, None, closed="left")],
        "last_layer_l2": [Interval(numbers.Real, 0, None, closed="left")],
        "last_layer_tol": [Interval(numbers.Real, 0, None, closed="neither")],
        "last_layer_max_iter": [Interval(numbers.Integral, 0, None, closed="left")],
        "augment": ["boolean", callable],
        "validation_fraction": [None, Interval(numbers.Real, 0, 1, closed="neither")],
        "memory_budget": [Interval(numbers.Integral, 0, None, closed="left")],
        "num_workers": [Interval(numbers.Integral, 0, None, closed="left")],
        "checkpoint_dir": [None, str, os.PathLike],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "box_percentile": [Interval(numbers.Real, 0, 100, closed="both")],
    }

    def __init__(
        self,
        backbone="resnet18",
        weights=None,
        image_size=224,
        normalize="auto",
        mixed_precision=False,
        prototypes_per_class=10,
        prototype_dim=128,
        add_on="regular",
        similarity="log",
        prototype_init="discriminative",
        warm_epochs=5,
        joint_epochs=20,
        push_start=10,
        push_interval=10,
        batch_size=32,
        lr_backbone="auto",
        lr_add_on=3e-3,
        lr_prototypes=3e-3,
        weight_decay_add_on=1e-3,
        joint_lr_step=5,
        joint_lr_gamma=0.1,
        cluster_coef=0.8,
        separation_coef=0.08,
        last_layer_l1=1e-4,
        last_layer_l2=1e-4,
        last_layer_tol=1e-6,
        last_layer_max_iter=20000,
        augment=True,
        validation_fraction=None,
        memory_budget=_DEFAULT_MEMORY_BUDGET,
        num_workers=0,
        checkpoint_dir=None,
        device="auto",
        random_state=None,
        verbose=0,
        box_percentile=95.0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.normalize = normalize
        self.mixed_precision = mixed_precision
        self.prototypes_per_class = prototypes_per_class
        self.prototype_dim = prototype_dim
        self.add_on = add_on
        self.similarity = similarity
        self.prototype_init = prototype_init
        self.warm_epochs = warm_epochs
        self.joint_epochs = joint_epochs
        self.push_start = push_start
        self.push_interval = push_interval
        self.batch_size = batch_size
        self.lr_backbone = lr_backbone
        self.lr_add_on = lr_add_on
        self.lr_prototypes = lr_prototypes
        self.weight_decay_add_on = weight_decay_add_on
        self.joint_lr_step = joint_lr_step
        self.joint_lr_gamma = joint_lr_gamma
        self.cluster_coef = cluster_coef
        self.separation_coef = separation_coef
        self.last_layer_l1 = last_layer_l1
        self.last_layer_l2 = last_layer_l2
        self.last_layer_tol = last_layer_tol
        self.last_layer_max_iter = last_layer_max_iter
        self.augment = augment
        self.validation_fraction = validation_fraction
        self.memory_budget = memory_budget
        self.num_workers = num_workers
        self.checkpoint_dir = checkpoint_dir
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.box_percentile = box_percentile

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Train in stages on images X (paths or an array) and labels y.

        On any error the estimator is left exactly as it was: fitted state is
        assigned only once training has finished.
        """
        if not _check_image_size(self.image_size):
            raise ValueError(
                f"image_size must be an int >= 8 or a (height, width) pair of them, "
                f"got {self.image_size!r}"
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
        if self.validation_fraction is not None:
            _check_validation_split(self.validation_fraction, y_enc, encoder.classes_)
        image_size = _image_size(self.image_size)
        device = resolve_device(self.device)
        if self.mixed_precision and device.type != "cuda":
            raise ValueError(
                f"mixed_precision=True needs a CUDA device; the fit would run on {device}. "
                "Use mixed_precision=False on the CPU."
            )
        if isinstance(self.random_state, numbers.Integral):
            seed = int(self.random_state)
        else:
            seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        log = print if self.verbose else (lambda *a, **k: None)

        checkpoint = None
        if self.checkpoint_dir is not None:
            identity = training_identity(self.get_params(deep=False), source,
                                         encoder.classes_, y_enc)
            checkpoint = Checkpoint(self.checkpoint_dir, identity).load()
            if checkpoint.seed is None:
                checkpoint.seed = seed
            seed = checkpoint.seed  # a resumed fit continues the interrupted one's stream

        cuda_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices), _python_and_numpy_rng_kept():
            torch.manual_seed(seed)
            state = self._fit(source, y_enc, encoder.classes_, image_size, device, seed, log,
                              checkpoint)
        self.__dict__.update(state)
        if checkpoint is not None:
            checkpoint.remove()
        return self

    def _fit(self, source, y_enc, classes, image_size, device, seed, log, checkpoint=None):
        t_start = time.perf_counter()
        built = build_backbone(self.backbone, self.weights, self.normalize)
        channels, h, w = probe_backbone(built.module, image_size)
        geometry = cell_geometry(built.module, image_size, (h, w))
        n_classes = len(classes)
        prototype_class = torch.arange(n_classes).repeat_interleave(self.prototypes_per_class)
        module = ProtoPNet(
            built.module,
            channels,
            prototype_class,
            n_classes,
            prototype_dim=self.prototype_dim,
            add_on=self.add_on,
            similarity=self.similarity,
            mean=built.mean,
            std=built.std,
        )

        n = len(source)
        decoded_bytes = n * 3 * image_size[0] * image_size[1]
        cache = None
        if decoded_bytes <= self.memory_budget:
            t0 = time.perf_counter()
            cache = decode_all(source, image_size, self.num_workers)
            log(f"[data] decoded {n} images to {image_size[0]}x{image_size[1]} "
                f"({decoded_bytes / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f}s")
        else:
            log(f"[data] {decoded_bytes / 2**20:.0f} MiB of decoded images exceed "
                "memory_budget; streaming from files")
        dataset = ImageDataset(source, image_size, y=y_enc, cache=cache)
        if self.augment is True:
            transform = make_augmentation(image_size)
        elif callable(self.augment):
            transform = self.augment
        else:
            transform = None

        valid_dataset = None
        train_idx = np.arange(n)
        if self.validation_fraction is not None:
            from sklearn.model_selection import train_test_split

            train_idx, valid_idx = train_test_split(
                train_idx, test_size=self.validation_fraction, stratify=y_enc,
                random_state=seed,
            )
            valid_dataset = dataset.subset(valid_idx, transform=None)
        train_dataset = dataset.subset(train_idx, transform=transform)

        lr_backbone = self.lr_backbone
        if lr_backbone == "auto":
            lr_backbone = 1e-4 if self.weights is not None else 3e-4
        config = TrainingConfig(
            warm_epochs=self.warm_epochs,
            joint_epochs=self.joint_epochs,
            push_start=self.push_start,
            push_interval=self.push_interval,
            batch_size=self.batch_size,
            lr_backbone=lr_backbone,
            lr_add_on=self.lr_add_on,
            lr_prototypes=self.lr_prototypes,
            weight_decay_add_on=self.weight_decay_add_on,
            joint_lr_step=self.joint_lr_step,
            joint_lr_gamma=self.joint_lr_gamma,
            cluster_coef=self.cluster_coef,
            separation_coef=self.separation_coef,
            last_layer_l1=self.last_layer_l1,
            last_layer_l2=self.last_layer_l2,
            last_layer_tol=self.last_layer_tol,
            last_layer_max_iter=self.last_layer_max_iter,
            num_workers=self.num_workers,
            verbose=self.verbose,
            prototype_init=self.prototype_init,
            mixed_precision=self.mixed_precision,
        )
        push = fit_stages(module, dataset, train_dataset, valid_dataset, y_enc, config,
                          device, log, checkpoint=checkpoint)
        module.set_trainable(backbone=False, add_on=False, prototypes=False)
        module.cpu().eval()
        parts = prototype_parts(module, source, push.source_index, geometry, image_size,
                                self.box_percentile, self.batch_size, cache=cache)
        log(f"[done] fit in {time.perf_counter() - t_start:.1f}s")
        return parts | {
            "classes_": classes,
            "module_": module,
            "prototype_source_index_": push.source_index.copy(),
            "prototype_location_": push.location.copy(),
            "history_": config.history,
            "image_size_": image_size,
            "feature_map_shape_": (h, w),
            "cell_geometry_": geometry,
        }

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
        """
        from ._persistence import save

        save(self, path)

    @classmethod
    def load(cls, path, backbone=None) -> ProtoPNetClassifier:
        """Read a model written by :meth:`save`; never runs code from the file.

        Parameters
        ----------
        path : str or path
        backbone : torch.nn.Module or None, default=None
            Needed only when the model was fitted with a backbone module other
            than a torchvision name or one of ``sklearn_protopnet.backbones``:
            an instance of the same architecture; its weights are replaced by
            the saved ones.

        Returns
        -------
        ProtoPNetClassifier
            The fitted model, on the CPU.
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
        check_is_fitted(self, "module_")
        return self.module_.n_prototypes

    @contextmanager
    def _inference(self, X):
        """The one inference pass over X, streamed in batches.

        Yields ``(source, batches)``, ``batches`` iterating over
        ``(start, logits, similarities, distance_map)`` tensors
        (:func:`._push.forward_batches`) with the network on ``device``; the
        network is back on the CPU afterwards. ``transform``,
        ``decision_function``, ``explain`` and ``prune`` all read it. The
        data loader draws its seed from a generator of its own, so the
        user's global torch RNG is left as it was.
        """
        check_is_fitted(self, "module_")
        source = check_images(X)
        device = resolve_device(self.device, cpu_fallback=True)
        dataset = ImageDataset(source, self.image_size_)
        module = self.module_
        try:
            module.to(device)
            yield source, forward_batches(module, dataset, self.batch_size, device,
                                          self.num_workers, torch.Generator())
        finally:
            module.cpu()

    def _outputs(self, X):
        """(logits, similarities) as float64 arrays, streamed in batches."""
        with self._inference(X) as (_, batches):
            return gather_outputs(batches)

    def decision_function(self, X) -> np.ndarray:
        """The logits (n, K); equal to ``transform(X) @ coef_.T``."""
        return self._outputs(X)[0]

    def transform(self, X) -> np.ndarray:
        """Each prototype's largest similarity over the image's patches (n, m)."""
        return self._outputs(X)[1]

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the logits (n, K)."""
        logits = self.decision_function(X)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X) -> np.ndarray:
        """Log-softmax of the logits (n, K); finite where the softmax underflows."""
        z = self.decision_function(X)
        z -= z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def predict(self, X) -> np.ndarray:
        logits = self.decision_function(X)
        return self.classes_[np.argmax(logits, axis=1)]

    def fit_transform(self, X, y=None, **fit_params):
        """Fit, then return the similarities of X (no augmentation)."""
        return self.fit(X, y, **fit_params).transform(X)


    # -------------------------------------------------------- explanations
    def explain(self, X, top_k=10, classes="predicted", box_percentile=None) -> list:
        """Explain the logits of each image of X, prototype by prototype.

        Parameters
        ----------
        X : image paths or image array
        top_k : int or None, default=10
            Evidence items kept per class, by contribution; None keeps every
            prototype, and then the contributions add up to the logit.
        classes : "predicted", "all", a label or a list of labels, default="predicted"
            The classes whose evidence is listed; the first is
            ``Explanation.evidence`` ("all" starts with the predicted class).
        box_percentile : float, default=None
            The box rule's percentile for the test images' boxes; None uses
            the fit's (``box_percentile_``), the rule of the prototypes'
            boxes. Another value changes the test images' boxes only, and
            the sheets and the report say so.

        Returns
        -------
        list of Explanation
            One per image; see :class:`sklearn_protopnet.Explanation`.
        """
        check_is_fitted(self, "module_")
        from ._explain import explain

        return explain(self, X, top_k=top_k, classes=classes, box_percentile=box_percentile)

    def nearest_patches(self, X, k=6):
        """Each prototype's k nearest patches in X, one per image.

        Returns
        -------
        NearestPatches
            ``index`` (m, k) into X, ``distance`` (m, k) squared latent
            distances, ascending, ``location`` (m, k, 2) latent cells.
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

        Returns
        -------
        self
        """
        check_is_fitted(self, "module_")
        from ._prune import prune

        self.__dict__.update(prune(self, X, y, k=k, min_own=min_own))
        return self

    def prototype_gallery(self, path=None):
        """Every prototype, grouped by class, with its source, as a PIL image.

        Saved as PNG to ``path`` when given.
        """
        check_is_fitted(self, "module_")
        from ._render import prototype_gallery

        image = prototype_gallery(self)
        if path is not None:
            image.save(path, format="PNG")
        return image

    def report(self, X, path, top_k=5) -> str:
        """Write a self-contained HTML report: the gallery and X's explanations.

        Returns the path written.
        """
        check_is_fitted(self, "module_")
        from ._report import write_report

        return write_report(self, X, path, top_k=top_k)
