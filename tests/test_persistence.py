"""Model files (save/load) and pickle: round trips, refusal of crafted files."""

from __future__ import annotations

import collections
import copy
import dataclasses
import io
import json
import os
import pickle
import re
import warnings
import zipfile
from unittest import mock

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from torch import nn

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet._params import Hyperparameters
from sklearn_protopnet._persistence import (
    _TORCH_NN_LAYERS,
    FORMAT_VERSION,
    _backbone_spec,
    _Reader,
    _rebuild_param_backbone,
    _Writer,
)

from .conftest import tiny_classifier


class TinyBackbone(nn.Module):
    """A backbone that is neither a torchvision name nor one of ours."""

    def __init__(self, channels: int = 6):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def assert_same(a, b, where="value"):
    """Equal values of the same types, arrays bit for bit (NaN equal to NaN)."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if a.dtype.kind == "O":
            for i, (x, y) in enumerate(zip(a.ravel(), b.ravel())):
                assert_same(x, y, f"{where}.flat[{i}]")
        else:
            np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, torch.nn.Module):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys(), where
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{where}.{k}"
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif dataclasses.is_dataclass(a):
        assert a == b, where
    elif isinstance(a, (float, np.floating)) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def fitted_attributes(est) -> dict:
    return {k: v for k, v in vars(est).items() if k.endswith("_") and not k.startswith("_")}


def test_every_fitted_attribute_round_trips(fitted, bar_files, tmp_path):
    paths, _ = bar_files
    path = tmp_path / "model.protopnet"
    fitted.save(path)
    loaded = ProtoPNetClassifier.load(path)
    attrs = fitted_attributes(fitted)
    assert attrs.keys() == fitted_attributes(loaded).keys()
    for key, value in attrs.items():
        assert_same(value, getattr(loaded, key), key)
    np.testing.assert_array_equal(loaded.predict_proba(paths), fitted.predict_proba(paths))
    np.testing.assert_array_equal(loaded.transform(paths), fitted.transform(paths))
    np.testing.assert_array_equal(loaded.coef_, fitted.coef_)
    # the loaded network is frozen and on the CPU, as after fit
    assert not any(p.requires_grad for p in loaded.module_.parameters())
    assert all(t.device.type == "cpu" for t in loaded.module_.state_dict().values())


def test_parameters_round_trip(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    loaded = ProtoPNetClassifier.load(tmp_path / "m")
    before, after = fitted.get_params(deep=False), loaded.get_params(deep=False)
    assert before.keys() == after.keys()
    for key in before:
        assert_same(before[key], after[key], key)
    # the backbone parameter is its initial (untrained) state, so a refit from
    # the loaded model starts where the original fit started
    assert after["backbone"] is not fitted.backbone
    assert clone(loaded).get_params()["prototypes_per_class"] == fitted.prototypes_per_class


@pytest.fixture
def loaded_copy(fitted, tmp_path):
    fitted.save(tmp_path / "base")
    return ProtoPNetClassifier.load(tmp_path / "base")


def test_generic_attribute_kinds_round_trip(loaded_copy, tmp_path):
    """Kinds other fitted attributes may take: ragged image lists, text, scalars."""
    rng = np.random.default_rng(0)
    extra = {
        "prototype_crop_": [rng.integers(0, 255, size=s, dtype=np.uint8)
                            for s in ((3, 5, 3), (7, 2, 3), (1, 1, 3))],
        "prototype_name_": ["a", None, "é"],
        "flag_": True,
        "count_": 3,
        "ratio_": float("nan"),
        "big_": float("-inf"),
        "pair_": (1, "a", None, 2.5),
        "np_scalar_": np.float32(2.5),
        "np_int_": np.int64(-3),
        "wide_": np.arange(6, dtype=np.uint16).reshape(2, 3),
        "mask_": np.array([True, False]),
        "complex_": np.array([1 + 2j]),
        "text_": np.array(["x", "yz"]),
        "empty_": np.zeros((0, 4)),
        "nested_": {"a": [np.float64(1.0), {"b": None}]},
        "tensor_": torch.arange(3.0),
        "rng_": np.random.RandomState(3),
    }
    for key, value in extra.items():
        setattr(loaded_copy, key, value)
    loaded_copy.save(tmp_path / "extra")
    again = ProtoPNetClassifier.load(tmp_path / "extra")
    for key, value in extra.items():
        if key == "rng_":
            assert again.rng_.randint(1000) == np.random.RandomState(3).randint(1000)
        else:
            assert_same(value, getattr(again, key), key)


@pytest.mark.parametrize(
    "classes",
    [np.array([3, 10]), np.array(["no", "yes"]), np.array([False, True]),
     np.array(["cat", "dog"], dtype=object), np.array([0.5, 1.5])],
    ids=["int", "str", "bool", "object", "float"],
)
def test_classes_of_any_label_dtype_round_trip(loaded_copy, tmp_path, classes):
    loaded_copy.classes_ = classes
    loaded_copy.save(tmp_path / "c")
    again = ProtoPNetClassifier.load(tmp_path / "c")
    assert_same(classes, again.classes_, "classes_")
    assert again.prototype_class_.dtype == classes.dtype


@pytest.mark.parametrize(
    "value, match",
    [(object(), "attribute weird_"), (lambda: 0, "attribute weird_"),
     (np.array([[1], "a"], dtype=object), "object array"),
     ({1: "a"}, "attribute weird_")],
)
def test_unsupported_attribute_is_a_clear_error_at_save(loaded_copy, tmp_path, value, match):
    loaded_copy.weird_ = value
    with pytest.raises(TypeError, match=match):
        loaded_copy.save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_callable_parameter_is_a_clear_error_at_save(loaded_copy, tmp_path):
    loaded_copy.set_params(augment=lambda img: img)
    with pytest.raises(TypeError, match="augment"):
        loaded_copy.save(tmp_path / "m")


def test_save_before_fit_is_not_fitted(tmp_path):
    with pytest.raises(NotFittedError):
        tiny_classifier().save(tmp_path / "m")


# ----------------------------------------------------------------- backbones
@pytest.fixture(scope="module")
def custom_fitted(bar_data):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = TinyBackbone()
    return tiny_classifier(backbone=backbone, joint_epochs=1).fit(*bar_data)


def test_module_backbone_needs_an_instance_to_load(custom_fitted, bar_data, tmp_path):
    images, _ = bar_data
    custom_fitted.save(tmp_path / "m")
    with pytest.raises(ValueError, match=r"TinyBackbone.*backbone="):
        ProtoPNetClassifier.load(tmp_path / "m")
    with pytest.raises(ValueError, match="does not match"):
        ProtoPNetClassifier.load(tmp_path / "m", backbone=TinyBackbone(channels=5))
    with pytest.raises(TypeError, match="nn.Module"):
        ProtoPNetClassifier.load(tmp_path / "m", backbone="resnet18x")
    user = TinyBackbone()
    before = copy.deepcopy(user.state_dict())
    loaded = ProtoPNetClassifier.load(tmp_path / "m", backbone=user)
    np.testing.assert_array_equal(loaded.predict_proba(images),
                                  custom_fitted.predict_proba(images))
    # the user's instance is a template: copied, never modified
    assert all(torch.equal(v, before[k]) for k, v in user.state_dict().items())
    assert_same(custom_fitted.backbone, loaded.backbone, "backbone parameter")


@pytest.mark.parametrize("route", ["joblib", "pickle"])
def test_module_backbone_survives_pickle(custom_fitted, bar_data, tmp_path, route):
    images, _ = bar_data
    if route == "joblib":
        joblib.dump(custom_fitted, tmp_path / "m.joblib")
        loaded = joblib.load(tmp_path / "m.joblib")
    else:
        loaded = pickle.loads(pickle.dumps(custom_fitted))
    np.testing.assert_array_equal(loaded.predict_proba(images),
                                  custom_fitted.predict_proba(images))


def test_torchvision_backbone_is_rebuilt_without_downloading(bar_data, tmp_path):
    images, labels = bar_data
    images, labels = images[::5], labels[::5]
    clf = tiny_classifier(backbone="mobilenet_v3_small", image_size=32, warm_epochs=0,
                          joint_epochs=0, prototypes_per_class=1,
                          last_layer_max_iter=500).fit(images, labels)
    clf.save(tmp_path / "r")
    loaded = ProtoPNetClassifier.load(tmp_path / "r")
    assert loaded.backbone == "mobilenet_v3_small"
    np.testing.assert_array_equal(loaded.predict_proba(images), clf.predict_proba(images))


def _fit_save_on_device_and_load_on_cpu(images, labels, tmp_path, device, half):
    """One fit on ``device`` with mixed precision, saved there, then loaded and
    run where CUDA is absent; ``half`` is the autocast dtype the training
    convolutions must show."""
    seen = set()

    def record(module, args, output):
        if isinstance(module, nn.Conv2d) and module.training:
            seen.add((output.device.type, output.dtype))

    clf = tiny_classifier(joint_epochs=1, device=device, mixed_precision=device != "cpu")
    real_of = Hyperparameters.of
    # on the CPU, the public fit refuses mixed precision: the training code
    # gets it through its settings record (autocast in bfloat16)
    of = (lambda est: dataclasses.replace(real_of(est), mixed_precision=True)) \
        if device == "cpu" else real_of
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        with mock.patch.object(Hyperparameters, "of", of):
            clf.fit(images, labels)
    finally:
        handle.remove()
    # the SGD stages ran on the device under autocast (with the gradient
    # scaler on CUDA), and their losses stayed finite
    assert (torch.device(device).type, half) in seen, seen
    sgd = [r for r in clf.history_ if r.get("stage") in ("warm", "joint")]
    assert len(sgd) == 2 and all(np.isfinite(r["train_loss"]) for r in sgd)
    expected = clf.predict_proba(images)  # inference on the device
    clf.save(tmp_path / "m")
    joblib.dump(clf, tmp_path / "m.joblib")
    with mock.patch("torch.cuda.is_available", return_value=False):  # a machine without CUDA
        for loaded in (ProtoPNetClassifier.load(tmp_path / "m"),
                       joblib.load(tmp_path / "m.joblib")):
            state = loaded.module_.state_dict()
            assert all(t.device.type == "cpu" for t in state.values())
            assert all(t.dtype == torch.float32 for t in state.values()
                       if t.is_floating_point())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "CUDA is not available here"
                np.testing.assert_allclose(loaded.predict_proba(images), expected,
                                           atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_with_mixed_precision_saved_on_gpu_loads_on_cpu(bar_data, tmp_path):
    _fit_save_on_device_and_load_on_cpu(*bar_data, tmp_path, "cuda", torch.float16)


def test_the_cuda_check_itself_runs_on_the_cpu(bar_data, tmp_path):
    """The CUDA test's body on the CPU, autocast in bfloat16: it runs here, so
    a GPU machine only adds the device."""
    _fit_save_on_device_and_load_on_cpu(*bar_data, tmp_path, "cpu", torch.bfloat16)


# ------------------------------------------------------------ crafted files
class _Canary:
    """Unpickling this creates a file: the side effect a safe loader never runs."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rewrite(src, dst, meta=None, tensors=None):
    """Copy a model file, replacing its metadata (a dict, or raw JSON text) or tensors."""
    with zipfile.ZipFile(src) as zf:
        if meta is None:
            meta_bytes = zf.read("model.json")
        else:
            meta_bytes = (meta if isinstance(meta, str) else json.dumps(meta)).encode()
        tensor_bytes = zf.read("tensors.pt") if tensors is None else tensors
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("model.json", meta_bytes)
        zf.writestr("tensors.pt", tensor_bytes)


