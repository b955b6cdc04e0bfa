"""The SGD stages on skorch: the net whose loss is the ProtoPNet objective.

:class:`ProtoPNetNet` extends skorch's ``NeuralNet`` through its own hooks:
``get_loss`` adds the cluster and separation terms,
``get_all_learnable_params`` hands the optimiser only the unfrozen parts,
``infer`` and ``train_step`` add mixed precision and channels-last, and
:class:`LrSchedule` (a callback) sets the joint stage's learning-rate schedule
and :class:`BatchProgress` (another) advances the progress bar of
``verbose=1``. One ``partial_fit`` call is one epoch; the staged loop of
:mod:`._training` decides which parts learn in it.

skorch's ``partial_fit`` catches ``KeyboardInterrupt`` around ``fit_loop``
and returns as if the epoch had ended, which would let the staged loop
record and checkpoint half an epoch as a whole one. ``fit_loop`` therefore
carries the interrupt past that handler (as :class:`_Interrupted`) and
``partial_fit`` raises it again: Ctrl-C ends the fit within the batch it
arrives in.
"""

from __future__ import annotations

import math

import torch
from skorch import NeuralNet
from skorch.callbacks import Callback
from skorch.dataset import unpack_data
from skorch.utils import TeeGenerator

from ._network import off_class_l1, prototype_losses

#: Per-batch metrics recorded in the history (``train_*`` and ``valid_*``).
BATCH_METRICS = ("ce", "cluster", "separation", "acc")


class _Interrupted(Exception):
    """A ``KeyboardInterrupt`` on its way past skorch's handler (its cause)."""


