"""One fit: from checked images and encoded labels to the fitted state.

:func:`train` is everything ``ProtoPNetClassifier.fit`` does after checking
its input: the seed and the checkpoint, the network, the decode cache, the
validation split, the augmentation, the "auto" rules, the staged loop
(:func:`fit_stages`) and the prototypes' parts. It returns the fitted
attributes as a dict, so that the estimator is changed only once the whole
fit has succeeded.

The staged loop is a list of steps (:func:`training_steps`): the
initialisation, one step per SGD epoch (warm-up, then joint; through skorch,
:mod:`._sgd`), and a push (:mod:`._push`) and a convex last layer
(:mod:`._last_layer`) on the push schedule and at the end. A checkpoint can
follow every step.

``verbose=1`` is :class:`Progress`: one line per epoch, push and last-layer
solve, and, in a terminal or a notebook, tqdm progress bars of the stages,
batches and images.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import time
import warnings

import numpy as np
import torch
from sklearn.utils import check_random_state
from skorch.callbacks import PassthroughScoring
from skorch.helper import predefined_split

from ._accelerate import GradientAverage, MetricAverage, Processes, ShardedBatches, global_batches
from ._augment import BatchWarp
from ._backbones import build_backbone, probe_backbone
from ._batches import similarities, similarities_of_latents
from ._checkpoint import (
    Checkpoint,
    get_rng_states,
    random_states_kept,
    set_rng_states,
    training_identity,
)
from ._explain import AUTO_BOX_PERCENTILE, prototype_parts
from ._geometry import cell_geometry
from ._images import ImageDataset, check_decodable, decode_all
from ._init import calibrate_batchnorm, initialise_prototypes
from ._last_layer import solve_last_layer
from ._network import ProtoPNet, off_class_l1
from ._params import REFERENCE_SETTINGS, image_size_pair
from ._progress import Progress
from ._push import PushResult, push_prototypes
from ._sgd import BATCH_METRICS, BatchProgress, LrSchedule, ProtoPNetNet

# ----------------------------------------------------------------------------
# the "auto" rules
# ----------------------------------------------------------------------------
#: Layers that keep a backbone's activations at a scale a 1e-3 rate trains
#: stably (BatchNorm and InstanceNorm are _NormBase's)
NORMALISATION_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm,
                        torch.nn.LayerNorm)

#: validation_fraction of early_stopping=True with validation_fraction=None
EARLY_STOPPING_FRACTION = 0.1


def resolve_auto(hp):
    """``hp`` with every "auto" value replaced by the value it stands for.

    ``lr_backbone="auto"``: 1e-4 (the reference's) for a torchvision trunk
    with pretrained weights (ImageNet features, which a large rate would
    wash out) and for a module of your own without normalisation layers
    (a CNN without BatchNorm trained to 0.79 on digits at 1e-3 and 0.98 at
    1e-4), 1e-3 otherwise: a randomly initialised backbone has everything
    to learn, and a user's own small BatchNorm CNN started from a weights
    file fine-tuned 3 points worse at 1e-4 than at 1e-3 (user guide).
    ``joint_lr_schedule="auto"``: "cosine". ``early_stopping`` without a
    ``validation_fraction`` holds out 0.1. ``box_percentile="auto"``: 90 with
    the peak rule, 95 with the paper's rectangle (``AUTO_BOX_PERCENTILE``).
    The user guide gives the measurements behind each rule.
    """
    changes = {}
    if hp.lr_backbone == "auto":
        pretrained_trunk = hp.weights is not None and isinstance(hp.backbone, str)
        unnormalised = (isinstance(hp.backbone, torch.nn.Module)
                        and not any(isinstance(layer, NORMALISATION_LAYERS)
                                    for layer in hp.backbone.modules()))
        changes["lr_backbone"] = 1e-4 if pretrained_trunk or unnormalised else 1e-3
    if hp.joint_lr_schedule == "auto":
        changes["joint_lr_schedule"] = "cosine"
    if hp.early_stopping and hp.validation_fraction is None:
        changes["validation_fraction"] = EARLY_STOPPING_FRACTION
    if hp.box_percentile == "auto":
        changes["box_percentile"] = AUTO_BOX_PERCENTILE[hp.box_rule]
    return dataclasses.replace(hp, **changes)


def auto_separation_coef(cluster_coef: float, n_classes: int) -> float:
    """``separation_coef="auto"``: half of ``cluster_coef`` for two classes,
    the reference's 0.08 for more.

    A prototype on a patch that images of every class have (background, a
    distractor) is pulled onto it by the cluster cost of its own class's
    images, a K-th of the data, and pushed off it by the separation cost of
    the other classes' images, (K - 1) K-ths of it: the push is
    ``(K - 1) * separation_coef / cluster_coef`` times the pull. With two
    classes the reference's weights make that 0.1, the smallest it can be,
    and one class's motif is enough to tell them apart, so the other
    class's prototypes drift onto shared patches. At half of
    ``cluster_coef`` (push half the pull) two-class subsets of digits and
    Fashion-MNIST kept their accuracy and had half the drifted prototypes;
    at ``cluster_coef`` (push equal to pull) they had a quarter, for 0.6
    points of accuracy. With four classes the reference's weights (a push
    0.3 of the pull) kept the boxes on the part better than an equal push
    did (docs/explanations.md has the measurements).
    """
    if n_classes == 2:
        return float(cluster_coef) / 2
    return REFERENCE_SETTINGS["separation_coef"]


#: prototype_dim="auto" for a backbone of at least this many channels
PROTOTYPE_DIM = 128


def auto_prototype_dim(channels: int) -> int:
    """``prototype_dim="auto"``: the reference's 128 (a bottleneck over
    ResNet's 512 or 2048 channels), or the backbone's ``channels`` where they
    are fewer. Widening a 64-channel map to 128 cost a quarter of the fit's
    time and no accuracy (digits and Fashion-MNIST, user guide)."""
    return min(PROTOTYPE_DIM, int(channels))


def draw_seed(random_state) -> int:
    """The one seed of a fit: ``random_state`` itself when it is an int."""
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


# ----------------------------------------------------------------------------
# one fit
# ----------------------------------------------------------------------------
def train(hp, source, y_enc: np.ndarray, classes: np.ndarray, device: torch.device,
          sample_weight: np.ndarray | None = None) -> dict:
    """Fit a network on checked input; return the estimator's fitted attributes.

    Parameters
    ----------
    hp : Hyperparameters
        The estimator's parameters (:mod:`._params`), already validated.
    source : ImageSource
        The training images, checked by :func:`._images.check_images`.
    y_enc : ndarray of int64, shape (n,)
        Labels encoded as indices into ``classes``.
    classes : ndarray of shape (K,)
    device : torch.device
        Where the SGD stages, the push and the last layer's features run.
    sample_weight : ndarray of float64, shape (n,), or None
        Each image's weight (class weights times sample weights), checked.

    The global random states (torch, numpy, ``random``) are left as they were.

    With ``hp.accelerator`` (:mod:`._accelerate`) every process of the launch
    calls this with the same arguments; the fit runs on the accelerator's
    device, rank 0's seed is every process's, and only rank 0 prints and
    writes the checkpoint.
    """
    processes = Processes.of(hp.accelerator)
    if processes.data_parallel:
        device = processes.device
    log = Progress(hp.verbose if processes.is_main else 0)
    seed = draw_seed(hp.random_state)
    if processes.n > 1:  # random_state=None draws on every process: rank 0's counts
        seed = int(processes.broadcast(torch.tensor([seed], dtype=torch.int64))[0])
    checkpoint = None
    if hp.checkpoint_dir is not None:
        params = hp.as_dict() | {"accelerator": {"processes": processes.n}
                                 if processes.data_parallel else None}
        identity = training_identity(params, source, classes, y_enc, sample_weight)
        checkpoint = Checkpoint(hp.checkpoint_dir, identity, write=processes.is_main).load()
        processes.barrier()  # every process has read it before rank 0 writes again
        if checkpoint.seed is None:
            checkpoint.seed = seed
        seed = checkpoint.seed  # a resumed fit continues the interrupted one's stream
    with random_states_kept([device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        state = _train(hp, source, y_enc, classes, device, seed, log,
                       checkpoint, sample_weight, processes)
    if checkpoint is not None:
        checkpoint.remove()
    return state


def _train(hp, source, y_enc, classes, device, seed, log, checkpoint,
           sample_weight=None, processes=None) -> dict:
    t_start = time.perf_counter()
    requested, hp = hp, resolve_auto(hp)
    image_size = image_size_pair(hp.image_size)
    built = build_backbone(hp.backbone, hp.weights, hp.normalize)
    channels, h, w = probe_backbone(built.module, image_size)
    n_classes = len(classes)
    if hp.normalize == "auto":  # the weights' statistics, as (mean, std)
        hp = dataclasses.replace(hp, normalize=(tuple(built.mean), tuple(built.std)))
    if hp.prototype_dim == "auto":
        hp = dataclasses.replace(hp, prototype_dim=auto_prototype_dim(channels))
    if hp.separation_coef == "auto":
        hp = dataclasses.replace(hp, separation_coef=auto_separation_coef(hp.cluster_coef,
                                                                          n_classes))
    _check_batch_norm_can_train(built.module, hp, (h, w))
    geometry = cell_geometry(built.module, image_size, (h, w))
    prototype_class = torch.arange(n_classes).repeat_interleave(hp.prototypes_per_class)
    module = ProtoPNet(built.module, channels, prototype_class, n_classes,
                       prototype_dim=hp.prototype_dim, add_on=hp.add_on,
                       similarity=hp.similarity, mean=built.mean, std=built.std)

    cache = _decode_within_budget(source, image_size, hp, log)
    dataset = ImageDataset(source, image_size, y=y_enc, cache=cache)
    train_idx = np.arange(len(source))
    valid_idx = None
    if hp.validation_fraction is not None:
        from sklearn.model_selection import train_test_split

        train_idx, valid_idx = train_test_split(
            train_idx, test_size=hp.validation_fraction, stratify=y_enc, random_state=seed,
        )
        train_idx = np.sort(train_idx)
    weight = None
    if sample_weight is not None:  # relative weights: mean 1 over the training images
        weight = np.asarray(sample_weight, dtype=np.float64)
        weight = weight / weight[train_idx].mean()
    # the held-out images take part in no stage: every stage sees fit_dataset
    # (or its augmented twin), whose positions map to the images by train_idx
    fit_dataset = dataset.subset(train_idx, transform=None)
    train_dataset = dataset.subset(train_idx, transform=_augmentation(hp.augment),
                                   weight=weight)
    valid_dataset = (None if valid_idx is None else
                     dataset.subset(valid_idx, transform=None, weight=weight))

    history: list[dict] = []
    decoded_bytes = 0 if cache is None else cache.numel()
    loop = fit_stages(module, fit_dataset, train_dataset, valid_dataset, y_enc[train_idx], hp,
                      device, log, history, checkpoint=checkpoint,
                      latent_budget=hp.memory_budget - decoded_bytes,
                      latent_bytes=4 * hp.prototype_dim * h * w,
                      sample_weight=None if weight is None else weight[train_idx],
                      processes=processes)
    push = loop.result
    source_index = train_idx[push.source_index]
    module.set_trainable(backbone=False, add_on=False, prototypes=False)
    module.eval()
    # the prototypes' boxes and crops on the training device, then the fitted
    # network goes to the CPU, where fitted state lives
    parts = prototype_parts(module, source, source_index, geometry, image_size,
                            hp.box_percentile, hp.batch_size, cache=cache, device=device,
                            box_rule=hp.box_rule)
    module.cpu()
    log(f"[done] fit in {time.perf_counter() - t_start:.1f}s")
    return parts | {
        "classes_": classes,
        "module_": module,
        "prototype_source_index_": source_index,
        "prototype_location_": push.location.copy(),
        "history_": history,
        "best_epoch_": loop.best_epoch if hp.early_stopping else None,
        # the training choices; where the fit ran (device, accelerator) is not one
        "auto_values_": {name: getattr(hp, name) for name, value in requested.as_dict().items()
                         if isinstance(value, str) and value == "auto"
                         and name not in ("device", "accelerator")},
        "image_size_": image_size,
        "feature_map_shape_": (h, w),
        "cell_geometry_": geometry,
    }


def _check_batch_norm_can_train(backbone, hp, feature_map_shape) -> None:
    """Refuse, before any image is decoded, a batch of one image that
    BatchNorm cannot normalise: one value per channel on a 1 x 1 map."""
    has_batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                         for m in backbone.modules())
    if hp.batch_size == 1 and tuple(feature_map_shape) == (1, 1) and has_batch_norm:
        raise ValueError(
            f"batch_size=1 cannot train this backbone: its feature map is 1 x 1 at "
            f"image_size={hp.image_size!r}, and its BatchNorm layers cannot normalise a "
            "single value per channel. Use batch_size >= 2, or a larger image_size."
        )


def _decode_within_budget(source, image_size, hp, log):
    """The decoded images as one uint8 tensor, or None to stream them.

    Images that will be streamed are still decoded once here, and dropped, so
    that a file that cannot be decoded (a valid header over truncated data)
    is named before training rather than in the middle of an epoch.
    """
    n = len(source)
    decoded_bytes = n * 3 * image_size[0] * image_size[1]
    if decoded_bytes > hp.memory_budget:
        t0 = time.perf_counter()
        check_decodable(source, image_size, hp.num_workers)
        log(f"[data] {decoded_bytes / 2**20:.0f} MiB of decoded images exceed "
            f"memory_budget; every file decodes ({time.perf_counter() - t0:.1f}s), "
            "streaming from files")
        return None
    t0 = time.perf_counter()
    cache = decode_all(source, image_size, hp.num_workers)
    log(f"[data] decoded {n} images to {image_size[0]}x{image_size[1]} "
        f"({decoded_bytes / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f}s")
    return cache


def _augmentation(augment):
    """The SGD stages' per-image transform of the ``augment`` parameter: a
    user's callable; the default (True) warps whole batches in the net
    instead (:class:`._augment.BatchWarp`, see ``_make_net``)."""
    return augment if callable(augment) else None


# ----------------------------------------------------------------------------
# the staged loop
# ----------------------------------------------------------------------------
def push_epochs(warm_epochs: int, joint_epochs: int, start: int, interval: int) -> list[int]:
    """Epochs (1-based, counting warm-up) after which a push cycle runs.

    Pushes before the last epoch follow the schedule; ``fit`` always ends
    with one more after the last epoch.
    """
    total = warm_epochs + joint_epochs
    scheduled = range(start, total, interval) if interval > 0 else []
    return [e for e in scheduled if e > 0] + [total]


def training_steps(total: int, pushes: set, restore_best: bool = False
                   ) -> list[tuple[int, str]]:
    """The fit as a list of ``(epoch, kind)`` steps; a checkpoint follows each.

    ``init`` is the BatchNorm calibration and the prototype initialisation
    (before epoch 1), ``sgd`` one epoch, ``push`` and ``last_layer`` the two
    halves of a projection cycle. With ``restore_best`` (early stopping), a
    ``restore_best`` step (the network of the best epoch back) comes before
    the final push; early stopping replaces the steps after an epoch by
    :func:`final_steps`.
    """
    steps = [(0, "init")]
    for epoch in range(1, total + 1):
        steps.append((epoch, "sgd"))
        if epoch in pushes and epoch < total:
            steps += [(epoch, "push"), (epoch, "last_layer")]
    return steps + final_steps(total, restore_best)


def final_steps(epoch: int, restore_best: bool) -> list[tuple[int, str]]:
    """The steps that end a fit after ``epoch``."""
    return ([(epoch, "restore_best")] if restore_best else []) + [
        (epoch, "push"), (epoch, "last_layer")]


def _make_net(module, train_dataset, valid_dataset, hp, device, decay,
              batch_progress=None, processes=None) -> ProtoPNetNet:
    callbacks = [("lr_schedule", decay)]
    iterator_train = {
        "iterator_train__shuffle": True,
        # a last batch of one image cannot be batch-normalised where the
        # feature map is 1 x 1 (a ResNet at <= 32 px); dropping it leaves out
        # one random image per epoch
        "iterator_train__drop_last": len(train_dataset) % hp.batch_size == 1,
    }
    if processes is not None and processes.data_parallel:
        # this process's piece of every global batch; the global batch's
        # gradient and metrics on every process (first, before any other
        # callback reads them)
        callbacks = [("gradient_average", GradientAverage(processes)),
                     ("metric_average", MetricAverage(processes))] + callbacks
        iterator_train = {
            "iterator_train__batch_sampler": ShardedBatches(len(train_dataset),
                                                            hp.batch_size, processes),
            "iterator_train__batch_size": 1, "iterator_train__shuffle": False,
            "iterator_train__drop_last": False,
        }
    if batch_progress is not None:
        callbacks.append(("batch_progress", batch_progress))
    for prefix, on_train in (("train_", True), ("valid_", False)):
        if on_train or valid_dataset is not None:
            # the epoch means only: the *_best flags are the loop's (best_flags)
            callbacks += [
                (prefix + m, PassthroughScoring(name=prefix + m, on_train=on_train,
                                                lower_is_better=None))
                for m in BATCH_METRICS
            ]
    cuda = torch.device(device).type == "cuda"
    return ProtoPNetNet(
        module,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        optimizer__param_groups=[
            ("backbone.*", {"lr": hp.lr_backbone, "base_lr": hp.lr_backbone}),
            ("add_on.*", {"lr": hp.lr_add_on, "base_lr": hp.lr_add_on,
                          "weight_decay": hp.weight_decay_add_on}),
            ("prototypes", {"lr": hp.lr_prototypes, "base_lr": hp.lr_prototypes}),
        ] + ([("last_layer.*", {"lr": hp.lr_last_layer, "base_lr": hp.lr_last_layer})]
             if hp.lr_last_layer > 0 else []),
        lr=hp.lr_add_on,
        batch_size=hp.batch_size,
        max_epochs=1,
        train_split=None if valid_dataset is None else predefined_split(valid_dataset),
        **iterator_train,
        iterator_train__num_workers=hp.num_workers,
        iterator_train__pin_memory=cuda,
        iterator_valid__num_workers=hp.num_workers,
        iterator_valid__pin_memory=cuda,
        callbacks=callbacks,
        callbacks__print_log=None,
        device=device,
        cluster_coef=hp.cluster_coef,
        separation_coef=hp.separation_coef,
        last_layer_l1=hp.last_layer_l1,
        mixed_precision=hp.mixed_precision,
        channels_last=cuda,
        batch_augment=BatchWarp() if hp.augment is True else None,
        verbose=0,
    )


def fit_stages(module, dataset, train_dataset, valid_dataset, y_enc, hp, device, log,
               history: list, checkpoint=None, latent_budget: int = 0,
               latent_bytes: int = 1, sample_weight=None, processes=None) -> _Loop:
    """Train ``module`` in place; return the loop (``.result``: the final push).

    ``dataset`` (unaugmented) and ``y_enc`` are the images every stage but
    the SGD ones reads (calibration, initialisation, push, last layer);
    ``train_dataset`` the SGD stages' (augmented); ``valid_dataset`` the
    held-out images or None. ``sample_weight`` (per image of ``dataset``)
    weighs the last layer's objective. ``latent_budget`` bytes may hold the
    latent maps of a push (``latent_bytes`` an image) so that the last layer
    after it needs no forward pass of its own. Records of every step are
    appended to ``history``; ``log`` is the fit's :class:`Progress` (messages
    and bars). With a :class:`~._checkpoint.Checkpoint`, the training state
    is saved after every step (see :func:`training_steps`), and a checkpoint
    holding a state resumes after its last completed step. ``processes``
    (:class:`._accelerate.Processes`): the processes of a data-parallel fit.
    """
    processes = Processes() if processes is None else processes
    train_batches = _train_batches(len(train_dataset), hp.batch_size, processes.n)
    decay = LrSchedule(hp.joint_lr_schedule, hp.joint_lr_step, hp.joint_lr_gamma,
                       epochs=hp.joint_epochs, batches=train_batches)
    batch_progress = BatchProgress()
    net = _make_net(module, train_dataset, valid_dataset, hp, device, decay, batch_progress,
                    processes)
    pushes = set(push_epochs(hp.warm_epochs, hp.joint_epochs, hp.push_start,
                             hp.push_interval))
    steps = training_steps(hp.warm_epochs + hp.joint_epochs, pushes,
                           restore_best=hp.early_stopping)
    net.initialize()
    valid_batches = 0 if valid_dataset is None else math.ceil(len(valid_dataset)
                                                              / hp.batch_size)
    loop = _Loop(module, net, decay, hp, device, log, history, batch_progress,
                 train_batches + valid_batches, latent_budget=latent_budget,
                 latent_bytes=latent_bytes, steps=steps, sample_weight=sample_weight,
                 processes=processes)
    index = 0
    if checkpoint is not None and checkpoint.state is not None:
        index = loop.restore(checkpoint.state)
    try:
        while index < len(loop.steps):
            epoch, kind = loop.steps[index]
            loop.run(kind, epoch, dataset, train_dataset, y_enc, index)
            if checkpoint is not None:
                checkpoint.save(loop.state(index))
            index += 1
    finally:
        loop.close_bars()  # also on Ctrl-C: the terminal is left clean
    return loop


def _train_batches(n_train: int, batch_size: int, n_processes: int = 1) -> int:
    """Training batches (steps) of one epoch (see ``drop_last`` in
    :func:`_make_net` and :func:`._accelerate.global_batches`)."""
    return global_batches(n_train, batch_size, n_processes)


class _Loop:
    """The mutable state of the staged loop, and its checkpoint image.

    Everything the rest of the fit depends on is here or in the module: the
    stage and where it started (the schedule's position), the optimiser of the
    current stage, the last push result, the steps still to run (early
    stopping shortens them), the best epoch and its network (early
    stopping), the history and the RNG states.
    """

    def __init__(self, module, net, decay, hp, device, log, history, batch_progress=None,
                 batches_per_epoch=None, latent_budget=0, latent_bytes=1, steps=(),
                 sample_weight=None, processes=None):
        self.processes = Processes() if processes is None else processes
        self.module = module
        self.net = net
        self.decay = decay
        self.hp = hp
        self.device = device
        self.log = log  # a Progress
        self.history = history
        self.stage = None
        self.stage_start = 0
        self.result = None
        self.batch_progress = batch_progress
        self.batches_per_epoch = batches_per_epoch
        self._stage_bar = None  # (stage, bar) of the stage running
        self.latents = None  # the last push's latent maps, until the last layer reads them
        self.latent_budget = latent_budget
        self.latent_bytes = latent_bytes  # of one image's latent map
        self.steps = list(steps)
        self.sample_weight = sample_weight
        self.best_epoch = None  # early stopping: the epoch of the lowest valid_ce
        self.best_score = math.inf
        self.best_module = None  # ... and its network's state (on the CPU)

    def _enter_stage(self, stage: str, stage_start: int) -> None:
        self.stage = stage
        self.stage_start = stage_start
        joint = stage == "joint"
        self.module.set_trainable(backbone=joint, add_on=True, prototypes=True,
                                  last_layer=joint and self.hp.lr_last_layer > 0)
        self.net.initialize_optimizer()  # a fresh Adam per stage, as in the reference
        self.decay.decay = joint

    def run(self, kind, epoch, dataset, train_dataset, y_enc, index=0) -> None:
        hp, module = self.hp, self.module
        if kind == "init":
            t0 = time.perf_counter()
            with self.log.images(module, "initialisation"):
                # its statistics average over batches: of the effective batch,
                # as one process would (every process runs it on all images)
                layers = calibrate_batchnorm(module, dataset, hp.batch_size * self.processes.n,
                                             self.device, hp.num_workers)
                if layers:
                    dur = time.perf_counter() - t0
                    self.history.append({"stage": "batchnorm_calibration", "epoch": 0,
                                         "layers": layers, "dur": dur})
                    self.log(f"[batchnorm] {layers} untrained BatchNorm layers calibrated "
                             f"on the training images in {dur:.1f}s")
                initialise_prototypes(hp.prototype_init, module, dataset, y_enc,
                                      hp.batch_size, self.device, hp.num_workers)
            # every process ran the same initialisation; rank 0's bits are
            # everyone's, and from here each process draws its own numbers
            self.processes.broadcast_module(module)
            self.processes.decorrelate_random_streams()
        elif kind == "sgd":
            stage = "warm" if epoch <= hp.warm_epochs else "joint"
            if stage != self.stage:
                self._enter_stage(stage, epoch)
            self.decay.stage_epoch = epoch - self.stage_start
            stage_bar = self._bar_of_stage(stage, epoch)
            self._sgd_epoch(train_dataset, epoch)
            # skorch's own *_best flags (of its default loss callbacks) count
            # from the start of this net only, so a resumed fit would differ
            record = _plain({k: v for k, v in self.net.history[-1].items()
                             if k != "batches" and not k.endswith("_best")})
            record.update(stage=stage, epoch=epoch)
            record.update(best_flags(record, self.history))
            self.history.append(record)
            stage_bar.update(1)
            stage_bar.set_postfix({k.removeprefix("train_"): f"{record[k]:.4g}" for k in
                                   ("train_loss", "train_acc", "valid_acc") if k in record})
            self.log(_format_epoch(record, hp.warm_epochs + hp.joint_epochs))
            if hp.early_stopping:
                self._early_stopping(record, epoch, index)
        elif kind == "restore_best":
            self._restore_best(epoch)
        elif kind == "push":
            self.result = self._push(dataset, y_enc, epoch)
        elif kind == "last_layer":
            self._last_layer(dataset, y_enc, epoch)
        else:  # pragma: no cover - the step list is built above
            raise ValueError(f"unknown training step {kind!r}")

    def _early_stopping(self, record: dict, epoch: int, index: int) -> None:
        """Keep the network of the lowest ``valid_ce``; after
        ``n_iter_no_change`` epochs without one, replace the steps left by
        the final ones (restore the best, push, last layer)."""
        score = record["valid_ce"]
        if score < self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_module = {k: v.detach().cpu().clone() for k, v in
                                self.module.state_dict().items()}
        stale = epoch - self.best_epoch
        if stale >= self.hp.n_iter_no_change and index + 1 < len(self.steps) and \
                self.steps[index + 1][1] != "restore_best":
            self.steps[index + 1:] = final_steps(epoch, restore_best=True)
            self.history.append({"stage": "early_stopping", "epoch": epoch,
                                 "best_epoch": self.best_epoch,
                                 "best_valid_ce": self.best_score})
            self.log(f"[early stopping after epoch {epoch}] valid_ce has not improved "
                     f"for {stale} epochs; best epoch {self.best_epoch} "
                     f"(valid_ce {self.best_score:.4f})")

    def _restore_best(self, epoch: int) -> None:
        """The network of the best epoch back, before the final push."""
        if self.best_module is not None and self.best_epoch != epoch:
            self.module.load_state_dict(self.best_module)
        self.history.append({"stage": "restore_best", "epoch": epoch,
                             "best_epoch": self.best_epoch})
        self.log(f"[restore] the network of epoch {self.best_epoch} (valid_ce "
                 f"{self.best_score:.4f}) for the final push and last layer")
        self.best_module = None  # not needed any more; keeps checkpoints small

    def _bar_of_stage(self, stage: str, epoch: int):
        """The bar over the epochs of ``stage``, made at its first epoch run
        (after a resume, starting at the epochs done)."""
        if self._stage_bar is not None and self._stage_bar[0] == stage:
            return self._stage_bar[1]
        self.close_bars()
        hp = self.hp
        first, total = (1, hp.warm_epochs) if stage == "warm" else (hp.warm_epochs + 1,
                                                                   hp.joint_epochs)
        bar = self.log.bar(stage, total=total, unit="epoch", initial=epoch - first)
        self._stage_bar = (stage, bar)
        return bar

    def _sgd_epoch(self, train_dataset, epoch: int) -> None:
        """One skorch epoch, with a bar over its batches."""
        bar = self.log.bar(f"epoch {epoch}", total=self.batches_per_epoch, unit="batch")
        if self.batch_progress is not None and self.log.draws_bars:
            self.batch_progress.bar = bar
        try:
            self.net.partial_fit(train_dataset, y=None)
        finally:
            if self.batch_progress is not None:
                self.batch_progress.bar = None
            bar.close()

    def close_bars(self) -> None:
        """Close the bar of the stage running, if any."""
        if self._stage_bar is not None:
            self._stage_bar[1].close()
            self._stage_bar = None

    def _push(self, dataset, y_enc, epoch) -> PushResult:
        """Project the prototypes and record it in the history."""
        hp = self.hp
        t0 = time.perf_counter()
        # the latent maps of this pass serve the last layer's features too,
        # when they fit in the memory budget left by the decoded images
        # (of this process's block of the images, in a data-parallel fit)
        start, stop = self.processes.block(len(dataset))
        keep = [] if self.latent_budget >= (stop - start) * self.latent_bytes else None
        with self.log.images(self.module, f"push after epoch {epoch}", total=len(dataset)):
            result = push_prototypes(self.module, dataset, y_enc, hp.batch_size,
                                     self.device, hp.num_workers, keep_latents=keep,
                                     processes=self.processes)
        self.latents = keep
        dur = time.perf_counter() - t0
        moved = float(result.distance.mean())
        self.history.append({"stage": "push", "epoch": epoch, "dur": dur,
                             "mean_push_distance": moved})
        self.log(f"[push after epoch {epoch}] {self.module.n_prototypes} prototypes "
                 f"projected (mean squared distance moved {moved:.4f}) in {dur:.1f}s")
        return result

    def _last_layer(self, dataset, y_enc, epoch):
        """Solve the last layer to optimality on similarities computed once."""
        hp, module = self.hp, self.module
        t0 = time.perf_counter()
        with self.log.images(module, f"last layer after epoch {epoch}",
                             total=len(dataset)) as bar:
            if self.latents is not None:  # the push's pass: the network is frozen since
                _, S = similarities_of_latents(module, self.latents, self.device)
                bar.update(len(dataset))
            else:  # e.g. a fit resumed between push and last layer
                _, S = similarities(module, self.processes.shard(dataset)[0], hp.batch_size,
                                    self.device, hp.num_workers)
            self.latents = None
            S = self.processes.gather_rows(S)  # this process's block: all of them
            t1 = time.perf_counter()
            bar.set_postfix_str("solving")
            own = module.own_class_mask().cpu().numpy()
            W0 = module.last_layer.weight.detach().cpu().double().numpy()
            sol = solve_last_layer(S, y_enc, own, hp.last_layer_l1, hp.last_layer_l2, W0,
                                   tol=hp.last_layer_tol, max_iter=hp.last_layer_max_iter,
                                   sample_weight=self.sample_weight)
        with torch.no_grad():
            module.last_layer.weight.copy_(torch.from_numpy(sol.weight))
            # every process solved the same problem; rank 0's bits are everyone's
            self.processes.broadcast(module.last_layer.weight.data)
        t2 = time.perf_counter()
        train_acc = float((np.argmax(S @ sol.weight.T, axis=1) == y_enc).mean())
        self.history.append(
            {"stage": "last_layer", "epoch": epoch, "dur": t2 - t0, "features_dur": t1 - t0,
             "objective": sol.objective, "kkt_residual": sol.kkt_residual,
             "iterations": sol.iterations, "converged": sol.converged,
             "train_acc": train_acc, "off_class_l1": off_class_l1(module).item()})
        self.log(f"[last layer after epoch {epoch}] objective {sol.objective:.5f}, KKT "
                 f"residual {sol.kkt_residual:.1e} after {sol.iterations} iterations, train "
                 f"acc {train_acc:.3f} (features {t1 - t0:.1f}s, solve {t2 - t1:.1f}s)")
        if not sol.converged:
            from sklearn.exceptions import ConvergenceWarning

            warnings.warn(
                f"the last layer did not reach KKT residual {hp.last_layer_tol:g} in "
                f"{sol.iterations} iterations (residual {sol.kkt_residual:.2e}); raise "
                "last_layer_max_iter or last_layer_l2", ConvergenceWarning, stacklevel=2,
            )

    def state(self, index: int) -> dict:
        """What a resumed fit needs to continue after step ``index``."""
        result = self.result
        return {
            "step": index,
            "stage": self.stage,
            "stage_start": self.stage_start,
            "module": {k: v.detach().cpu().clone() for k, v in
                       self.module.state_dict().items()},
            "optimizer": (self.net.optimizer_.state_dict() if self.stage is not None
                          else None),
            "push": None if result is None else {
                "source_index": torch.from_numpy(result.source_index),
                "location": torch.from_numpy(result.location),
                "distance": torch.from_numpy(result.distance),
            },
            "history": json.dumps(_plain(self.history)),
            "steps": json.dumps(self.steps),
            "best": {"epoch": self.best_epoch, "score": self.best_score,
                     "module": self.best_module},
            "rng": get_rng_states(),
        } | ({"rng_ranks": self.processes.gather_objects(get_rng_states())}
             if self.processes.n > 1 else {})

    def restore(self, state: dict) -> int:
        """Load a checkpointed state; return the index of the next step."""
        self.module.load_state_dict(state["module"])
        if state["stage"] is not None:
            self._enter_stage(state["stage"], int(state["stage_start"]))
            self.net.optimizer_.load_state_dict(state["optimizer"])
        if state["push"] is not None:
            self.result = PushResult(state["push"]["source_index"].numpy().copy(),
                                     state["push"]["location"].numpy().copy(),
                                     state["push"]["distance"].numpy().copy())
        self.history[:] = json.loads(state["history"])
        self.steps = [tuple(s) for s in json.loads(state["steps"])]
        best = state["best"]
        self.best_epoch, self.best_score, self.best_module = (
            best["epoch"], float(best["score"]), best["module"])
        step = int(state["step"])
        last_epoch = max([r["epoch"] for r in self.history if r.get("stage") in
                          ("warm", "joint")], default=0)
        self.history.append({"stage": "resume", "epoch": last_epoch, "step": step})
        self.log(f"[resume] from the checkpoint after step {step} (epoch {last_epoch})")
        # last: nothing above may draw random numbers after; in a data-parallel
        # fit, each process's own stream
        set_rng_states(state["rng_ranks"][self.processes.rank] if "rng_ranks" in state
                       else state["rng"])
        return step + 1


#: The epoch metrics (``train_<name>``, ``valid_<name>``) that get a
#: ``<metric>_best`` flag, and whether a higher value is better.
HIGHER_IS_BETTER = {"loss": False, "ce": False, "cluster": False, "separation": True,
                    "acc": True}


def best_flags(record: dict, history: list) -> dict:
    """The ``<metric>_best`` flags of an SGD epoch's ``record``.

    A flag is True when the metric improves (strictly) on every earlier SGD
    epoch of the fit in ``history``, warm-up and joint alike: both stages
    minimise the same objective and report the same metrics, so the best
    epoch of the fit is one epoch. The first epoch is the best so far. As
    the flags are computed from the fit's own history, which a checkpoint
    holds, a resumed fit flags the epochs an uninterrupted one does.
    """
    earlier = [r for r in history if r.get("stage") in ("warm", "joint")]
    flags = {}
    for prefix in ("train_", "valid_"):
        for name, higher in HIGHER_IS_BETTER.items():
            key = prefix + name
            if key not in record:
                continue
            seen = [r[key] for r in earlier if key in r]
            value = record[key]
            flags[key + "_best"] = bool(
                not seen or (value > max(seen) if higher else value < min(seen)))
    return flags


def _plain(value):
    """History records as plain JSON values (numpy scalars become Python ones)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def _format_epoch(record, total) -> str:
    parts = [f"[{record['stage']} epoch {record['epoch']}/{total}]"]
    for key in ("train_loss", "train_ce", "train_cluster", "train_separation", "train_acc",
                "valid_acc"):
        if key in record:
            parts.append(f"{key.removeprefix('train_')}={record[key]:.4f}")
    parts.append(f"{record.get('dur', 0.0):.1f}s")
    return " ".join(parts)


__all__ = ["HIGHER_IS_BETTER", "Progress", "best_flags", "draw_seed",
           "final_steps", "fit_stages", "push_epochs", "resolve_auto", "train",
           "training_steps"]
