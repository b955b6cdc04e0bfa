"""Every hyperparameter of the estimator, declared once.

Each :class:`Param` holds a name, its default, its scikit-learn constraints,
its numpydoc type and description, how ``protopnet fit`` exposes it and
whether it changes the fitted model. Everything else is derived from
:data:`HYPERPARAMETERS`:

- the estimator's ``__init__`` (:func:`declare_hyperparameters`): a real
  signature with every parameter named, and a body that only assigns them,
  generated the way :mod:`dataclasses` generates ``__init__``, so that
  ``get_params``, ``clone`` and ``inspect.signature`` see the parameters;
- its ``_parameter_constraints`` and the Parameters section of its docstring;
- :class:`Hyperparameters`, the frozen record of one fit's settings that the
  training code reads (``hp.warm_epochs``), with no field list of its own;
- the options of ``protopnet fit`` (:func:`add_cli_options`);
- the parameters a checkpoint's identity leaves out (:data:`NOT_IN_IDENTITY`).

Adding a hyperparameter is one :class:`Param` here plus the code that uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
import os
import re
import textwrap
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
    make_constraint,
)

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of decoded uint8 images kept in memory
MIN_IMAGE_SIDE = 8


class ImageSize(Options):
    """An int >= 8, or a (height, width) pair of them.

    An :class:`Options` subclass (as scikit-learn's ``StrOptions`` is) so
    that scikit-learn's parameter validation takes it as a constraint.
    """

    def __init__(self):
        super().__init__(object, set())

    def is_satisfied_by(self, val) -> bool:
        def side(v):
            return isinstance(v, numbers.Integral) and not isinstance(v, bool) \
                and v >= MIN_IMAGE_SIDE

        if side(val):
            return True
        return isinstance(val, (tuple, list)) and len(val) == 2 and all(side(v) for v in val)

    def __str__(self) -> str:
        return f"an int >= {MIN_IMAGE_SIDE} or a (height, width) pair of them"


class ProcessGroup(Options):
    """An accelerate ``Accelerator`` or ``PartialState``: anything with
    ``num_processes``, ``process_index`` and ``device``."""

    def __init__(self):
        super().__init__(object, set())

    def is_satisfied_by(self, val) -> bool:
        return all(hasattr(val, a) for a in ("num_processes", "process_index", "device"))

    def __str__(self) -> str:
        return "an accelerate Accelerator or PartialState"


def image_size_pair(value) -> tuple[int, int]:
    """(height, width) of the ``image_size`` parameter."""
    if isinstance(value, numbers.Integral):
        return int(value), int(value)
    h, w = value
    return int(h), int(w)


_SAME = object()  # cli_default: the same as the default


def _positive(kind=numbers.Real, low=0, closed="left", high=None):
    return Interval(kind, low, high, closed=closed)


@dataclass(frozen=True)
class Param:
    """One hyperparameter.

    ``cli`` is how ``protopnet fit`` takes it: None (not offered), ``"auto"``
    (the argparse type follows from the default: int, float, str, or a
    ``--x/--no-x`` flag for a bool) or a callable parsing the option's text.
    ``cli_default`` replaces the default on the command line only;
    ``cli_help`` the option's help (by default the doc's first sentence,
    markup removed) where the sentence speaks of what a command line cannot
    pass.
    """

    name: str
    default: Any
    constraints: list
    type: str
    doc: str
    cli: Any = "auto"
    cli_default: Any = _SAME
    cli_help: str | None = None
    in_identity: bool = True  # a checkpoint of another value is refused

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def command_line_default(self):
        return self.default if self.cli_default is _SAME else self.cli_default

    def docstring(self) -> str:
        """The parameter's entry in a numpydoc Parameters section."""
        if self.name == "memory_budget":
            default = "2 GiB"
        elif isinstance(self.default, str):
            default = f'"{self.default}"'
        else:
            default = repr(self.default)
        body = textwrap.indent(textwrap.fill(" ".join(self.doc.split()), 70), "    ")
        return f"{self.name} : {self.type}, default={default}\n{body}"


