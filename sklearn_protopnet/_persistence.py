"""A pickle-free file format for fitted models.

A model file is a zip archive (stored, not compressed) with two members:

- ``model.json``: the format name and version, the package, torch and
  scikit-learn versions that wrote it, the estimator's parameters, and a
  description of every fitted attribute (every ``__dict__`` key ending in
  ``_``), each a tagged JSON node;
- ``tensors.pt``: one flat ``{name: tensor}`` dict written with
  ``torch.save`` and read back with ``torch.load(weights_only=True)``, which
  refuses anything but tensors and plain containers: no code from the file
  is ever run. Numpy arrays are stored as their raw bytes (a uint8 tensor)
  with their dtype and shape in the JSON, so any numeric dtype round-trips
  bit for bit.

Only an allowlist of kinds is written and read: JSON scalars, non-finite
floats, numpy arrays (numeric, text, or object arrays of such scalars),
numpy scalars, tensors, lists, tuples, dicts with str keys, RandomState
instances, the dataclasses named in :data:`_DATACLASSES`, and the network.
A value of any other kind fails at save time, naming the attribute; a node of
any other kind fails at load time. The network is rebuilt from the shapes in
its saved state (number of prototypes, their depth, the number of classes,
the backbone's channels) and its ``prototype_class`` buffer; the backbone is
rebuilt from a torchvision name (``weights=None``, then loaded from the
state), from the recorded arguments of one of this package's own backbones
(:data:`_OUR_BACKBONES`), from a description as data of a tree of torch.nn
layers (:data:`_TORCH_NN_LAYERS` inside ``nn.Sequential`` containers, each
node a class name from that allowlist and its constructor arguments as JSON
values), or, for any other module, from the instance the user passes to
``load(path, backbone=...)``.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import io
import json
import math
import os
import pickle
import zipfile

import numpy as np
import torch
from torch import nn

from ._backbones import SmallCNN, build_backbone
from ._checkpoint import atomic_write
from ._geometry import CellGeometry
from ._network import ProtoPNet
from ._version import __version__

FORMAT_NAME = "sklearn-protopnet model"
FORMAT_VERSION = 1
_META = "model.json"
_TENSORS = "tensors.pt"
_NUMERIC_KINDS = "biufcmM"


#: The dataclasses a model file may hold, by name.
_DATACLASSES = {"CellGeometry": CellGeometry}
#: Our own backbone classes: name -> (class, constructor argument names).
_OUR_BACKBONES = {"SmallCNN": (SmallCNN, ("width",))}

_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
         "groups", "bias", "padding_mode")
_CONV_TRANSPOSE = ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                   "output_padding", "groups", "bias", "dilation", "padding_mode")
_NORM = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_INPLACE = ("inplace",)
#: The torch.nn layers a backbone may be described with (inside ``nn.Sequential``
#: containers): name -> (class, constructor argument names). Each argument is
#: read from the instance's attribute of that name, except ``bias``, which is
#: ``module.bias is not None``. Only these exact classes qualify (no subclass).
_TORCH_NN_LAYERS = {
    "Conv1d": (nn.Conv1d, _CONV),
    "Conv2d": (nn.Conv2d, _CONV),
    "ConvTranspose2d": (nn.ConvTranspose2d, _CONV_TRANSPOSE),
    "Linear": (nn.Linear, ("in_features", "out_features", "bias")),
    "BatchNorm1d": (nn.BatchNorm1d, _NORM),
    "BatchNorm2d": (nn.BatchNorm2d, _NORM),
    "InstanceNorm2d": (nn.InstanceNorm2d, _NORM),
    "GroupNorm": (nn.GroupNorm, ("num_groups", "num_channels", "eps", "affine")),
    "LayerNorm": (nn.LayerNorm, ("normalized_shape", "eps", "elementwise_affine", "bias")),
    "ReLU": (nn.ReLU, _INPLACE),
    "ReLU6": (nn.ReLU6, _INPLACE),
    "LeakyReLU": (nn.LeakyReLU, ("negative_slope", "inplace")),
    "PReLU": (nn.PReLU, ("num_parameters", "init")),
    "ELU": (nn.ELU, ("alpha", "inplace")),
    "SELU": (nn.SELU, _INPLACE),
    "GELU": (nn.GELU, ("approximate",)),
    "SiLU": (nn.SiLU, _INPLACE),
    "Mish": (nn.Mish, _INPLACE),
    "Hardswish": (nn.Hardswish, _INPLACE),
    "Hardsigmoid": (nn.Hardsigmoid, _INPLACE),
    "Sigmoid": (nn.Sigmoid, ()),
    "Tanh": (nn.Tanh, ()),
    "MaxPool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation",
                                 "return_indices", "ceil_mode")),
    "AvgPool2d": (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode",
                                 "count_include_pad", "divisor_override")),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
    "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d, ("output_size", "return_indices")),
    "Dropout": (nn.Dropout, ("p", "inplace")),
    "Dropout2d": (nn.Dropout2d, ("p", "inplace")),
    "Identity": (nn.Identity, ()),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "ZeroPad2d": (nn.ZeroPad2d, ("padding",)),
    "ConstantPad2d": (nn.ConstantPad2d, ("padding", "value")),
    "ReflectionPad2d": (nn.ReflectionPad2d, ("padding",)),
    "ReplicationPad2d": (nn.ReplicationPad2d, ("padding",)),
    "Upsample": (nn.Upsample, ("size", "scale_factor", "mode", "align_corners",
                               "recompute_scale_factor")),
}
#: The one container of such a description: it defines the forward (in order).
_TORCH_NN_CONTAINER = "Sequential"


class _Writer:
    """Encodes values into JSON nodes, collecting tensors in ``self.tensors``."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def _tensor(self, tensor: torch.Tensor, name: str) -> str:
        # readable keys: the attribute or parameter the tensor belongs to
        key = name.replace(" ", ":")
        while key in self.tensors:
            key += "'"
        self.tensors[key] = tensor.detach().cpu().contiguous().clone()
        return key

    def encode(self, value, where: str):
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.generic):  # before float: np.float64 is a float
            return {"kind": "numpy_scalar", "array": self.encode(np.asarray(value), where)}
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"kind": "float", "value": repr(value)}
        if isinstance(value, np.ndarray):
            return self._array(value, where)
        if isinstance(value, torch.Tensor):
            return {"kind": "tensor", "tensor": self._tensor(value, where)}
        if isinstance(value, (list, tuple)):
            return {"kind": type(value).__name__,
                    "items": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {"kind": "dict",
                    "items": {k: self.encode(v, f"{where}[{k!r}]") for k, v in value.items()}}
        if isinstance(value, np.random.RandomState):
            return {"kind": "random_state", "state": self.encode(value.get_state(), where)}
        name = type(value).__name__
        if dataclasses.is_dataclass(value) and _DATACLASSES.get(name) is type(value):
            return {"kind": "dataclass", "class": name,
                    "fields": {f.name: self.encode(getattr(value, f.name), f"{where}.{f.name}")
                               for f in dataclasses.fields(value)}}
        raise TypeError(
            f"cannot save {where}: values of type {type(value).__module__}.{name} are not "
            "supported by the model file format; use joblib or pickle for this model"
        )

    def _array(self, array: np.ndarray, where: str):
        kind = array.dtype.kind
        if kind in _NUMERIC_KINDS:
            raw = np.ascontiguousarray(array).tobytes()
            return {"kind": "ndarray", "dtype": array.dtype.str, "shape": list(array.shape),
                    "tensor": self._tensor(torch.frombuffer(bytearray(raw), dtype=torch.uint8)
                                           if raw else torch.zeros(0, dtype=torch.uint8),
                                           where)}
        if kind in "US":
            items = [v.decode("latin-1") if kind == "S" else str(v) for v in array.ravel()]
            return {"kind": "ndarray_text", "dtype": array.dtype.str,
                    "shape": list(array.shape), "items": items}
        if kind == "O":
            items = []
            for i, v in enumerate(array.ravel()):
                if not (v is None or isinstance(v, (bool, int, float, str, np.generic))):
                    raise TypeError(
                        f"cannot save {where}: an object array may hold only str, numbers, "
                        f"bools or None, found {type(v).__name__} at flat index {i}"
                    )
                items.append(self.encode(v, f"{where}.flat[{i}]"))
            return {"kind": "ndarray_object", "shape": list(array.shape), "items": items}
        raise TypeError(f"cannot save {where}: numpy arrays of dtype {array.dtype} are not "
                        "supported by the model file format")


class _Reader:
    """Decodes JSON nodes written by :class:`_Writer`; refuses anything else."""

    def __init__(self, tensors: dict):
        self.tensors = tensors

    def tensor(self, key) -> torch.Tensor:
        if not isinstance(key, str) or key not in self.tensors:
            raise ValueError(f"malformed model file: unknown tensor {key!r}")
        return self.tensors[key]

    def decode(self, node):
        if node is None or isinstance(node, (bool, str, int, float)):
            return node
        if isinstance(node, list) or not isinstance(node, dict) or "kind" not in node:
            raise ValueError(f"malformed model file: unexpected node {str(node)[:80]}")
        kind = node["kind"]
        if kind == "float":
            if node["value"] not in ("nan", "inf", "-inf"):
                raise ValueError(f"malformed model file: float {node['value']!r}")
            return float(node["value"])
        if kind == "numpy_scalar":
            return self.decode(node["array"])[()]
        if kind == "ndarray":
            dtype = np.dtype(node["dtype"])
            if dtype.kind not in _NUMERIC_KINDS:
                raise ValueError(f"malformed model file: array dtype {dtype}")
            raw = self.tensor(node["tensor"]).numpy().tobytes()
            return np.frombuffer(raw, dtype=dtype).reshape(node["shape"]).copy()
        if kind == "ndarray_text":
            dtype = np.dtype(node["dtype"])
            if dtype.kind not in "US":
                raise ValueError(f"malformed model file: text array dtype {dtype}")
            items = [s.encode("latin-1") for s in node["items"]] if dtype.kind == "S" \
                else node["items"]
            return np.array(items, dtype=dtype).reshape(node["shape"])
        if kind == "ndarray_object":
            out = np.empty(len(node["items"]), dtype=object)
            for i, item in enumerate(node["items"]):
                out[i] = self.decode(item)
            return out.reshape(node["shape"])
        if kind == "tensor":
            return self.tensor(node["tensor"]).clone()
        if kind in ("list", "tuple"):
            items = [self.decode(v) for v in node["items"]]
            return items if kind == "list" else tuple(items)
        if kind == "dict":
            return {str(k): self.decode(v) for k, v in node["items"].items()}
        if kind == "random_state":
            rs = np.random.RandomState()
            rs.set_state(self.decode(node["state"]))
            return rs
        if kind == "dataclass":
            cls = _DATACLASSES.get(node["class"])
            if cls is None:
                raise ValueError(f"malformed model file: unknown class {node['class']!r}")
            return cls(**{k: self.decode(v) for k, v in node["fields"].items()})
        raise ValueError(f"malformed model file: unknown node kind {kind!r}")


# ----------------------------------------------------------------------------
# the backbone and the network
# ----------------------------------------------------------------------------
class _NotDescribable(Exception):
    """A backbone that a tree of torch.nn layers cannot describe; the message says why."""


def _qualname(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _where(path: str) -> str:
    return f"its submodule {path!r}" if path else "the backbone itself"


def _child_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _plain_arg(value, where: str):
    """A constructor argument as a JSON node: None, bool, int, float, str, lists, tuples."""
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else {"kind": "float", "value": repr(value)}
    if type(value) in (list, tuple):
        return {"kind": type(value).__name__, "items": [_plain_arg(v, where) for v in value]}
    raise _NotDescribable(f"{where} is {value!r} (a {type(value).__name__}), not a JSON value")


def _check_plain_arg(node, where: str) -> None:
    """Refuse an argument node that would decode to anything but a plain value."""
    if node is None or isinstance(node, (bool, int, float, str)):
        return
    if isinstance(node, dict) and node.get("kind") == "float" and set(node) == {"kind", "value"}:
        return
    if (isinstance(node, dict) and node.get("kind") in ("list", "tuple")
            and set(node) == {"kind", "items"} and isinstance(node["items"], list)):
        for item in node["items"]:
            _check_plain_arg(item, where)
        return
    raise ValueError(f"malformed model file: {where} is not a plain JSON value "
                     f"({str(node)[:80]})")


def _describe(module, path: str, seen: set) -> dict:
    """The JSON tree of a module built only from :data:`_TORCH_NN_LAYERS` and Sequentials."""
    if id(module) in seen:
        raise _NotDescribable(f"{_where(path)} is the same module object as another part of "
                              "the backbone; shared modules cannot be described as data")
    seen.add(id(module))
    if type(module) is nn.Sequential:
        children = []
        for name, child in module._modules.items():
            if child is None:
                raise _NotDescribable(f"{_where(_child_path(path, name))} is None")
            children.append([name, _describe(child, _child_path(path, name), seen)])
        return {"class": _TORCH_NN_CONTAINER, "children": children}
    name = type(module).__name__
    entry = _TORCH_NN_LAYERS.get(name)
    if entry is None or entry[0] is not type(module):
        raise _NotDescribable(
            f"{_where(path)} is a {_qualname(module)}, which is not one of the torch.nn layers "
            "a model file can describe (nn.Sequential and the exact classes listed in "
            "docs/scikit-learn.md, no subclasses)"
        )
    args = {}
    for arg in entry[1]:
        where = f"the argument {arg} of {_where(path)} ({name})"
        try:
            value = module.bias is not None if arg == "bias" else getattr(module, arg)
        except AttributeError as exc:
            raise _NotDescribable(f"{where} cannot be read: {exc}") from exc
        args[arg] = _plain_arg(value, where)
    return {"class": name, "args": args}


def _build_tree(node, reader: _Reader, path: str = "") -> nn.Module:
    """The module a JSON tree describes, on the meta device (no memory, no random init).

    Class names are looked up only in :data:`_TORCH_NN_LAYERS` and the container;
    arguments must be plain JSON values, and exactly the recorded ones.
    """
    where = _where(path)
    if not isinstance(node, dict) or not isinstance(node.get("class"), str):
        raise ValueError(f"malformed model file: the backbone description of {where} is "
                         f"not a node ({str(node)[:80]})")
    name = node["class"]
    if name == _TORCH_NN_CONTAINER:
        if set(node) != {"class", "children"} or not isinstance(node["children"], list):
            raise ValueError(f"malformed model file: the Sequential at {where} must have "
                             "exactly a list of children")
        children = {}
        for item in node["children"]:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and item[0] and "." not in item[0] and item[0] not in children):
                raise ValueError(f"malformed model file: a child of the Sequential at {where} "
                                 f"is not a [unique name, node] pair ({str(item)[:80]})")
            children[item[0]] = _build_tree(item[1], reader, _child_path(path, item[0]))
        try:
            return nn.Sequential(collections.OrderedDict(children))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed model file: the Sequential at {where}: {exc}") from exc
    entry = _TORCH_NN_LAYERS.get(name)
    if entry is None:
        raise ValueError(
            f"malformed model file: the backbone layer {name[:80]!r} at {where} is not "
            f"supported; a model file describes only {_TORCH_NN_CONTAINER} and the torch.nn "
            f"layers {sorted(_TORCH_NN_LAYERS)}"
        )
    cls, names = entry
    if set(node) != {"class", "args"} or not isinstance(node["args"], dict):
        raise ValueError(f"malformed model file: the {name} at {where} must have exactly "
                         "a dict of arguments")
    unknown = sorted(set(node["args"]) - set(names))
    missing = [a for a in names if a not in node["args"]]
    if unknown or missing:
        raise ValueError(f"malformed model file: the {name} at {where} has unsupported "
                         f"arguments {unknown[:5]} or lacks {missing}")
    args = {}
    for arg in names:
        _check_plain_arg(node["args"][arg], f"the argument {arg} of the {name} at {where}")
        args[arg] = reader.decode(node["args"][arg])
    try:
        with torch.device("meta"):
            return cls(**args)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ValueError(f"malformed model file: cannot build the {name} at {where} from its "
                         f"arguments ({type(exc).__name__}: {str(exc)[:200]})") from exc


def _same_modules(original: nn.Module, rebuilt: nn.Module, path: str = "") -> None:
    """Raise :class:`_NotDescribable` where ``rebuilt`` could compute otherwise."""
    where = f"{_where(path)} ({type(original).__name__})"
    if type(original) is not type(rebuilt):
        raise _NotDescribable(f"{_where(path)} is a {_qualname(original)}, not a "
                              f"{_qualname(rebuilt)}")
    a, b = vars(original), vars(rebuilt)
    hooks = sorted(k for k, v in a.items() if "hook" in k and v)
    if hooks:
        raise _NotDescribable(f"{where} has hooks ({', '.join(hooks)}), which a description "
                              "as data cannot carry")

    def same(k):
        if k not in a or k not in b or type(a[k]) is not type(b[k]):
            return False
        try:
            return bool(a[k] == b[k])
        except Exception:  # e.g. a tensor attribute
            return False

    structural = {"training", "_parameters", "_buffers", "_modules"}
    differ = sorted(k for k in a.keys() | b.keys()
                    if k not in structural and "hook" not in k and not same(k))
    if differ:
        raise _NotDescribable(f"{where} has attributes its constructor arguments do not "
                              f"rebuild: {differ[:5]}")
    for slot in ("_parameters", "_buffers"):
        if {k: v is None for k, v in a[slot].items()} != \
                {k: v is None for k, v in b[slot].items()}:
            raise _NotDescribable(f"{where} has other parameters or buffers than its class "
                                  f"makes from its arguments: {sorted(a[slot])}")
    if list(a["_modules"]) != list(b["_modules"]):
        raise _NotDescribable(f"{where} has other submodules than its class makes: "
                              f"{list(a['_modules'])[:5]}")
    for name, child in a["_modules"].items():
        _same_modules(child, b["_modules"][name], _child_path(path, name))


def _describe_torch_nn(module: nn.Module) -> dict:
    """The tree of ``module`` if it rebuilds exactly from it, else :class:`_NotDescribable`."""
    tree = _describe(module, "", set())
    try:
        rebuilt = _build_tree(json.loads(json.dumps(tree, allow_nan=False)), _Reader({}))
    except ValueError as exc:
        raise _NotDescribable(str(exc).removeprefix("malformed model file: ")) from exc
    _same_modules(module, rebuilt)
    owner = {}
    for name, tensor in [*module.named_parameters(remove_duplicate=False),
                         *module.named_buffers(remove_duplicate=False)]:
        if id(tensor) in owner:
            raise _NotDescribable(f"{name!r} is the same tensor as {owner[id(tensor)]!r}; "
                                  "shared weights cannot be described as data")
        owner[id(tensor)] = name
    return tree


def _backbone_spec(param, writer: _Writer) -> dict:
    if isinstance(param, str):
        return {"kind": "torchvision", "name": param}
    state = {k: writer._tensor(v, f"parameter:backbone/{k}")
             for k, v in param.state_dict().items()}
    name = type(param).__name__
    ours = _OUR_BACKBONES.get(name)
    if ours is not None and ours[0] is type(param):
        args = {a: writer.encode(getattr(param, a), f"backbone.{a}") for a in ours[1]}
        return {"kind": "ours", "class": name, "args": args, "state": state}
    try:
        tree = _describe_torch_nn(param)
    except _NotDescribable as exc:
        return {"kind": "module", "class": _qualname(param), "unsupported": str(exc),
                "state": state}
    return {"kind": "torch_nn", "class": _qualname(param), "tree": tree, "state": state}


def _load_state(module: torch.nn.Module, state: dict, what: str, assign=False) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected)
                   if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{len(keys)} {label} (e.g. {keys[:3]})" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong))
                 if keys]
        raise ValueError(f"the saved {what} does not match the module it is loaded into: "
                         + "; ".join(parts))
    module.load_state_dict(state, assign=assign)