def _meta(path):
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("model.json"))


@pytest.mark.parametrize("how", ["raw pickle", "torch.save", "tensor plus payload"])
def test_pickle_payload_in_tensor_file_is_refused(fitted, tmp_path, how):
    canary = str(tmp_path / "canary")
    fitted.save(tmp_path / "good")
    if how == "raw pickle":
        payload = pickle.dumps({"x": _Canary(canary)})
    else:
        buffer = io.BytesIO()
        obj = {"x": _Canary(canary)}
        if how == "tensor plus payload":
            obj = {"attribute:module_/prototypes": torch.zeros(2), "evil": _Canary(canary)}
        torch.save(obj, buffer)
        payload = buffer.getvalue()
    _rewrite(tmp_path / "good", tmp_path / "evil", tensors=payload)
    with pytest.raises(ValueError, match="refused"):
        ProtoPNetClassifier.load(tmp_path / "evil")
    assert not os.path.exists(canary)


def test_deeply_nested_json_is_a_malformed_file(fitted, tmp_path):
    fitted.save(tmp_path / "good")
    text = json.dumps(_meta(tmp_path / "good"))
    for node in ["[" * 100_000 + "]" * 100_000,  # too deep for the json module
                 '{"kind": "list", "items": [' * 3_000 + "]}" * 3_000]:  # for the decoder
        _rewrite(tmp_path / "good", tmp_path / "deep",
                 meta=text[:-2] + f', "deep_": {node}}}}}')
        with pytest.raises(ValueError, match="malformed model file"):
            ProtoPNetClassifier.load(tmp_path / "deep")