def _float_or(word: str, kind=float):
    """An option's parser: ``word`` (None for "none") or a number of ``kind``."""
    def parse(text: str):
        if text == word:
            return None if word == "none" else word
        try:
            return kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            msg = f"expected {what} or {word!r}, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
    parse.__name__ = f"{kind.__name__}_or_{word}"
    return parse


def _normalize_option(text: str):
    if text in ("auto", "imagenet"):
        return text
    if text == "none":
        return None
    raise argparse.ArgumentTypeError(f"expected auto, imagenet or none, got {text!r}")


def _class_weight_option(text: str):
    if text in ("balanced", "none"):
        return None if text == "none" else text
    raise argparse.ArgumentTypeError(f"expected balanced or none, got {text!r}")


def _accelerator_option(text: str):
    if text in ("auto", "none"):
        return None if text == "none" else text
    raise argparse.ArgumentTypeError(f"expected auto or none, got {text!r}")


def _str_or_none(text: str):
    return None if text == "none" else text


HYPERPARAMETERS: tuple[Param, ...] = (
    # -- the network ----------------------------------------------------------
    Param("backbone", "resnet18", [str, torch.nn.Module], "str or torch.nn.Module", """
        A torchvision model name (see :func:`sklearn_protopnet.list_backbones`),
        cut at its last convolutional feature map, or any module mapping
        (N, 3, H, W) images to a feature map (N, C, h, w). A module is copied,
        never trained in place. On the command line, ``small`` is
        :class:`sklearn_protopnet.backbones.SmallCNN`.""",
          cli_help="a torchvision model name (sklearn_protopnet.list_backbones() lists "
                   "them), or 'small' for the built-in SmallCNN, a good start for images "
                   "of 64 px or less"),
    Param("weights", None, [None, str, os.PathLike], "None, str or path", """
        None for random initialisation, a torchvision weights name such as
        ``"DEFAULT"`` or ``"IMAGENET1K_V1"`` (downloaded where there is
        internet), or the path of a local state_dict file.""", cli=_str_or_none),
    Param("image_size", 224, [ImageSize()], "int or (int, int)", """
        Images are resized to this (height, width) before the backbone.""", cli=int),
    Param("normalize", "auto", [StrOptions({"auto", "imagenet"}), None, tuple, list],
          '"auto", "imagenet", None or (mean, std)', """
        Per-channel normalisation of images scaled to [0, 1] before the
        backbone. "auto" uses the statistics of the torchvision weights (the
        ImageNet ones) and ImageNet statistics for other backbones; None
        feeds [0, 1] images unchanged; (mean, std) takes 3 values each (or
        one of each).""", cli=_normalize_option),
    Param("mixed_precision", False, ["boolean"], "bool", """
        Run the SGD stages under float16 autocast with gradient scaling (CUDA
        only; refused on the CPU). Push, similarities and prediction always
        run in float32, with the logits in float64, so ``decision_function ==
        transform @ coef_.T`` to float64 rounding."""),
    Param("prototypes_per_class", 10, [_positive(numbers.Integral, 1)], "int", """
        Prototypes allocated to each class; m = prototypes_per_class x K."""),
    Param("prototype_dim", "auto", [StrOptions({"auto"}), _positive(numbers.Integral, 1)],
          'int or "auto"', """
        Depth D of the latent space and of each (1x1) prototype. "auto": the
        reference's 128, or the backbone's channel count C where C is
        smaller, so that the add-on never widens the features; the user guide
        gives the measurement.""", cli=_float_or("auto", int)),
    Param("add_on", "regular", [StrOptions({"regular", "bottleneck"})],
          '{"regular", "bottleneck"}', """
        The 1x1 convolutions between the backbone and the prototypes."""),
    Param("similarity", "log", [StrOptions({"log", "linear", "cosine"})],
          '{"log", "linear", "cosine"}', """
        ``log((d + 1) / (d + 1e-4))`` or ``-d`` of the squared distance d, or
        "cosine": the cosine of a latent cell and a prototype, both scaled to
        unit length (their squared distance is then ``2 - 2 cos``, which the
        cluster and separation costs use). docs/benchmarks.md has the
        measurements."""),
    # -- the stages -----------------------------------------------------------
    Param("prototype_init", "discriminative",
          [StrOptions({"discriminative", "patches", "uniform"})],
          '{"discriminative", "patches", "uniform"}', """
        "uniform" draws prototypes uniformly in [0, 1) as the reference does;
        "patches" then moves each to its nearest latent patch of its own class
        before training starts (a push at initialisation); "discriminative"
        starts each prototype of class k on a latent patch that is close to
        patches of class-k images and far from those of other classes (the
        cluster-minus-separation margin, scored on a sample of images), so
        that prototypes do not start on background every class shares."""),
    Param("warm_epochs", 5, [_positive(numbers.Integral)], "int", """
        Epochs with the backbone frozen (add-on and prototypes learn)."""),
    Param("joint_epochs", 20, [_positive(numbers.Integral)], "int", """
        Epochs in which backbone, add-on and prototypes learn together."""),
    Param("push_start", 10, [_positive(numbers.Integral, 1)], "int", """
        The first push and last-layer cycle runs after this epoch (counting
        warm-up epochs). ``fit`` always ends with a push and the last
        layer."""),
    Param("push_interval", 10, [_positive(numbers.Integral)], "int", """
        Epochs between two push and last-layer cycles after ``push_start``;
        0 disables the intermediate pushes."""),
    Param("batch_size", 32, [_positive(numbers.Integral, 1)], "int", """
        Images per batch in every stage and in inference."""),
    Param("lr_backbone", "auto", [StrOptions({"auto"}), _positive()], 'float or "auto"', """
        Adam learning rate of the backbone in the joint stage; "auto" is 1e-4
        (the reference's) for a torchvision backbone with pretrained weights
        and for an ``nn.Module`` of your own without BatchNorm, InstanceNorm,
        GroupNorm or LayerNorm layers, and 1e-3 for a randomly initialised
        torchvision backbone or a module of your own with one of them (with
        or without a weights file); the user guide gives the measurements
        that chose it.""", cli=_float_or("auto")),
    Param("lr_add_on", 3e-3, [_positive()], "float", """
        Adam learning rate of the add-on layers in the warm and joint
        stages."""),
    Param("lr_prototypes", 3e-3, [_positive()], "float", """
        Adam learning rate of the prototypes in the warm and joint stages."""),
    Param("lr_last_layer", 0.0, [_positive()], "float", """
        Adam learning rate of the last layer in the joint stage, with
        ``last_layer_l1`` times the L1 norm of the weights between
        prototypes and other classes added to the loss; 0 keeps it frozen
        there, as the reference does (every push still ends with the convex
        solve). docs/benchmarks.md has the measurements."""),
    Param("weight_decay_add_on", 1e-3, [_positive()], "float", """
        Adam weight decay of the add-on layers (the backbone and the
        prototypes have none)."""),
    Param("joint_lr_schedule", "auto", [StrOptions({"auto", "cosine", "step"})],
          '{"auto", "cosine", "step"}', """
        How the joint stage's learning rates change. "step": multiplied by
        ``joint_lr_gamma`` every ``joint_lr_step`` joint epochs (the
        reference's schedule, made for thousands of steps per epoch);
        "cosine": a half cosine from the base rates down to zero over the
        whole joint stage, batch by batch, so that the schedule fits any
        number of epochs; "auto" is "cosine" (see the user guide)."""),
    Param("joint_lr_step", 5, [_positive(numbers.Integral, 1)], "int", """
        With ``joint_lr_schedule="step"``, the joint stage's learning rates
        are multiplied by ``joint_lr_gamma`` every this many joint
        epochs."""),
    Param("joint_lr_gamma", 0.1, [Interval(numbers.Real, 0, 1, closed="right")], "float", """
        Factor of the step schedule; 1.0 keeps the rates constant."""),
    Param("cluster_coef", 0.8, [_positive()], "float", """
        Weight of the cluster cost (the distance from each image to its
        nearest prototype of its own class) in the SGD loss."""),
    Param("separation_coef", "auto", [StrOptions({"auto"}), _positive()], 'float or "auto"',
          """
        Weight of the separation cost (the distance from each image to its
        nearest prototype of another class), subtracted in the SGD loss.
        "auto" is half of ``cluster_coef`` for two classes (0.4 with the
        default 0.8), where the reference's 0.08 lets one class's prototypes
        drift onto patches that both classes have, and the reference's 0.08
        for more (the user guide gives the reasoning and the
        measurements).""", cli=_float_or("auto")),
    Param("last_layer_l1", 1e-4, [_positive()], "float", """
        L1 penalty on the last-layer weights that link a prototype to
        another class, in the convex last-layer problem (the SGD stages keep
        the last layer frozen, so the term would be a constant there)."""),
    Param("last_layer_l2", 1e-4, [_positive()], "float", """
        Small ridge penalty that makes the last-layer problem strongly convex
        so that its minimum exists (see the docs); 0 gives the reference
        objective."""),
    Param("last_layer_tol", 1e-6, [Interval(numbers.Real, 0, None, closed="neither")],
          "float", """
        The last-layer solver stops when its KKT residual is below this."""),
    Param("last_layer_max_iter", 20000, [_positive(numbers.Integral)], "int", """
        Largest number of proximal-gradient iterations of one last-layer
        solve; a solve that stops there warns with a ConvergenceWarning."""),
    Param("augment", True, ["boolean", callable], "bool or callable", """
        Augmentation of the SGD stages (random resized crop, flip, small
        rotation and shear) on uint8 (3, H, W) tensors; a callable replaces
        it. Push, the last layer, predict and explain never augment."""),
    Param("validation_fraction", None, [None, Interval(numbers.Real, 0, 1, closed="neither")],
          "float or None", """
        Hold out this stratified fraction of the images from every stage of
        the fit (BatchNorm calibration, initialisation, the SGD stages, push
        and the last layer) to monitor ``valid_*`` metrics in ``history_``
        and, with ``early_stopping``, to choose the epoch. With
        ``early_stopping=True`` and None, 0.1 is held out.""",
          cli=_float_or("none")),
    Param("early_stopping", False, ["boolean"], "bool", """
        Stop the SGD stages when the held-out cross-entropy (``valid_ce``)
        has not improved for ``n_iter_no_change`` epochs, restore the
        network of the best epoch and end with a push and the last layer on
        it (``best_epoch_``). Also at the end of the schedule the best epoch
        is restored before the final push."""),
    Param("n_iter_no_change", 5, [_positive(numbers.Integral, 1)], "int", """
        Epochs without a lower ``valid_ce`` before ``early_stopping``
        stops."""),
    Param("class_weight", None, [None, StrOptions({"balanced"}), dict],
          'None, "balanced" or dict', """
        Weights of the classes in the SGD stages' loss (every per-image term:
        cross-entropy, cluster and separation costs) and in the convex last
        layer: a dict from label to weight, or "balanced" (n / (K * n_k), as
        in scikit-learn). They multiply ``sample_weight`` of ``fit``; the
        product is scaled to mean 1 over the training images, so only ratios
        matter.""", cli=_class_weight_option),
    # -- resources and bookkeeping ---------------------------------------------
    Param("memory_budget", DEFAULT_MEMORY_BUDGET, [_positive(numbers.Integral)], "int", """
        Bytes of decoded images kept in memory during ``fit``; within it every
        image is decoded once per fit, beyond it images are streamed. What
        the decoded images leave of it may hold the latent maps of a push, so
        that the last layer after it runs no forward pass of its own.""",
          in_identity=False),
    Param("num_workers", 0, [_positive(numbers.Integral)], "int", """
        DataLoader worker processes for decoding and augmentation."""),
    Param("checkpoint_dir", None, [None, str, os.PathLike], "None, str or path", """
        When set, the training state (network, optimiser, schedule position,
        push results, history, RNG states) is written atomically to
        ``checkpoint_dir/protopnet-checkpoint.pt`` after every epoch and every
        push and last-layer step. A ``fit`` with the same parameters and data
        resumes after the last completed step and ends with the model an
        uninterrupted fit gives (on the CPU); a checkpoint written by a fit
        with other parameters or data is refused with an error. The file is
        deleted when ``fit`` succeeds.""", cli=str, in_identity=False),
    Param("device", "auto", [str, torch.device], "str or torch.device", """
        "auto" uses CUDA when available, else the CPU. Fitted state always
        lives on the CPU."""),
    Param("accelerator", None, [None, StrOptions({"auto"}), ProcessGroup()],
          'None, "auto" or accelerate.Accelerator', """
        Data-parallel training of one fit on the processes of an
        ``accelerate launch`` (or ``torchrun``): every process runs the same
        script and ``fit`` on the same data. An ``accelerate.Accelerator``
        (or ``PartialState``) gives the processes; "auto" makes the
        ``PartialState`` of this launch (the distributed extra). Each SGD step
        takes ``batch_size`` images on every process, so the effective batch
        is ``batch_size`` times the number of processes, and averages the
        gradients over them; the push and the last layer's features are
        divided over the processes and gathered, and every process ends with
        the same fitted model. The fit runs on the accelerator's device
        (``device`` is not used); only rank 0 prints progress and writes the
        checkpoint. None: one process, as usual. See the scaling guide. On
        the command line: none or auto.""",
          cli=_accelerator_option),
    Param("random_state", None, ["random_state"], "int, RandomState instance or None", """
        Seed of every random choice of ``fit`` (initialisation, shuffling,
        augmentation, the validation split): one int gives one model. On the
        command line the default is 0.""", cli=int, cli_default=0),
    Param("verbose", 0, ["verbose"], "int", """
        1 shows progress bars per stage in a terminal or notebook (epochs,
        batches with the running losses, push and last layer) and prints
        each epoch's losses and the push and last-layer timings, as plain
        lines when the output is a file or pipe; 0 prints nothing. On the
        command line, ``--quiet`` sets 0.""",
          cli=None, in_identity=False),
    Param("box_percentile", "auto",
          [StrOptions({"auto"}), Interval(numbers.Real, 0, 100, closed="both")],
          'float or "auto"', """
        The box of a prototype (at the end of ``fit``) and of an evidence item
        (in ``explain``) holds pixels at or above this percentile of the
        upsampled similarity map, as ``box_rule`` says. "auto": 90 with the
        peak rule, 95 (the paper's) with the percentile rule; the user guide
        gives the measurement. Like every parameter it takes effect at
        ``fit`` (``box_percentile_``), so that prototypes and test images
        share one rule.""", cli=_float_or("auto")),
    Param("box_rule", "peak", [StrOptions({"peak", "percentile"})], '{"peak", "percentile"}',
          """
        Which pixels at or above ``box_percentile`` a box holds. "peak": only
        the region connected to the peak cell, the cell whose similarity is
        the prototype's score, so that a second peak elsewhere (a decoy of
        the same colour or shape) never enlarges the box; "percentile": all
        of them, wherever they are (the paper's rectangle). Set at ``fit``
        (``box_rule_``) for the prototypes' boxes and the default of
        ``explain``."""),
)