def _rebuild_param_backbone(spec: dict, reader: _Reader, backbone):
    """The estimator's ``backbone`` parameter as it was at save time."""
    kind = spec.get("kind")
    if kind == "torchvision":
        return spec["name"]
    state = {k: reader.tensor(v) for k, v in spec["state"].items()}
    if kind == "ours":
        entry = _OUR_BACKBONES.get(spec["class"])
        if entry is None:
            raise ValueError(f"malformed model file: unknown backbone class {spec['class']!r}")
        cls, names = entry
        args = {a: reader.decode(v) for a, v in spec["args"].items() if a in names}
        with torch.random.fork_rng():  # the saved state replaces the random init
            module = cls(**args)
    elif kind == "torch_nn":
        module = _build_tree(spec["tree"], reader)  # on the meta device: the state fills it
        try:
            _load_state(module, {k: v.clone() for k, v in state.items()},
                        f"backbone ({spec.get('class', kind)})", assign=True)
        except RuntimeError as exc:
            raise ValueError(f"malformed model file: the backbone state: {exc}") from exc
        if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            raise ValueError("malformed model file: the backbone state leaves tensors unset")
        return module
    elif kind == "module":
        if backbone is None:
            reason = spec.get("unsupported")
            reason = f": {reason[:400]}" if isinstance(reason, str) else ""
            raise ValueError(
                f"this model was fitted with a backbone module of class {spec['class']}, "
                f"which the model file cannot rebuild{reason}. Pass an instance like it: "
                "ProtoPNetClassifier.load(path, backbone=MyBackbone(...))"
            )
        module = copy.deepcopy(backbone)
    else:
        raise ValueError(f"malformed model file: unknown backbone kind {kind!r}")
    _load_state(module, state, f"backbone ({spec.get('class', kind)})")
    return module