def test_pickle_payload_in_json_is_refused(fitted, tmp_path):
    import base64

    canary = str(tmp_path / "canary")
    fitted.save(tmp_path / "good")
    blob = base64.b64encode(pickle.dumps(_Canary(canary))).decode()
    for node, match in [
        ({"kind": "pickle", "data": blob}, "unknown node kind"),
        ({"kind": "dataclass", "class": "os.system", "fields": {}}, "unknown class"),
        ({"kind": "ndarray", "dtype": "|O", "shape": [1], "tensor": "x"}, "dtype"),
        ([1, 2], "unexpected node"),
    ]:
        meta = _meta(tmp_path / "good")
        meta["attributes"]["history_"] = node
        _rewrite(tmp_path / "good", tmp_path / "evil", meta=meta)
        with pytest.raises(ValueError, match=match):
            ProtoPNetClassifier.load(tmp_path / "evil")
    meta = _meta(tmp_path / "good")
    meta["params"]["backbone"]["class"] = "Evil"
    _rewrite(tmp_path / "good", tmp_path / "evil", meta=meta)
    with pytest.raises(ValueError, match="unknown backbone class"):
        ProtoPNetClassifier.load(tmp_path / "evil")
    assert not os.path.exists(canary)


def test_incompatible_or_foreign_files_are_clear_errors(fitted, tmp_path):
    fitted.save(tmp_path / "good")
    meta = _meta(tmp_path / "good")
    meta["format_version"] = FORMAT_VERSION + 1
    meta["package_version"] = "9.0"
    _rewrite(tmp_path / "good", tmp_path / "future", meta=meta)
    with pytest.raises(ValueError, match=r"format version 2.*9\.0"):
        ProtoPNetClassifier.load(tmp_path / "future")
    meta = _meta(tmp_path / "good")
    meta["params"]["not_a_parameter"] = 1
    _rewrite(tmp_path / "good", tmp_path / "unknown", meta=meta)
    with pytest.raises(ValueError, match="not_a_parameter"):
        ProtoPNetClassifier.load(tmp_path / "unknown")
    meta = _meta(tmp_path / "good")
    del meta["format"]
    _rewrite(tmp_path / "good", tmp_path / "other", meta=meta)
    with pytest.raises(ValueError, match="not a sklearn-protopnet model file"):
        ProtoPNetClassifier.load(tmp_path / "other")
    joblib.dump(fitted, tmp_path / "m.joblib")
    with pytest.raises(ValueError, match="joblib"):
        ProtoPNetClassifier.load(tmp_path / "m.joblib")