class ProtoPNetNet(NeuralNet):
    """skorch net whose loss is the ProtoPNet objective.

    ``module`` returns ``(logits, min_distances)``; the loss is
    ``CE + cluster_coef * Clst - separation_coef * Sep``. The reference adds
    ``last_layer_l1 * L1``, the L1 norm of the last layer's off-class
    weights. The last layer is solved after each push (:mod:`._last_layer`)
    and by default frozen in every SGD stage, where that term is a constant
    (it would change no gradient, only the recorded loss) and is left out;
    when the joint stage trains the last layer (``lr_last_layer > 0``), it
    is added.

    ``mixed_precision`` runs the forward pass under autocast (float16 with
    gradient scaling on CUDA; bfloat16 elsewhere, used only by the tests) and
    hands float32 outputs to the loss. ``channels_last`` stores the module and
    each batch in channels-last memory format, which cuDNN convolutions run
    faster on. Batches are copied to the device without blocking.
    ``batch_augment`` (a :class:`._augment.BatchWarp`) warps each training
    batch on the device; evaluation batches are never augmented.
    """

    def __init__(self, *args, cluster_coef=0.8, separation_coef=0.08, last_layer_l1=1e-4,
                 mixed_precision=False, channels_last=False, batch_augment=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_augment = batch_augment
        self.cluster_coef = cluster_coef
        self.separation_coef = separation_coef
        self.last_layer_l1 = last_layer_l1
        self.mixed_precision = mixed_precision
        self.channels_last = channels_last

    def fit_loop(self, X, y=None, epochs=None, **kwargs):
        try:
            return super().fit_loop(X, y, epochs, **kwargs)
        except KeyboardInterrupt as exc:
            raise _Interrupted from exc

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """One call of skorch's ``partial_fit``; a ``KeyboardInterrupt`` during
        it is raised to the caller (skorch's own would end the epoch only)."""
        try:
            return super().partial_fit(X, y, classes, **fit_params)
        except _Interrupted as wrapped:
            raise wrapped.__cause__ from None

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
            if self.batch_augment is not None and self.module_.training:
                x = self.batch_augment(x)
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
        """The objective on a batch; ``y_true`` is the labels, or (labels,
        weights) for a data set with image weights (class and sample
        weights, scaled to mean 1 over the training images), which then
        multiply every per-image term."""
        logits, min_distances = y_pred
        weight = None
        if isinstance(y_true, (list, tuple)):
            y_true, weight = y_true
            weight = torch.as_tensor(weight, device=logits.device, dtype=logits.dtype)
        y_true = torch.as_tensor(y_true, device=logits.device).long()
        if weight is None:
            ce = super().get_loss(logits, y_true, X=X, training=training)
        else:
            ce = (torch.nn.functional.cross_entropy(logits, y_true, reduction="none")
                  * weight).mean()
        module = self.module_
        cluster, separation = prototype_losses(min_distances, y_true, module.prototype_class,
                                               weight)
        loss = ce + self.cluster_coef * cluster - self.separation_coef * separation
        if module.last_layer.weight.requires_grad:
            loss = loss + self.last_layer_l1 * off_class_l1(module)
        prefix = "train_" if training else "valid_"
        acc = (logits.argmax(dim=1) == y_true).float().mean()
        # one device sync per batch for the four metrics, not one each
        values = torch.stack([ce, cluster, separation, acc]).detach().tolist()
        for name, value in zip(BATCH_METRICS, values):
            self.history.record_batch(prefix + name, value)
        return loss

    def get_all_learnable_params(self):
        for name, param in super().get_all_learnable_params():
            if param.requires_grad:
                yield name, param


class LrSchedule(Callback):
    """The joint stage's learning rates: ``base_lr`` times :meth:`factor`.

    ``kind="step"``: ``gamma ** (stage_epoch // step)``, set per epoch (the
    reference's). ``kind="cosine"``: ``(1 + cos(pi * t / epochs)) / 2`` at
    ``t`` = the joint epochs done so far, batch by batch (``batches`` training
    batches an epoch), from 1 at the stage's first batch towards 0 at its
    end. The position is ``stage_epoch``, set by the stage runner, so the
    schedule does not depend on how epochs are grouped into calls (or on a
    resume). Outside the joint stage (``decay=False``) the factor is 1.
    """

    def __init__(self, kind: str, step: int, gamma: float, epochs: int = 1,
                 batches: int = 1):
        self.kind = kind
        self.step = step
        self.gamma = gamma
        self.epochs = max(int(epochs), 1)
        self.batches = max(int(batches), 1)
        self.stage_epoch = 0
        self.decay = False
        self._batch = 0

    def factor(self, position: float) -> float:
        """The rate multiplier ``position`` joint epochs into the stage."""
        if not self.decay:
            return 1.0
        if self.kind == "step":
            return self.gamma ** (int(position) // self.step)
        return 0.5 * (1.0 + math.cos(math.pi * min(position / self.epochs, 1.0)))

    def _apply(self, net, position: float) -> None:
        factor = self.factor(position)
        for group in net.optimizer_.param_groups:
            group["lr"] = group["base_lr"] * factor

    def on_epoch_begin(self, net, **kwargs):
        self._batch = 0
        self._apply(net, self.stage_epoch)

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training and self.decay and self.kind == "cosine":
            self._apply(net, self.stage_epoch + self._batch / self.batches)
            self._batch += 1


class BatchProgress(Callback):
    """Advance ``bar`` by one per batch, showing the epoch's running means.

    ``bar`` is a tqdm bar set by the staged loop for each epoch (None: no
    bar, the callback does nothing). Its postfix holds the running means,
    over the epoch's training batches so far, of the loss and the batch
    metrics, kept as sums so that a batch costs the same at any point.
    """

    #: what the postfix shows: label, history key of the batch
    SHOWN = (("loss", "train_loss"), ("ce", "train_ce"), ("clst", "train_cluster"),
             ("sep", "train_separation"), ("acc", "train_acc"))

    def __init__(self):
        self.bar = None
        self._sums = {}
        self._images = 0

    def on_epoch_begin(self, net, **kwargs):
        self._sums = dict.fromkeys([key for _, key in self.SHOWN], 0.0)
        self._images = 0

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        if self.bar is None:
            return
        if training:
            row = net.history[-1, "batches", -1]
            n = row["train_batch_size"]
            self._images += n
            for key in self._sums:
                self._sums[key] += row[key] * n
            self.bar.set_postfix({label: f"{self._sums[key] / self._images:.4g}"
                                  for label, key in self.SHOWN}, refresh=False)
        self.bar.update(1)


__all__ = ["BATCH_METRICS", "BatchProgress", "LrSchedule", "ProtoPNetNet"]