def _network_spec(module, add_on: str, writer: _Writer, name: str) -> dict:
    plain = {k: v for k, v in vars(module).items()
             if not k.startswith("_") and k != "training"
             and (v is None or isinstance(v, (bool, int, float, str)))}
    return {"kind": "protopnet", "add_on": add_on, "attributes": plain,
            "state": {k: writer._tensor(v, f"attribute:{name}/{k}")
                      for k, v in module.state_dict().items()}}


def _rebuild_network(spec: dict, reader: _Reader, backbone_param):
    state = {k: reader.tensor(v) for k, v in spec["state"].items()}
    for key in ("prototypes", "prototype_class", "last_layer.weight", "add_on.0.weight"):
        if key not in state:
            raise ValueError(f"malformed model file: the network state has no {key!r}")
    if isinstance(backbone_param, str):
        backbone = build_backbone(backbone_param, None).module  # weights come from the state
    else:
        backbone = copy.deepcopy(backbone_param)
    m, dim = state["prototypes"].shape
    n_classes = state["last_layer.weight"].shape[0]
    attributes = spec.get("attributes", {})
    with torch.random.fork_rng():  # the state replaces every random initial value
        module = ProtoPNet(backbone, int(state["add_on.0.weight"].shape[1]),
                           state["prototype_class"], int(n_classes), prototype_dim=int(dim),
                           add_on=spec["add_on"],
                           similarity=attributes.get("similarity_kind", "log"))
    if module.n_prototypes != m:
        raise ValueError("malformed model file: prototype_class and prototypes disagree")
    _load_state(module, state, "network")
    for key, value in attributes.items():
        if value is None or isinstance(value, (bool, int, float, str)):
            setattr(module, key, value)
    module.set_trainable(backbone=False, add_on=False, prototypes=False)
    return module.eval()