# ------------------------------------------- torch.nn backbones described as data
#: One or more instances of every allowlisted layer, with arguments other than
#: the defaults where there are any, and an input shape it accepts.
LAYER_EXAMPLES = [
    ("Conv1d", lambda: nn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2, bias=False,
                                 padding_mode="reflect"), (2, 3, 11)),
    ("Conv2d", lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0),
                                 dilation=(1, 2), groups=2, padding_mode="replicate"),
     (2, 4, 9, 9)),
    ("Conv2d-same", lambda: nn.Conv2d(3, 5, 3, padding="same", padding_mode="circular"),
     (2, 3, 7, 7)),
    ("ConvTranspose2d", lambda: nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1,
                                                   output_padding=1, groups=2, bias=False,
                                                   dilation=1), (2, 4, 5, 5)),
    ("Linear", lambda: nn.Linear(5, 3, bias=False), (2, 4, 5)),
    ("BatchNorm1d", lambda: nn.BatchNorm1d(4, eps=1e-3, momentum=0.3), (3, 4, 6)),
    ("BatchNorm2d", lambda: nn.BatchNorm2d(4, momentum=None), (2, 4, 3, 3)),
    ("BatchNorm2d-no-stats", lambda: nn.BatchNorm2d(4, affine=False,
                                                    track_running_stats=False), (2, 4, 3, 3)),
    ("InstanceNorm2d", lambda: nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
     (2, 4, 5, 5)),
    ("GroupNorm", lambda: nn.GroupNorm(2, 4, eps=1e-4, affine=False), (2, 4, 3, 3)),
    ("LayerNorm", lambda: nn.LayerNorm([3, 3], eps=1e-4, bias=False), (2, 4, 3, 3)),
    ("LayerNorm-no-affine", lambda: nn.LayerNorm(3, elementwise_affine=False, bias=False),
     (2, 4, 3, 3)),
    ("ReLU", lambda: nn.ReLU(inplace=True), (2, 3, 4, 4)),
    ("ReLU6", lambda: nn.ReLU6(), (2, 3, 4, 4)),
    ("LeakyReLU", lambda: nn.LeakyReLU(0.2, inplace=True), (2, 3, 4, 4)),
    ("PReLU", lambda: nn.PReLU(3, init=0.1), (2, 3, 4, 4)),
    ("ELU", lambda: nn.ELU(alpha=0.5), (2, 3, 4, 4)),
    ("SELU", lambda: nn.SELU(), (2, 3, 4, 4)),
    ("GELU", lambda: nn.GELU(approximate="tanh"), (2, 3, 4, 4)),
    ("SiLU", lambda: nn.SiLU(), (2, 3, 4, 4)),
    ("Mish", lambda: nn.Mish(), (2, 3, 4, 4)),
    ("Hardswish", lambda: nn.Hardswish(), (2, 3, 4, 4)),
    ("Hardsigmoid", lambda: nn.Hardsigmoid(), (2, 3, 4, 4)),
    ("Sigmoid", lambda: nn.Sigmoid(), (2, 3, 4, 4)),
    ("Tanh", lambda: nn.Tanh(), (2, 3, 4, 4)),
    ("MaxPool2d", lambda: nn.MaxPool2d((3, 2), stride=2, padding=1, dilation=1,
                                       ceil_mode=True), (2, 3, 7, 7)),
    ("AvgPool2d", lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                       count_include_pad=False, divisor_override=2),
     (2, 3, 7, 7)),
    ("AdaptiveAvgPool2d", lambda: nn.AdaptiveAvgPool2d((None, 3)), (2, 3, 7, 7)),
    ("AdaptiveMaxPool2d", lambda: nn.AdaptiveMaxPool2d(2), (2, 3, 7, 7)),
    ("Dropout", lambda: nn.Dropout(0.3), (2, 3, 4, 4)),
    ("Dropout2d", lambda: nn.Dropout2d(0.4, inplace=True), (2, 3, 4, 4)),
    ("Identity", lambda: nn.Identity(), (2, 3, 4, 4)),
    ("Flatten", lambda: nn.Flatten(2, -1), (2, 3, 4, 4)),
    ("ZeroPad2d", lambda: nn.ZeroPad2d((1, 2, 0, 1)), (2, 3, 4, 4)),
    ("ConstantPad2d", lambda: nn.ConstantPad2d(1, float("-inf")), (2, 3, 4, 4)),
    ("ReflectionPad2d", lambda: nn.ReflectionPad2d((2, 1, 1, 0)), (2, 3, 4, 4)),
    ("ReplicationPad2d", lambda: nn.ReplicationPad2d(2), (2, 3, 4, 4)),
    ("Upsample", lambda: nn.Upsample(scale_factor=(2.0, 1.5), mode="bilinear",
                                     align_corners=True), (2, 3, 4, 4)),
    ("Upsample-size", lambda: nn.Upsample(size=(5, 3), mode="nearest-exact"), (2, 3, 4, 4)),
]


