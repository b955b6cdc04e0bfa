"""Model files (save/load) and pickle: round trips, refusal of crafted files."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import pickle
import zipfile

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from torch import nn

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet._persistence import FORMAT_VERSION

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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fitted_model_loads_on_cpu(bar_data, tmp_path):
    clf = tiny_classifier(joint_epochs=1, device="cuda").fit(*bar_data)
    clf.save(tmp_path / "m")
    loaded = ProtoPNetClassifier.load(tmp_path / "m")
    assert all(t.device.type == "cpu" for t in loaded.module_.state_dict().values())
    joblib.dump(clf, tmp_path / "m.joblib")
    assert all(t.device.type == "cpu"
               for t in joblib.load(tmp_path / "m.joblib").module_.state_dict().values())


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
