"""Named backbones, weights files, normalisation, mixed precision, data loading."""

from __future__ import annotations

import re
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from sklearn_protopnet import ProtoPNetClassifier, list_backbones
from sklearn_protopnet._backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_backbone,
    probe_backbone,
    resolve_normalize,
)
from sklearn_protopnet._geometry import box_from_map, upsample_map

from .conftest import make_bar_images, tiny_classifier

FAMILIES = {
    "resnet": ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"],
    "vgg": [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")],
    "densenet": ["densenet121", "densenet161", "densenet169", "densenet201"],
    "efficientnet": [f"efficientnet_b{i}" for i in range(4)],
    "convnext": ["convnext_tiny", "convnext_small"],
    "mobilenet_v3": ["mobilenet_v3_small", "mobilenet_v3_large"],
}
REPRESENTATIVES = ["resnet18", "vgg11", "densenet121", "efficientnet_b0", "convnext_tiny",
                   "mobilenet_v3_small"]
OTHERS = sorted(set(list_backbones()) - set(REPRESENTATIVES))


def test_every_listed_family_is_available():
    assert sorted(n for names in FAMILIES.values() for n in names) == list_backbones()


@pytest.mark.parametrize("name", OTHERS)
def test_named_backbone_builds_cut_at_its_last_feature_map(name):
    built = build_backbone(name, None)
    # every listed family has total stride 32: 64 px give a 2x2 feature map
    channels, h, w = probe_backbone(built.module, (64, 64))
    assert (h, w) == (2, 2) and channels >= 512
    assert (built.mean, built.std) == (IMAGENET_MEAN, IMAGENET_STD)


@pytest.fixture(scope="module")
def small_images():
    """12 RGB 32-px images of two classes (bars on noise, tinted)."""
    gray, labels = make_bar_images(6, size=32, seed=1)
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)
    return rgb, labels


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_representative_of_each_family_fits_and_boxes_lie_inside(name, small_images):
    X, y = small_images
    clf = ProtoPNetClassifier(
        backbone=name, image_size=32, prototypes_per_class=1, prototype_dim=8,
        warm_epochs=1, joint_epochs=0, batch_size=12, augment=False, random_state=0,
    ).fit(X, y)
    assert clf.predict_proba(X).shape == (len(X), 2)
    g = clf.cell_geometry_
    assert g.method == "probed" and g.feature_map_shape == clf.feature_map_shape_
    assert g.stride == (32.0, 32.0)
    # each prototype's box on its source image, in that image's pixels (and
    # at another original size), lies inside the image
    module = clf.module_
    with torch.no_grad():
        images = torch.from_numpy(X).permute(0, 3, 1, 2).contiguous()
        sim = module.similarity(module.distance_map(module.latent(images))).numpy()
    for j, i in enumerate(clf.prototype_source_index_):
        for out_size in [(32, 32), (75, 50)]:
            x0, y0, x1, y1 = box_from_map(upsample_map(sim[i, j], g, out_size), 95)
            assert 0 <= x0 < x1 <= out_size[1] and 0 <= y0 < y1 <= out_size[0]