def _randomised(module: nn.Module) -> nn.Module:
    """Every float parameter and buffer set to a random positive value."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            else:
                tensor.fill_(7)
    return module


def _through_json(module: nn.Module):
    """(spec, rebuilt backbone parameter) of ``module``, through the JSON text."""
    writer = _Writer()
    spec = json.loads(json.dumps(_backbone_spec(module, writer), allow_nan=False))
    return spec, _rebuild_param_backbone(spec, _Reader(writer.tensors), None)


def _assert_same_module(original: nn.Module, rebuilt: nn.Module):
    assert repr(rebuilt) == repr(original)
    assert [type(m) for m in rebuilt.modules()] == [type(m) for m in original.modules()]
    sa, sb = original.state_dict(), rebuilt.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_every_allowlisted_layer_has_an_example():
    assert {name.split("-")[0] for name, _, _ in LAYER_EXAMPLES} == set(_TORCH_NN_LAYERS)
    for name, factory, _ in LAYER_EXAMPLES:
        assert type(factory()).__name__ == name.split("-")[0]


@pytest.mark.parametrize("factory, shape", [e[1:] for e in LAYER_EXAMPLES],
                         ids=[e[0] for e in LAYER_EXAMPLES])
def test_every_allowlisted_layer_round_trips(factory, shape):
    original = _randomised(factory())
    spec, rebuilt = _through_json(original)
    assert spec["kind"] == "torch_nn", spec.get("unsupported")
    _assert_same_module(original, rebuilt)
    for mode in ("eval", "train"):
        getattr(original, mode)(), getattr(rebuilt, mode)()
        x = torch.randn(shape)
        with torch.random.fork_rng():
            expected = original(x.clone())
        with torch.random.fork_rng():
            got = rebuilt(x.clone())
        assert torch.equal(got, expected), mode
    # also inside nested Sequentials, with names of the user's choosing
    nested = nn.Sequential(collections.OrderedDict(
        [("stem", nn.Sequential(original)), ("out", nn.Identity())]))
    _assert_same_module(nested, _through_json(nested)[1])


def test_the_allowlist_is_the_documented_one():
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "scikit-learn.md"),
                encoding="utf-8").read()
    section = text.split("## Saving and loading", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `nn.")]
    documented = set(re.findall(r"`nn\.(\w+)`", "".join(rows)))
    assert documented == set(_TORCH_NN_LAYERS) | {"Sequential"}


def test_float64_backbone_keeps_its_dtype():
    original = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double()
    _, rebuilt = _through_json(original)
    _assert_same_module(original, rebuilt)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    assert torch.equal(rebuilt.eval()(x), original.eval()(x))


def _custom_subclass():
    class Doubled(nn.ReLU):  # a subclass with its own forward is not its parent
        def forward(self, x):
            return 2 * super().forward(x)

    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.Identity(), Doubled()))


def _same_name_subclass():
    class Conv2d(nn.Conv2d):  # named like its parent: still not its parent
        def forward(self, x):
            return -super().forward(x)

    return nn.Sequential(nn.ReLU(), Conv2d(3, 4, 1))


def _hooked():
    m = nn.Sequential(nn.Conv2d(3, 4, 1))
    m[0].register_forward_hook(lambda mod, inp, out: out * 2)
    return m


def _extra_attribute():
    m = nn.Sequential(nn.Conv2d(3, 4, 1))
    m[0].stem = True
    return m


def _own_forward():
    m = nn.Sequential(nn.ReLU())
    m.forward = lambda x: x
    return m


def _shared_module():
    conv = nn.Conv2d(4, 4, 1)
    return nn.Sequential(conv, nn.ReLU(), conv)


def _shared_weight():
    a, b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
    b.weight = a.weight
    return nn.Sequential(a, b)


@pytest.mark.parametrize("make, match", [
    (TinyBackbone, r"the backbone itself is a .*TinyBackbone"),
    (_custom_subclass, r"submodule '1\.1' is a .*Doubled"),
    (_same_name_subclass, r"submodule '1' is a .*_same_name_subclass\.<locals>\.Conv2d"),
    (lambda: nn.Sequential(nn.ReLU(), nn.ModuleList([nn.ReLU()])), r"'1' is a .*ModuleList"),
    (_hooked, r"submodule '0' \(Conv2d\) has hooks"),
    (_extra_attribute, r"'0' \(Conv2d\) has attributes .*\['stem'\]"),
    (_own_forward, r"the backbone itself \(Sequential\) has attributes .*\['forward'\]"),
    (_shared_module, r"submodule '2' is the same module object"),
    (_shared_weight, r"'1\.weight' is the same tensor as '0\.weight'"),
    (lambda: nn.Sequential(nn.Conv2d(3, np.int64(4), 1)), r"out_channels .* not a JSON value"),
], ids=["custom", "subclass", "same-name-subclass", "modulelist", "hook", "attribute",
        "forward", "shared-module", "shared-weight", "numpy-int"])
def test_what_is_not_described_keeps_the_backbone_route(make, match):
    spec = _backbone_spec(make(), _Writer())
    assert spec["kind"] == "module"
    assert re.search(match, spec["unsupported"]), spec["unsupported"]


def _sequential_backbone():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                          nn.LeakyReLU(0.1)),
            nn.MaxPool2d(2),
        )


@pytest.fixture(scope="module")
def sequential_fitted(bar_data):
    return tiny_classifier(backbone=_sequential_backbone(), joint_epochs=1).fit(*bar_data)


def test_sequential_backbone_loads_without_an_instance(sequential_fitted, bar_data, tmp_path):
    images, labels = bar_data
    sequential_fitted.save(tmp_path / "m")
    assert _meta(tmp_path / "m")["params"]["backbone"]["kind"] == "torch_nn"
    rng = torch.get_rng_state()
    loaded = ProtoPNetClassifier.load(tmp_path / "m")
    assert torch.equal(torch.get_rng_state(), rng)  # nothing was randomly initialised
    np.testing.assert_array_equal(loaded.predict_proba(images),
                                  sequential_fitted.predict_proba(images))
    np.testing.assert_array_equal(loaded.transform(images), sequential_fitted.transform(images))
    np.testing.assert_array_equal(loaded.predict(images), sequential_fitted.predict(images))
    # the backbone parameter: a new nn.Sequential, the same in structure and weights
    assert type(loaded.backbone) is nn.Sequential
    assert loaded.backbone is not sequential_fitted.backbone
    _assert_same_module(sequential_fitted.backbone, loaded.backbone)
    for key, value in fitted_attributes(sequential_fitted).items():
        assert_same(value, getattr(loaded, key), key)
    # so a refit of the loaded model starts where the original fit started
    refit = clone(loaded).fit(images, labels)
    np.testing.assert_array_equal(refit.predict_proba(images),
                                  sequential_fitted.predict_proba(images))


def test_files_with_the_module_kind_still_load(sequential_fitted, bar_data, tmp_path):
    """A file written before torch.nn backbones were described (kind "module")."""
    images, _ = bar_data
    sequential_fitted.save(tmp_path / "new")
    meta = _meta(tmp_path / "new")
    spec = meta["params"]["backbone"]
    meta["params"]["backbone"] = {"kind": "module", "class": spec["class"],
                                  "state": spec["state"]}
    _rewrite(tmp_path / "new", tmp_path / "old", meta=meta)
    with pytest.raises(ValueError, match=r"Sequential, which the model file cannot rebuild\. "
                                         r"Pass an instance like it"):
        ProtoPNetClassifier.load(tmp_path / "old")
    loaded = ProtoPNetClassifier.load(tmp_path / "old", backbone=_sequential_backbone())
    np.testing.assert_array_equal(loaded.predict_proba(images),
                                  sequential_fitted.predict_proba(images))


class Gate(nn.Module):
    """A layer of the user's own: not describable as data."""

    def forward(self, x):
        return x * torch.sigmoid(x)


