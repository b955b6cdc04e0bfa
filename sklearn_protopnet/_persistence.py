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
(:data:`_OUR_BACKBONES`), or, for any other module, from the instance the
user passes to ``load(path, backbone=...)``.
"""

from __future__ import annotations

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
    return {"kind": "module", "class": f"{type(param).__module__}.{type(param).__qualname__}",
            "state": state}


def _load_state(module: torch.nn.Module, state: dict, what: str) -> None:
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
    module.load_state_dict(state)


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
    elif kind == "module":
        if backbone is None:
            raise ValueError(
                f"this model was fitted with a backbone module of class {spec['class']}, "
                "which the model file cannot rebuild; pass an instance like it: "
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