# ----------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------
def save(estimator, path) -> None:
    """Write a fitted ``estimator`` to ``path`` (see the module docstring)."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator, "module_")
    writer = _Writer()
    params = {}
    for key, value in estimator.get_params(deep=False).items():
        if key == "backbone":
            params[key] = _backbone_spec(value, writer)
        elif key == "accelerator" and not (value is None or isinstance(value, str)):
            params[key] = None  # how a fit was run, not part of the model: loads as one process
        elif isinstance(value, torch.device):
            params[key] = str(value)
        elif isinstance(value, os.PathLike):
            params[key] = os.fspath(value)
        elif callable(value) and not isinstance(value, np.random.RandomState):
            raise TypeError(
                f"cannot save the parameter {key}={value!r}: a callable cannot be stored "
                "without pickle. Use joblib or pickle, or set it to a plain value first"
            )
        else:
            params[key] = writer.encode(value, f"parameter {key}")
    attributes = {}
    for key in sorted(vars(estimator)):
        if not key.endswith("_") or key.startswith("_"):
            continue
        value = vars(estimator)[key]
        if key == "module_":
            attributes[key] = _network_spec(value, estimator.add_on, writer, key)
        else:
            attributes[key] = writer.encode(value, f"attribute {key}")
    import sklearn

    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": torch.__version__,
        "sklearn_version": sklearn.__version__,
        "estimator": type(estimator).__name__,
        "params": params,
        "attributes": attributes,
    }
    buffer = io.BytesIO()
    torch.save(writer.tensors, buffer)
    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(_META, json.dumps(meta, indent=1, allow_nan=False))
            zf.writestr(_TENSORS, buffer.getvalue())

    atomic_write(path, write)


def read_metadata(path) -> tuple[dict, dict]:
    """(metadata, tensors) of a model file, checked; never unpickles objects."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if _META not in names or _TENSORS not in names:
                raise ValueError(f"{path!r} is not a sklearn-protopnet model file "
                                 f"(expected {_META} and {_TENSORS} inside)")
            try:
                meta = json.loads(zf.read(_META))
            except RecursionError as exc:
                raise ValueError(f"malformed model file {path!r}: {_META} is nested too "
                                 "deeply") from exc
            raw = zf.read(_TENSORS)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path!r} is not a sklearn-protopnet model file ({exc}); "
                         "a joblib or pickle file is read with joblib.load") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path!r} is not a sklearn-protopnet model file")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ValueError(
            f"{path!r} uses model file format version {version!r} (written by "
            f"sklearn-protopnet {meta.get('package_version', '?')}); this version reads "
            f"format {FORMAT_VERSION}. Load it with the version that wrote it"
        )
    try:
        tensors = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        raise ValueError(
            f"refused to load {path!r}: its tensor file holds something other than "
            f"tensors ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise ValueError(f"refused to load {path!r}: its tensor file is not a flat dict "
                         "of tensors")
    return meta, tensors


