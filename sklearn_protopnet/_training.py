"""The staged training: warm-up, joint, push, last layer.

The SGD stages run through a skorch ``NeuralNet`` extended through its own
hooks: ``get_loss`` adds the cluster, separation and L1 terms,
``get_all_learnable_params`` hands the optimiser only the unfrozen parts,
named ``param_groups`` give each part its learning rate, and a callback sets
the step-decay schedule. Push and the convex last layer run between epochs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, PassthroughScoring
from skorch.dataset import unpack_data
from skorch.helper import predefined_split
from skorch.utils import TeeGenerator

from ._checkpoint import get_rng_states, set_rng_states
from ._last_layer import solve_last_layer
from ._network import off_class_l1, prototype_losses
from ._push import (
    PushResult,
    discriminative_patches,
    iterate_batches,
    push_prototypes,
    similarities,
)

_BATCH_METRICS = ("ce", "cluster", "separation", "l1", "acc")


class ProtoPNetNet(NeuralNet):
    """skorch net whose loss is the ProtoPNet objective.

    ``module`` returns ``(logits, min_distances)``; the loss is
    ``CE + cluster_coef * Clst - separation_coef * Sep + l1_coef * L1``.

    ``mixed_precision`` runs the forward pass under autocast (float16 with
    gradient scaling on CUDA; bfloat16 elsewhere, used only by the tests) and
    hands float32 outputs to the loss. ``channels_last`` stores the module and
    each batch in channels-last memory format, which cuDNN convolutions run
    faster on. Batches are copied to the device without blocking.
    """

    def __init__(self, *args, cluster_coef=0.8, separation_coef=0.08, l1_coef=1e-4,
                 mixed_precision=False, channels_last=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.cluster_coef = cluster_coef
        self.separation_coef = separation_coef
        self.l1_coef = l1_coef
        self.mixed_precision = mixed_precision
        self.channels_last = channels_last

    @property
    def _device_type(self) -> str:
        return torch.device(self.device).type

    def initialize_module(self):
        super().initialize_module()
        if self.channels_last:
            self.module_.to(memory_format=torch.channels_last)
        return self

    def initialize(self):
        super().initialize()
        cuda = self._device_type == "cuda"
        self.scaler_ = torch.amp.GradScaler(
            self._device_type, enabled=bool(self.mixed_precision) and cuda
        )
        return self

    def infer(self, x, **fit_params):
        if torch.is_tensor(x):
            x = x.to(self.device, non_blocking=True)
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
        if not self.mixed_precision:
            return super().infer(x, **fit_params)
        dtype = torch.float16 if self._device_type == "cuda" else torch.bfloat16
        with torch.autocast(self._device_type, dtype=dtype):
            logits, min_distances = super().infer(x, **fit_params)
        return logits.float(), min_distances.float()

    def train_step_single(self, batch, **fit_params):
        if not self.mixed_precision:
            return super().train_step_single(batch, **fit_params)
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        self.scaler_.scale(loss).backward()
        return {"loss": loss, "y_pred": y_pred}

    def train_step(self, batch, **fit_params):
        """One step; with mixed precision, through the gradient scaler (which
        skips a step whose gradients overflowed)."""
        if not self.mixed_precision:
            return super().train_step(batch, **fit_params)
        self._zero_grad_optimizer()
        step = self.train_step_single(batch, **fit_params)
        self.notify("on_grad_computed",
                    named_parameters=TeeGenerator(self.get_all_learnable_params()),
                    batch=batch, training=True)
        for name in self._optimizers:
            self.scaler_.step(getattr(self, name + "_"))
        self.scaler_.update()
        return step

    def get_loss(self, y_pred, y_true, X=None, training=False):
        logits, min_distances = y_pred
        y_true = torch.as_tensor(y_true, device=logits.device).long()
        ce = super().get_loss(logits, y_true, X=X, training=training)
        module = self.module_
        cluster, separation = prototype_losses(min_distances, y_true, module.prototype_class)
        l1 = off_class_l1(module)
        loss = ce + self.cluster_coef * cluster - self.separation_coef * separation
        loss = loss + self.l1_coef * l1
        prefix = "train_" if training else "valid_"
        acc = (logits.argmax(dim=1) == y_true).float().mean()
        for name, value in zip(_BATCH_METRICS, (ce, cluster, separation, l1, acc)):
            self.history.record_batch(prefix + name, value.item())
        return loss

    def get_all_learnable_params(self):
        for name, param in super().get_all_learnable_params():
            if param.requires_grad:
                yield name, param


class StepDecay(Callback):
    """Per-group learning rate ``base_lr * gamma ** (stage_epoch // step)``.

    The position in the schedule is ``stage_epoch``, set by the stage runner,
    so the schedule does not depend on how epochs are grouped into calls.
    """

    def __init__(self, step: int, gamma: float):
        self.step = step
        self.gamma = gamma
        self.stage_epoch = 0
        self.decay = False

    def on_epoch_begin(self, net, **kwargs):
        factor = self.gamma ** (self.stage_epoch // self.step) if self.decay else 1.0
        for group in net.optimizer_.param_groups:
            group["lr"] = group["base_lr"] * factor


@dataclass
class TrainingConfig:
    warm_epochs: int
    joint_epochs: int
    push_start: int
    push_interval: int
    batch_size: int
    lr_backbone: float
    lr_add_on: float
    lr_prototypes: float
    weight_decay_add_on: float
    joint_lr_step: int
    joint_lr_gamma: float
    cluster_coef: float
    separation_coef: float
    last_layer_l1: float
    last_layer_l2: float
    last_layer_tol: float
    last_layer_max_iter: int
    num_workers: int
    verbose: int
    prototype_init: str = "uniform"
    mixed_precision: bool = False
    history: list = field(default_factory=list)


def push_epochs(warm_epochs: int, joint_epochs: int, start: int, interval: int) -> list[int]:
    """Epochs (1-based, counting warm-up) after which a push cycle runs.

    Pushes before the last epoch follow the schedule; ``fit`` always ends
    with one more after the last epoch.
    """
    total = warm_epochs + joint_epochs
    scheduled = range(start, total, interval) if interval > 0 else []
    return [e for e in scheduled if e > 0] + [total]


def fit_stages(module, dataset, train_dataset, valid_dataset, y_enc, config, device, log,
               checkpoint=None):
    """Train ``module`` in place; return the push result of the final push.

    With a :class:`~._checkpoint.Checkpoint`, the training state is saved
    after every step (see :func:`training_steps`), and a checkpoint holding a
    state resumes after its last completed step.
    """
    decay = StepDecay(config.joint_lr_step, config.joint_lr_gamma)
    callbacks = [("step_decay", decay)]
    for prefix, on_train in (("train_", True), ("valid_", False)):
        if on_train or valid_dataset is not None:
            callbacks += [
                (prefix + m, PassthroughScoring(name=prefix + m, on_train=on_train))
                for m in _BATCH_METRICS
            ]
    cuda = torch.device(device).type == "cuda"
    net = ProtoPNetNet(
        module,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        optimizer__param_groups=[
            ("backbone.*", {"lr": config.lr_backbone, "base_lr": config.lr_backbone}),
            (
                "add_on.*",
                {
                    "lr": config.lr_add_on,
                    "base_lr": config.lr_add_on,
                    "weight_decay": config.weight_decay_add_on,
                },
            ),
            ("prototypes", {"lr": config.lr_prototypes, "base_lr": config.lr_prototypes}),
        ],
        lr=config.lr_add_on,
        batch_size=config.batch_size,
        max_epochs=1,
        train_split=None if valid_dataset is None else predefined_split(valid_dataset),
        iterator_train__shuffle=True,
        # a last batch of one image cannot be batch-normalised where the
        # feature map is 1 x 1 (a ResNet at <= 47 px); dropping it leaves out
        # one random image per epoch
        iterator_train__drop_last=len(train_dataset) % config.batch_size == 1,
        iterator_train__num_workers=config.num_workers,
        iterator_train__pin_memory=cuda,
        iterator_valid__num_workers=config.num_workers,
        iterator_valid__pin_memory=cuda,
        callbacks=callbacks,
        callbacks__print_log=None,
        device=device,
        cluster_coef=config.cluster_coef,
        separation_coef=config.separation_coef,
        l1_coef=config.last_layer_l1,
        mixed_precision=config.mixed_precision,
        channels_last=cuda,
        verbose=0,
    )
    pushes = set(push_epochs(config.warm_epochs, config.joint_epochs,
                             config.push_start, config.push_interval))
    steps = training_steps(config.warm_epochs + config.joint_epochs, pushes)
    net.initialize()
    loop = _Loop(module, net, decay)
    first = 0
    if checkpoint is not None and checkpoint.state is not None:
        first = loop.restore(checkpoint.state, config, log)
    for index in range(first, len(steps)):
        epoch, kind = steps[index]
        loop.run(kind, epoch, dataset, train_dataset, y_enc, config, device, log)
        if checkpoint is not None:
            checkpoint.save(loop.state(index, config))
    return loop.result


def training_steps(total: int, pushes: set) -> list[tuple[int, str]]:
    """The fit as a list of ``(epoch, kind)`` steps; a checkpoint follows each.

    ``init`` is the BatchNorm calibration and the prototype initialisation
    (before epoch 1), ``sgd`` one epoch, ``push`` and ``last_layer`` the two
    halves of a projection cycle.
    """
    steps = [(0, "init")]
    for epoch in range(1, total + 1):
        steps.append((epoch, "sgd"))
        if epoch in pushes:
            steps += [(epoch, "push"), (epoch, "last_layer")]
    if total == 0:
        steps += [(0, "push"), (0, "last_layer")]
    return steps


class _Loop:
    """The mutable state of the staged loop, and its checkpoint image.

    Everything the rest of the fit depends on is here or in the module: the
    stage and where it started (the step-decay position), the optimiser of the
    current stage, the last push result, the history and the RNG states.
    """

    def __init__(self, module, net, decay):
        self.module = module
        self.net = net
        self.decay = decay
        self.stage = None
        self.stage_start = 0
        self.result = None

    def _enter_stage(self, stage: str, stage_start: int) -> None:
        self.stage = stage
        self.stage_start = stage_start
        joint = stage == "joint"
        self.module.set_trainable(backbone=joint, add_on=True, prototypes=True)
        self.net.initialize_optimizer()  # a fresh Adam per stage, as in the reference
        self.decay.decay = joint

    def run(self, kind, epoch, dataset, train_dataset, y_enc, config, device, log):
        module = self.module
        if kind == "init":
            calibrate_batchnorm(module, dataset, config, device, log)
            if config.prototype_init == "patches":
                push_prototypes(module, dataset, y_enc, config.batch_size, device,
                                config.num_workers)
            elif config.prototype_init == "discriminative":
                discriminative_patches(module, dataset, y_enc, config.batch_size, device,
                                       config.num_workers)
        elif kind == "sgd":
            stage = "warm" if epoch <= config.warm_epochs else "joint"
            if stage != self.stage:
                self._enter_stage(stage, epoch)
            self.decay.stage_epoch = epoch - self.stage_start
            self.net.partial_fit(train_dataset, y=None)
            record = {k: v for k, v in self.net.history[-1].items() if k != "batches"}
            record.update(stage=stage, epoch=epoch)
            config.history.append(record)
            log(_format_epoch(record, config.warm_epochs + config.joint_epochs))
        elif kind == "push":
            self.result = push_step(module, dataset, y_enc, config, device, log, epoch)
        elif kind == "last_layer":
            fit_last_layer(module, dataset, y_enc, config, device, log, epoch)
        else:  # pragma: no cover - the step list is built above
            raise ValueError(f"unknown training step {kind!r}")

    def state(self, index: int, config) -> dict:
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
            "history": json.dumps(_plain(config.history)),
            "rng": get_rng_states(),
        }

    def restore(self, state: dict, config, log) -> int:
        """Load a checkpointed state; return the index of the next step."""
        self.module.load_state_dict(state["module"])
        if state["stage"] is not None:
            self._enter_stage(state["stage"], int(state["stage_start"]))
            self.net.optimizer_.load_state_dict(state["optimizer"])
        if state["push"] is not None:
            self.result = PushResult(state["push"]["source_index"].numpy().copy(),
                                     state["push"]["location"].numpy().copy(),
                                     state["push"]["distance"].numpy().copy())
        config.history[:] = json.loads(state["history"])
        step = int(state["step"])
        last_epoch = max([r["epoch"] for r in config.history if r.get("stage") in
                          ("warm", "joint")], default=0)
        config.history.append({"stage": "resume", "epoch": last_epoch, "step": step})
        log(f"[resume] from the checkpoint after step {step} (epoch {last_epoch})")
        set_rng_states(state["rng"])  # last: nothing above may draw random numbers after
        return step + 1


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


def _uncalibrated_batchnorms(module: torch.nn.Module) -> list:
    """BatchNorm layers whose running statistics are still at their initial
    values (mean 0, variance 1): they have never seen data."""
    found = []
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
            if torch.all(layer.running_mean == 0) and torch.all(layer.running_var == 1):
                found.append(layer)
    return found


@torch.no_grad()
def calibrate_batchnorm(module, dataset, config, device, log) -> None:
    """Give never-trained BatchNorm layers of the backbone real statistics.

    A randomly initialised backbone is frozen, in eval mode, during warm-up;
    its BatchNorm layers would normalise with mean 0 and variance 1, and the
    switch to batch statistics at the start of the joint stage would change
    every feature at once. One pass over the training images (no gradient, no
    augmentation) with a cumulative average gives them the data's statistics
    first. Layers that already hold statistics (pretrained weights) are left
    alone.
    """
    layers = _uncalibrated_batchnorms(module.backbone)
    if not layers:
        return
    t0 = time.perf_counter()
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the pass
    module.eval()
    for layer in layers:
        layer.train()
    try:
        for start, images, _ in iterate_batches(dataset, config.batch_size, device,
                                                config.num_workers):
            if len(images) == 1 and start > 0:
                break  # a last batch of one image cannot be batch-normalised on 1 x 1 maps
            module.backbone(module.normalise(images))
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        module.eval()
    dur = time.perf_counter() - t0
    config.history.append({"stage": "batchnorm_calibration", "epoch": 0,
                           "layers": len(layers), "dur": dur})
    log(f"[batchnorm] {len(layers)} untrained BatchNorm layers calibrated on the "
        f"training images in {dur:.1f}s")


def push_step(module, dataset, y_enc, config, device, log, epoch):
    """Project the prototypes and record it in the history."""
    t0 = time.perf_counter()
    result = push_prototypes(module, dataset, y_enc, config.batch_size, device,
                             config.num_workers)
    t1 = time.perf_counter()
    config.history.append(
        {"stage": "push", "epoch": epoch, "dur": t1 - t0,
         "mean_push_distance": float(result.distance.mean())}
    )
    log(f"[push after epoch {epoch}] {module.n_prototypes} prototypes projected "
        f"(mean squared distance moved {result.distance.mean():.4f}) in {t1 - t0:.1f}s")
    return result


def fit_last_layer(module, dataset, y_enc, config, device, log, epoch):
    """Solve the last layer to optimality on similarities computed once."""
    t0 = time.perf_counter()
    _, S = similarities(module, dataset, config.batch_size, device, config.num_workers)
    t1 = time.perf_counter()
    own = module.own_class_mask().cpu().numpy()
    W0 = module.last_layer.weight.detach().cpu().double().numpy()
    sol = solve_last_layer(
        S, y_enc, own, config.last_layer_l1, config.last_layer_l2, W0,
        tol=config.last_layer_tol, max_iter=config.last_layer_max_iter,
    )
    with torch.no_grad():
        module.last_layer.weight.copy_(torch.from_numpy(sol.weight))
    t2 = time.perf_counter()
    train_acc = float((np.argmax(S @ sol.weight.T, axis=1) == y_enc).mean())
    config.history.append(
        {"stage": "last_layer", "epoch": epoch, "dur": t2 - t0, "features_dur": t1 - t0,
         "objective": sol.objective, "kkt_residual": sol.kkt_residual,
         "iterations": sol.iterations, "converged": sol.converged, "train_acc": train_acc}
    )
    log(f"[last layer after epoch {epoch}] objective {sol.objective:.5f}, KKT residual "
        f"{sol.kkt_residual:.1e} after {sol.iterations} iterations, train acc {train_acc:.3f} "
        f"(features {t1 - t0:.1f}s, solve {t2 - t1:.1f}s)")
    if not sol.converged:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(
            f"the last layer did not reach KKT residual {config.last_layer_tol:g} in "
            f"{sol.iterations} iterations (residual {sol.kkt_residual:.2e}); raise "
            "last_layer_max_iter or last_layer_l2",
            ConvergenceWarning,
            stacklevel=2,
        )
    return sol


def _format_epoch(record, total) -> str:
    parts = [f"[{record['stage']} epoch {record['epoch']}/{total}]"]
    for key in ("train_loss", "train_ce", "train_cluster", "train_separation", "train_acc",
                "valid_acc"):
        if key in record:
            parts.append(f"{key.removeprefix('train_')}={record[key]:.4f}"
                         if key != "valid_acc" else f"valid_acc={record[key]:.4f}")
    parts.append(f"{record.get('dur', 0.0):.1f}s")
    return " ".join(parts)