BY_NAME = {p.name: p for p in HYPERPARAMETERS}

#: The reference code's values of the parameters whose "auto" default
#: chooses otherwise: ``ProtoPNetClassifier(**REFERENCE_SETTINGS, ...)`` trains
#: on the reference's schedule (Adam, backbone rate 1e-4, step decay x0.1
#: every 5 joint epochs) with its 128-dimensional prototypes and separation
#: weight 0.08 whatever the number of classes. The boxes'
#: rule is not training: ``box_rule="percentile"`` gives the paper's
#: rectangle. The deliberate differences are listed in the docs.
REFERENCE_SETTINGS = MappingProxyType({
    "lr_backbone": 1e-4, "joint_lr_schedule": "step", "joint_lr_step": 5,
    "joint_lr_gamma": 0.1, "prototype_dim": 128, "separation_coef": 0.08,
})
PARAMETER_CONSTRAINTS = {p.name: list(p.constraints) for p in HYPERPARAMETERS}
NOT_IN_IDENTITY = frozenset(p.name for p in HYPERPARAMETERS if not p.in_identity)

#: The settings of one fit: one frozen field per hyperparameter, in order.
Hyperparameters = dataclasses.make_dataclass(
    "Hyperparameters", [(p.name, Any) for p in HYPERPARAMETERS], frozen=True,
    namespace={
        "__doc__": "The hyperparameters of one fit, as the training code reads them.",
        "__module__": __name__,
        "of": classmethod(lambda cls, estimator: cls(**{
            p.name: getattr(estimator, p.name) for p in HYPERPARAMETERS})),
        "as_dict": lambda self: {p.name: getattr(self, p.name) for p in HYPERPARAMETERS},
    },
)


