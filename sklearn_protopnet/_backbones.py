"""Backbones: torchvision models cut at their last convolutional feature map.

A backbone is any ``nn.Module`` mapping a normalised image batch
(N, 3, H, W) to a feature map (N, C, h, w). Named backbones are torchvision
models with their pooling and classifier removed.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resnet(model):
    trunk = [model.conv1, model.bn1, model.relu, model.maxpool]
    trunk += [model.layer1, model.layer2, model.layer3, model.layer4]
    return nn.Sequential(*trunk)


def _features(model):
    return model.features


def _densenet(model):
    # torchvision applies the final ReLU in forward(), not inside .features
    return nn.Sequential(model.features, nn.ReLU())


# family -> (names, cut function, prefix of the classifier head's state_dict keys)
_FAMILIES = {
    "resnet": (("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"), _resnet, "fc."),
    "vgg": (
        tuple(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
        _features,
        "classifier.",
    ),
    "densenet": (
        ("densenet121", "densenet161", "densenet169", "densenet201"),
        _densenet,
        "classifier.",
    ),
    "efficientnet": (
        ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"),
        _features,
        "classifier.",
    ),
    "convnext": (("convnext_tiny", "convnext_small"), _features, "classifier."),
    "mobilenet_v3": (
        ("mobilenet_v3_small", "mobilenet_v3_large"),
        _features,
        "classifier.",
    ),
}
_BY_NAME = {name: (cut, head) for names, cut, head in _FAMILIES.values() for name in names}


def list_backbones() -> list[str]:
    """The torchvision backbone names ``ProtoPNetClassifier(backbone=...)`` accepts.

    Returns
    -------
    list of str
        Sorted names, e.g. ``"resnet18"``.

    Examples
    --------
    >>> from sklearn_protopnet import list_backbones
    >>> "resnet18" in list_backbones()
    True
    """
    return sorted(_BY_NAME)


class SmallCNN(nn.Module):
    """A small convolutional backbone for small images (e.g. 28-64 px).

    Three 3x3 conv-BN-ReLU blocks, the last two with stride 2, so the
    feature map is a quarter of the image in each direction.

    Parameters
    ----------
    width : int, default=32
        Channels of the first block; doubled by each strided block.

    Examples
    --------
    >>> import torch
    >>> from sklearn_protopnet.backbones import SmallCNN
    >>> SmallCNN(width=8)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 32, 8, 8])
    """

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.width = width
        self.layers = nn.Sequential(
            *block(3, width, 1), *block(width, 2 * width, 2), *block(2 * width, 4 * width, 2)
        )

    def forward(self, x):
        """The feature map of a batch.

        Parameters
        ----------
        x : torch.Tensor of shape (N, 3, H, W)
            Normalised images.

        Returns
        -------
        torch.Tensor of shape (N, 4 * width, H / 4, W / 4)
        """
        return self.layers(x)


@dataclass
class BuiltBackbone:
    """A backbone ready for the network, and the normalisation it expects."""

    module: nn.Module
    mean: tuple
    std: tuple


def resolve_normalize(normalize, weights_mean=IMAGENET_MEAN, weights_std=IMAGENET_STD):
    """(mean, std) per channel for images scaled to [0, 1].

    ``"auto"`` takes the statistics the weights were trained with (those of
    the torchvision weights' preset, ImageNet's otherwise), ``"imagenet"``
    forces ImageNet's, None disables normalisation (mean 0, std 1), and a
    pair ``(mean, std)`` of 3 floats (or single floats) is used as given.
    """
    if isinstance(normalize, str):
        if normalize == "auto":
            return tuple(weights_mean), tuple(weights_std)
        if normalize == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        raise ValueError(
            f"normalize must be 'auto', 'imagenet', None or (mean, std); got {normalize!r}"
        )
    if normalize is None:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    try:
        mean, std = normalize
        mean = tuple(float(v) for v in ((mean,) * 3 if _is_number(mean) else mean))
        std = tuple(float(v) for v in ((std,) * 3 if _is_number(std) else std))
    except (TypeError, ValueError):
        mean = std = ()
    if len(mean) != 3 or len(std) != 3 or not all(v > 0 for v in std):
        raise ValueError(
            "normalize=(mean, std) needs 3 means and 3 positive standard deviations "
            f"(or one of each); got {normalize!r}"
        )
    return mean, std


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_backbone_arguments(backbone, weights, normalize) -> None:
    """Refuse, without building anything or reading any image, a backbone
    name, weights name or weights file, or ``normalize`` that
    :func:`build_backbone` would refuse."""
    resolve_normalize(normalize)
    if isinstance(backbone, nn.Module):
        if weights is not None and not _looks_like_path(weights):
            raise ValueError(
                "weights for a custom nn.Module backbone must be the path of a "
                f"state_dict file, got {weights!r}"
            )
    elif not isinstance(backbone, str) or backbone not in _BY_NAME:
        raise ValueError(
            f"backbone must be an nn.Module or one of {list_backbones()}, got {backbone!r}"
        )
    elif weights is not None and not _looks_like_path(weights):
        _weights_enum(backbone, weights)
    if weights is not None and _looks_like_path(weights) and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file not found: {os.fspath(weights)!r}")


def build_backbone(backbone, weights, normalize="auto") -> BuiltBackbone:
    """Resolve ``backbone`` and ``weights`` into a fresh, trainable module.

    An ``nn.Module`` instance is deep-copied so that fitting never trains the
    user's object in place. ``normalize`` is resolved by
    :func:`resolve_normalize` against the weights' statistics.
    """
    if isinstance(backbone, nn.Module):
        module = copy.deepcopy(backbone)
        if weights is not None:
            if not _looks_like_path(weights):
                raise ValueError(
                    "weights for a custom nn.Module backbone must be the path of a "
                    f"state_dict file, got {weights!r}"
                )
            _load_state_dict_file(module, weights, head_prefix=None)
        return BuiltBackbone(module, *resolve_normalize(normalize))

    if not isinstance(backbone, str) or backbone not in _BY_NAME:
        raise ValueError(
            f"backbone must be an nn.Module or one of {list_backbones()}, got {backbone!r}"
        )
    import torchvision

    cut, head_prefix = _BY_NAME[backbone]
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights is None:
        model = _untrained(backbone)
    elif _looks_like_path(weights):
        model = _untrained(backbone)
        _load_state_dict_file(model, weights, head_prefix=head_prefix)
    else:
        enum = _weights_enum(backbone, weights)
        try:
            model = torchvision.models.get_model(backbone, weights=enum)
        except Exception as exc:  # URLError, OSError, hash mismatch ...
            raise RuntimeError(
                f"could not obtain the torchvision weights {enum} for {backbone!r} "
                f"({type(exc).__name__}: {exc}). Without internet access, download "
                "the weights file on another machine and pass its path, e.g. "
                f"weights='/path/to/{backbone}.pth'."
            ) from exc
        preset = enum.transforms()
        mean = tuple(getattr(preset, "mean", mean))
        std = tuple(getattr(preset, "std", std))
    return BuiltBackbone(cut(model), *resolve_normalize(normalize, mean, std))


def _untrained(name: str) -> nn.Module:
    """A randomly initialised torchvision model, or for VGG only its trunk.

    A VGG's classifier head holds ~120M parameters (~0.5 GB) that the cut
    throws away; initialising them costs seconds, so the trunk is built alone
    with torchvision's own layers and initialisation.
    """
    import torchvision

    if not name.startswith("vgg"):
        return torchvision.models.get_model(name, weights=None)
    from torchvision.models import vgg

    config = {"11": "A", "13": "B", "16": "D", "19": "E"}[name[3:5]]
    holder = nn.Module()
    holder.features = vgg.make_layers(vgg.cfgs[config], batch_norm=name.endswith("_bn"))
    for m in holder.modules():  # as torchvision's VGG initialises its trunk
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return holder


_WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


def _looks_like_path(weights) -> bool:
    """A path, as opposed to a torchvision weights name such as "DEFAULT"."""
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (
        os.sep in weights
        or weights.lower().endswith(_WEIGHT_FILE_SUFFIXES)
        or os.path.exists(weights)
    )


def _weights_enum(backbone: str, weights):
    import torchvision

    enum_cls = torchvision.models.get_model_weights(backbone)
    if isinstance(weights, enum_cls):
        return weights
    name = str(weights).split(".")[-1]
    try:
        return enum_cls[name]
    except KeyError:
        raise ValueError(
            f"unknown weights {weights!r} for {backbone!r}; choose one of "
            f"{[w.name for w in enum_cls] + ['DEFAULT']}, None, or a file path"
        ) from None


def _load_state_dict_file(model: nn.Module, path, head_prefix: str | None) -> None:
    """Load a state_dict file into ``model``; a classifier head may be absent.

    Never unpickles arbitrary objects (``weights_only=True``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read weights file {path!r} as a state_dict: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and len(state) <= 3:
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"weights file {path!r} does not hold a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if head_prefix is not None:
        state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if head_prefix is not None:
        missing = [k for k in missing if not k.startswith(head_prefix)]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[:3]})")
        raise ValueError(
            f"weights file {path!r} does not match the backbone: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=head_prefix is None)


def probe_backbone(module: nn.Module, image_size: tuple[int, int]) -> tuple[int, int, int]:
    """Run one blank image through ``module``; return its output (C, h, w)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, *image_size))
    except Exception as exc:
        raise ValueError(
            f"the backbone failed on a 1x3x{image_size[0]}x{image_size[1]} input: {exc}"
        ) from exc
    finally:
        module.train(was_training)
    if not torch.is_tensor(out) or out.ndim != 4:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(
            "the backbone must map (N, 3, H, W) images to a feature map (N, C, h, w); "
            f"it returned {shape}"
        )
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])