def test_sequential_with_a_custom_module_needs_an_instance(bar_data, tmp_path):
    images, labels = bar_data

    def backbone():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                 nn.Sequential(nn.ReLU(), Gate()))

    clf = tiny_classifier(backbone=backbone(), joint_epochs=1).fit(images, labels)
    clf.save(tmp_path / "m")
    with pytest.raises(ValueError, match=r"class torch\.nn\.modules\.container\.Sequential, "
                                         r".*its submodule '2\.1' is a .*test_persistence\.Gate"
                                         r".*backbone="):
        ProtoPNetClassifier.load(tmp_path / "m")
    loaded = ProtoPNetClassifier.load(tmp_path / "m", backbone=backbone())
    np.testing.assert_array_equal(loaded.predict_proba(images), clf.predict_proba(images))


def _conv_node(**changes):
    args = {"in_channels": 3, "out_channels": 8, "kernel_size": 3, "stride": 1, "padding": 1,
            "dilation": 1, "groups": 1, "bias": False, "padding_mode": "zeros"}
    args.update(changes)
    return {"class": "Conv2d", "args": {k: v for k, v in args.items() if v is not None}}


def test_crafted_backbone_descriptions_are_refused(sequential_fitted, tmp_path):
    import base64

    canary = str(tmp_path / "canary")
    blob = base64.b64encode(pickle.dumps(_Canary(canary))).decode()
    sequential_fitted.save(tmp_path / "good")
    for tree, match in [
        ({"class": "os.system", "args": {"command": f"touch {canary}"}},
         r"layer 'os\.system' at the backbone itself is not supported"),
        ({"class": "torch.nn.Module", "args": {}}, "'torch.nn.Module' .* not supported"),
        ({"class": "Sequential", "children": [["0", {"class": "Conv2dX", "args": {}}]]},
         r"'Conv2dX' at its submodule '0' is not supported"),
        ({"class": "__builtins__", "args": {}}, "not supported"),
        ({"class": "Module", "children": []}, "not supported"),
        ({"class": "ModuleList", "children": []}, "not supported"),
        (_conv_node(device="cuda"), r"unsupported arguments \['device'\]"),
        (_conv_node(groups=None), r"lacks \['groups'\]"),
        (_conv_node(padding={"kind": "pickle", "data": blob}), "not a plain JSON value"),
        (_conv_node(padding={"kind": "ndarray", "dtype": "<i8", "shape": [1],
                             "tensor": "x"}), "not a plain JSON value"),
        (_conv_node(padding={"kind": "dataclass", "class": "CellGeometry", "fields": {}}),
         "not a plain JSON value"),
        (_conv_node(padding={"kind": "tuple", "items": [1, {"kind": "random_state"}]}),
         "not a plain JSON value"),
        (_conv_node(kernel_size="big"), "cannot build the Conv2d"),
        (_conv_node(out_channels=10**30), "cannot build the Conv2d"),
        (_conv_node(out_channels=10**6, in_channels=10**6),  # meta: nothing is allocated
         "does not match"),
        ({"class": "Conv2d", "args": {}, "children": []}, "exactly a dict of arguments"),
        ({"class": "Sequential", "children": [["a.b", {"class": "ReLU",
                                                        "args": {"inplace": False}}]]},
         "not a .unique name, node. pair"),
        ({"class": "Sequential", "children": [["training", {"class": "Identity",
                                                             "args": {}}]]},
         "the Sequential at the backbone itself"),
        ({"class": "Sequential", "children": {"0": {}}}, "exactly a list of children"),
        (["Conv2d"], "not a node"),
    ]:
        meta = _meta(tmp_path / "good")
        meta["params"]["backbone"]["tree"] = tree
        _rewrite(tmp_path / "good", tmp_path / "evil", meta=meta)
        with pytest.raises(ValueError, match=match):
            ProtoPNetClassifier.load(tmp_path / "evil")
    assert not os.path.exists(canary)