def check_value(name: str, value, caller: str = "") -> None:
    """Check one value against its hyperparameter's constraints, as ``fit``
    does, for methods that take the same quantity as an argument."""
    constraints = [make_constraint(c) for c in BY_NAME[name].constraints]
    if not any(c.is_satisfied_by(value) for c in constraints):
        where = f" of {caller}" if caller else ""
        allowed = ", ".join(str(c) for c in constraints)
        raise InvalidParameterError(
            f"The {name!r} parameter{where} must be {allowed}. Got {value!r} instead."
        )


# ----------------------------------------------------------------------------
# what is derived on the estimator
# ----------------------------------------------------------------------------
PARAMETERS_MARK = "{parameters}"


def parameters_docstring() -> str:
    """The numpydoc Parameters section of every hyperparameter."""
    entries = "\n".join(p.docstring() for p in HYPERPARAMETERS)
    return "Parameters\n----------\n" + entries


def declare_hyperparameters(cls):
    """Give ``cls`` its ``__init__``, ``_parameter_constraints`` and the
    Parameters section of its docstring (at ``{parameters}``), all from
    :data:`HYPERPARAMETERS`."""
    args = ", ".join(f"{p.name}=_defaults[{p.name!r}]" for p in HYPERPARAMETERS)
    body = "\n".join(f"    self.{p.name} = {p.name}" for p in HYPERPARAMETERS)
    namespace = {"_defaults": {p.name: p.default for p in HYPERPARAMETERS}}
    exec(f"def __init__(self, {args}):\n{body}\n", namespace)  # noqa: S102
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = "Store the hyperparameters unchanged (see the class docstring)."
    cls.__init__ = init
    cls._parameter_constraints = PARAMETER_CONSTRAINTS
    if cls.__doc__ and PARAMETERS_MARK in cls.__doc__:
        section = textwrap.indent(parameters_docstring(), "    ").lstrip()
        cls.__doc__ = cls.__doc__.replace(PARAMETERS_MARK, section)
    return cls