def load(cls, path, backbone=None):
    """Read a model file written by :func:`save` into a fitted ``cls``."""
    if backbone is not None and not isinstance(backbone, torch.nn.Module):
        raise TypeError(f"backbone must be an nn.Module or None, got {type(backbone).__name__}")
    meta, tensors = read_metadata(path)
    reader = _Reader(tensors)
    try:
        spec = meta["params"]["backbone"]
        params = {k: reader.decode(v) for k, v in meta["params"].items() if k != "backbone"}
        params["backbone"] = _rebuild_param_backbone(spec, reader, backbone)
        known = set(cls._get_param_names())
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"{os.fspath(path)!r} has parameters this version does not know: {unknown} "
                f"(written by sklearn-protopnet {meta.get('package_version', '?')})"
            )
        estimator = cls(**params)
        state = {}
        for key, node in meta["attributes"].items():
            if not key.endswith("_") or key.startswith("_"):
                raise ValueError(f"malformed model file: attribute name {key!r}")
            if isinstance(node, dict) and node.get("kind") == "protopnet":
                state[key] = _rebuild_network(node, reader, params["backbone"])
            else:
                state[key] = reader.decode(node)
    except (KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"malformed model file {os.fspath(path)!r}: "
                         f"{type(exc).__name__}: {exc}") from exc
    estimator.__dict__.update(state)
    return estimator