# -------------------------------------------------------------- weights
@pytest.fixture(scope="module")
def resnet18_state(tmp_path_factory):
    """A randomly initialised torchvision resnet18 saved with and without its head."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(3)
    state = torchvision.models.resnet18(weights=None).state_dict()
    full, trunk = folder / "full.pth", folder / "no_head.pt"
    torch.save(state, full)
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, trunk)
    return state, full, trunk


@pytest.mark.parametrize("which", ["full", "no_head"])
def test_local_weights_file_loads_with_or_without_head(resnet18_state, which):
    state, full, trunk = resnet18_state
    built = build_backbone("resnet18", full if which == "full" else str(trunk))
    loaded = built.module.state_dict()
    assert torch.equal(loaded["0.weight"], state["conv1.weight"])  # trunk[0] is conv1
    assert torch.equal(loaded["7.1.bn2.running_var"], state["layer4.1.bn2.running_var"])


def test_local_weights_for_a_custom_module(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    path = tmp_path / "custom.pt"
    torch.save(net.state_dict(), path)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    built = build_backbone(other, path)
    assert torch.equal(built.module[0].weight, net[0].weight)
    assert not torch.equal(other[0].weight, net[0].weight)  # the user's module untouched


def test_missing_weights_file_is_named(tmp_path):
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        build_backbone("resnet18", str(path))
    clf = tiny_classifier(backbone="resnet18", weights=str(path), image_size=32)
    X, y = make_bar_images(3, size=32)
    with pytest.raises(FileNotFoundError, match="resnet18.pth"):
        clf.fit(X, y)
    assert not hasattr(clf, "module_")


def test_mismatched_weights_file_is_named(tmp_path, resnet18_state):
    _, full, _ = resnet18_state
    with pytest.raises(ValueError, match=re.escape(str(full)) + ".*does not match"):
        build_backbone("resnet34", full)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        build_backbone("resnet18", junk)


def test_torchvision_weights_offline_say_how_to_pass_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached download can answer

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"weights='/path/to/resnet18\.pth'"):
        build_backbone("resnet18", "IMAGENET1K_V1")
    with pytest.raises(ValueError, match="unknown weights"):
        build_backbone("resnet18", "IMAGENET_NOPE")


# -------------------------------------------------------- normalisation
def test_normalize_options():
    assert resolve_normalize("auto", (0.5,) * 3, (0.25,) * 3) == ((0.5,) * 3, (0.25,) * 3)
    assert resolve_normalize("imagenet", (0.5,) * 3, (0.25,) * 3) == (IMAGENET_MEAN,
                                                                     IMAGENET_STD)
    assert resolve_normalize(None) == ((0.0,) * 3, (1.0,) * 3)
    assert resolve_normalize((0.5, 0.2)) == ((0.5,) * 3, (0.2,) * 3)
    assert resolve_normalize(([0.1, 0.2, 0.3], (1, 2, 3))) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    for bad in [(0.5, 0.0), ((0.1, 0.2), (1, 1, 1)), "zscore"]:
        with pytest.raises(ValueError, match="normalize"):
            resolve_normalize(bad)


def test_normalize_reaches_the_network(bar_data):
    X, y = bar_data
    clf = tiny_classifier(normalize=(0.5, 0.25), warm_epochs=0, joint_epochs=0).fit(X, y)
    assert torch.allclose(clf.module_.mean.flatten(), torch.full((3,), 0.5))
    assert torch.allclose(clf.module_.std.flatten(), torch.full((3,), 0.25))
    raw = tiny_classifier(normalize=None, warm_epochs=0, joint_epochs=0).fit(X, y)
    x = torch.from_numpy(np.repeat(X[:2, None], 3, axis=1))
    assert torch.allclose(raw.module_.normalise(x), x.float() / 255)


# ------------------------------------------- precision and data loading
def test_mixed_precision_is_refused_on_cpu(bar_data):
    X, y = bar_data
    clf = tiny_classifier(mixed_precision=True, device="cpu")
    with pytest.raises(ValueError, match="mixed_precision=True needs a CUDA device"):
        clf.fit(X, y)
    assert not hasattr(clf, "module_")


def test_mixed_precision_sgd_keeps_float32_push_and_exact_logits(bar_data):
    """The autocast path of the SGD stages, run on the CPU in bfloat16 through the
    internal fit (the public fit refuses mixed precision off CUDA)."""
    from sklearn_protopnet._images import check_images
    from sklearn_protopnet._params import Hyperparameters
    from sklearn_protopnet._training import train

    X, y = bar_data
    calls = []  # per forward pass of a backbone: (module, output dtype, grad enabled, training)
    clf = tiny_classifier(mixed_precision=True, device="cpu", joint_epochs=1)
    clf.backbone.register_forward_hook(  # copied with the backbone into the fitted network
        lambda m, i, out: calls.append((m, out.dtype, torch.is_grad_enabled(), m.training)))
    state = train(Hyperparameters.of(clf), check_images(X), y.astype(np.int64),
                  np.array([0, 1]), torch.device("cpu"))
    clf.__dict__.update(state)
    n_fit = len(calls)
    clf.decision_function(X)
    # the passes of the fitted network's backbone (not of the geometry probe's copy)
    passes = [(k, dtype, grad, training) for k, (m, dtype, grad, training) in enumerate(calls)
              if m is clf.module_.backbone]
    sgd = [(k, dtype, training) for k, dtype, grad, training in passes if grad]
    # warm-up and joint epoch, 40 images in batches of 16: six SGD passes, all in
    # bfloat16, the joint epoch's with the backbone in training mode
    assert len(sgd) == 6
    assert [(k, dtype) for k, dtype, _ in sgd if dtype != torch.bfloat16] == []
    assert [training for _, _, training in sgd] == [False] * 3 + [True] * 3
    assert all(grad for _, _, grad, training in passes if training)
    # every other pass (calibration, push, last layer, parts, inference) in float32
    no_grad = [(k, dtype) for k, dtype, grad, _ in passes if not grad]
    assert [(k, dtype) for k, dtype in no_grad if dtype != torch.float32] == []
    last_sgd = sgd[-1][0]
    assert any(last_sgd < k < n_fit for k, _ in no_grad)  # push, last layer and parts
    assert any(k >= n_fit for k, _ in no_grad)  # decision_function
    assert all(np.isfinite(r["train_loss"]) for r in clf.history_ if "train_loss" in r)
    assert clf.module_.prototypes.dtype == torch.float32
    np.testing.assert_allclose(clf.decision_function(X), clf.transform(X) @ clf.coef_.T,
                               rtol=1e-5, atol=1e-5)


def test_worker_processes_give_the_same_model(bar_files, fitted):
    paths, labels = bar_files
    with_workers = tiny_classifier(num_workers=1).fit(paths, labels)  # as ``fitted``
    np.testing.assert_allclose(with_workers.transform(paths), fitted.transform(paths),
                               rtol=1e-5, atol=1e-6)


def test_a_last_batch_of_one_image_on_a_1x1_feature_map_trains():
    """ResNet at 32 px has a 1 x 1 map: BatchNorm cannot use a batch of one
    image there, so calibration and SGD leave out a last batch of one."""
    X, y = make_bar_images(9, size=32)
    X, y = X[:17], y[:17]  # 17 = 16 + 1
    clf = ProtoPNetClassifier(backbone="resnet18", image_size=32, prototypes_per_class=1,
                              prototype_dim=8, warm_epochs=1, joint_epochs=1, batch_size=16,
                              augment=False, random_state=0).fit(X, y)
    assert clf.feature_map_shape_ == (1, 1)
    assert np.isfinite(clf.predict_proba(X)).all()
    calibration = [r for r in clf.history_ if r["stage"] == "batchnorm_calibration"]
    assert len(calibration) == 1