def plain_text(text: str) -> str:
    """reStructuredText markup of a docstring removed, for a terminal:
    ``code`` and `text` lose their quotes, :role:`~a.b` becomes ``b`` and
    :role:`a.b` ``a.b``."""
    text = re.sub(r":[a-z]+:`~(?:[\w.]+\.)?([\w]+)`", r"\1", text)
    text = re.sub(r":[a-z]+:`([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``|`([^`]+)`", lambda m: m.group(1) or m.group(2), text)


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """One option per hyperparameter that the command line offers."""
    for p in HYPERPARAMETERS:
        if p.cli is None:
            continue
        default = p.command_line_default
        help_text = p.cli_help or plain_text(" ".join(p.doc.split()).split(". ")[0])
        help_text = help_text.rstrip(".").replace("%", "%%") + f" (default: {default!r})"
        if p.cli == "auto" and isinstance(default, bool):
            parser.add_argument(p.option, dest=p.name, default=default,
                                action=argparse.BooleanOptionalAction, help=help_text)
            continue
        kind = type(default) if p.cli == "auto" else p.cli
        options = [c for c in p.constraints if isinstance(c, StrOptions)]
        choices = sorted(options[0].options) if options and p.cli == "auto" else None
        parser.add_argument(p.option, dest=p.name, type=kind, default=default,
                            choices=choices, help=help_text)


def cli_values(args: argparse.Namespace) -> dict:
    """The hyperparameters parsed by the options of :func:`add_cli_options`."""
    return {p.name: getattr(args, p.name) for p in HYPERPARAMETERS if p.cli is not None}


__all__ = ["HYPERPARAMETERS", "Hyperparameters", "Param", "add_cli_options",
           "check_value", "cli_values", "declare_hyperparameters", "image_size_pair"]
