"""ProtoPNetClassifier end to end on small images made here."""

import copy
import os

import joblib
import numpy as np
import pytest
import torch

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet._network import SIMILARITY_EPSILON

from .conftest import forbid_training, tiny_classifier, write_pngs


def test_logits_are_similarities_times_weights(fitted, bar_files):
    paths, _ = bar_files
    logits = fitted.decision_function(paths)
    sims = fitted.transform(paths)
    assert logits.shape == (len(paths), 2)
    assert sims.shape == (len(paths), fitted.n_prototypes_)
    # float64 logits from the same similarities and weights: equal to rounding
    assert logits.dtype == np.float64
    np.testing.assert_allclose(logits, sims @ fitted.coef_.T, rtol=1e-12, atol=1e-12)


def test_probabilities_and_predictions_agree(fitted, bar_files):
    paths, labels = bar_files
    proba = fitted.predict_proba(paths)
    logits = fitted.decision_function(paths)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(proba, expected, rtol=1e-6)
    pred = fitted.predict(paths)
    np.testing.assert_array_equal(pred, fitted.classes_[proba.argmax(axis=1)])
    assert set(pred) <= set(labels)
    np.testing.assert_array_equal(fitted.classes_, ["horizontal", "vertical"])


def test_fitted_attributes_are_consistent(fitted, bar_files):
    _, labels = bar_files
    m = fitted.n_prototypes_
    assert m == 2 * 3
    assert fitted.coef_.shape == (2, m)
    assert list(fitted.prototype_class_).count("horizontal") == 3
    # each prototype was projected onto a training image of its own class
    np.testing.assert_array_equal(labels[fitted.prototype_source_index_],
                                  fitted.prototype_class_)
    assert all(p.device.type == "cpu" for p in fitted.module_.parameters())
    stages = [r["stage"] for r in fitted.history_]
    assert stages[:2] == ["batchnorm_calibration", "warm"] and "joint" in stages
    assert stages[-2:] == ["push", "last_layer"]
    assert fitted.history_[-1]["kkt_residual"] <= fitted.last_layer_tol


def test_push_is_exact(fitted, bar_files):
    """Each prototype is a latent patch of its source image; its similarity there
    is the largest possible."""
    paths, _ = bar_files
    module = fitted.module_
    sims = fitted.transform([paths[i] for i in fitted.prototype_source_index_])
    best = np.log((0 + 1) / (0 + SIMILARITY_EPSILON))
    np.testing.assert_allclose(np.diag(sims), best, rtol=1e-3)
    from sklearn_protopnet._images import check_images

    source = check_images(paths)
    for j, (i, (r, c)) in enumerate(zip(fitted.prototype_source_index_,
                                        fitted.prototype_location_)):
        x = source.load(int(i), fitted.image_size_)[None]
        with torch.no_grad():
            z = module.latent(x)
        torch.testing.assert_close(module.prototypes[j], z[0, :, r, c], atol=1e-5, rtol=1e-5)


def test_last_layer_is_optimal_on_training_similarities(fitted, bar_files):
    paths, labels = bar_files
    S = fitted.transform(paths)
    W = fitted.coef_
    y = np.searchsorted(fitted.classes_, labels)
    P = np.exp(S @ W.T)
    P /= P.sum(axis=1, keepdims=True)
    G = (P - np.eye(2)[y]).T @ S / len(y) + fitted.last_layer_l2 * W
    own = fitted.classes_[:, None] == fitted.prototype_class_[None, :]
    assert np.abs(G[own]).max() < 1e-4
    off = ~own
    l1 = fitted.last_layer_l1
    nz = off & (W != 0)
    assert np.allclose(G[nz], -l1 * np.sign(W[nz]), atol=1e-4)
    assert (np.abs(G[off & (W == 0)]) <= l1 + 1e-4).all()


def test_grayscale_and_rgb_arrays_and_list_of_paths(bar_data, tmp_path):
    images, labels = bar_data
    rgb = np.repeat(images[..., None], 3, axis=3)
    clf = tiny_classifier(joint_epochs=1).fit(images, labels)
    # the same images as gray, as RGB and as files give the same outputs
    np.testing.assert_allclose(clf.predict_proba(images), clf.predict_proba(rgb), atol=1e-6)
    paths = write_pngs(str(tmp_path), images)
    np.testing.assert_allclose(clf.predict_proba(images), clf.predict_proba(paths), atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(images / 255.0),
                               clf.predict_proba(images), atol=1e-6)


def test_missing_file_is_named_before_training(bar_files, monkeypatch):
    paths, labels = bar_files
    forbid_training(monkeypatch)
    bad = list(paths)
    bad[7] = os.path.join(os.path.dirname(paths[0]), "no-such-image.png")
    with pytest.raises(FileNotFoundError, match="no-such-image.png"):
        tiny_classifier().fit(bad, labels)


def test_corrupt_file_is_named_before_training(bar_files, tmp_path, monkeypatch):
    paths, labels = bar_files
    forbid_training(monkeypatch)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    bad = list(paths)
    bad[3] = str(corrupt)
    with pytest.raises(OSError, match="corrupt.png"):
        tiny_classifier().fit(bad, labels)


def test_failed_refit_leaves_the_model_as_it_was(bar_files, tmp_path):
    paths, labels = bar_files
    clf = tiny_classifier(joint_epochs=1).fit(paths, labels)
    state = dict(clf.__dict__)
    proba = clf.predict_proba(paths)
    weights = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"not an image at all")
    for bad in (list(paths[:-1]) + [str(tmp_path / "missing.png")],
                list(paths[:-1]) + [str(corrupt)]):
        with pytest.raises(OSError):
            clf.fit(bad, labels)
    with pytest.raises(ValueError):
        clf.set_params(prototypes_per_class=4).fit(paths, np.zeros(len(paths)))
    clf.set_params(prototypes_per_class=3)
    assert clf.__dict__.keys() == state.keys()
    assert all(clf.__dict__[k] is v for k, v in state.items() if k.endswith("_"))
    for k, v in clf.module_.state_dict().items():
        assert torch.equal(v, weights[k])
    np.testing.assert_array_equal(clf.predict_proba(paths), proba)


def test_verbose_output(bar_data, capsys):
    images, labels = bar_data
    tiny_classifier(joint_epochs=1, verbose=0).fit(images, labels)
    assert capsys.readouterr().out == ""
    tiny_classifier(joint_epochs=1, verbose=1).fit(images, labels)
    out = capsys.readouterr().out
    for word in ("warm epoch 1", "joint epoch 2", "push after epoch", "KKT residual"):
        assert word in out


def test_rng_state_of_the_caller_is_untouched(bar_data):
    images, labels = bar_data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_classifier(joint_epochs=1).fit(images, labels)
    torch.testing.assert_close(torch.rand(3), expected)


def test_cuda_request_without_cuda_is_a_clear_error(bar_data):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        tiny_classifier(device="cuda").fit(*bar_data)


def test_a_model_fitted_for_cuda_predicts_on_the_cpu_with_a_warning(fitted, bar_files, tmp_path):
    """A model fitted on a GPU and loaded on a machine without one predicts on
    the CPU (the same outputs) and says so."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    paths, _ = bar_files
    expected = fitted.predict_proba(paths)
    gpu_fitted = copy.deepcopy(fitted).set_params(device="cuda")  # as saved on a GPU machine
    gpu_fitted.save(tmp_path / "gpu.ppn")
    loaded = ProtoPNetClassifier.load(tmp_path / "gpu.ppn")
    with pytest.warns(UserWarning, match="CUDA is not available here; running on the CPU"):
        np.testing.assert_array_equal(loaded.predict_proba(paths), expected)
    with pytest.warns(UserWarning, match="running on the CPU"):
        loaded.explain(paths[:1])


def test_joblib_round_trip(fitted, bar_files, tmp_path):
    paths, _ = bar_files
    joblib.dump(fitted, tmp_path / "m.joblib")
    loaded = joblib.load(tmp_path / "m.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(paths), fitted.predict_proba(paths))


def test_user_backbone_is_not_trained_in_place(bar_data):
    from sklearn_protopnet.backbones import SmallCNN

    backbone = SmallCNN(width=8)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    tiny_classifier(backbone=backbone, joint_epochs=1).fit(*bar_data)
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k])


def test_validation_images_take_part_in_no_stage(bar_data, monkeypatch):
    from sklearn_protopnet import _training

    seen = {}  # the image indices each stage read

    def recording(name, function):
        def wrapper(module, dataset, *args, **kwargs):
            seen.setdefault(name, set()).update(dataset.indices.tolist())
            return function(module, dataset, *args, **kwargs)
        return wrapper

    for name in ("push_prototypes", "calibrate_batchnorm"):
        monkeypatch.setattr(_training, name, recording(name, getattr(_training, name)))
    init = _training.initialise_prototypes
    monkeypatch.setattr(_training, "initialise_prototypes",
                        lambda kind, module, dataset, *a, **k: (
                            seen.setdefault("init", set()).update(dataset.indices.tolist()),
                            init(kind, module, dataset, *a, **k))[1])
    net_fit = _training.ProtoPNetNet.partial_fit

    def sgd(self, dataset, *args, **kwargs):
        seen.setdefault("sgd", set()).update(dataset.indices.tolist())
        return net_fit(self, dataset, *args, **kwargs)

    monkeypatch.setattr(_training.ProtoPNetNet, "partial_fit", sgd)
    solve = _training.solve_last_layer

    def solving(S, *args, **kwargs):  # the last layer's features, however computed
        seen["last layer rows"] = len(S)
        return solve(S, *args, **kwargs)

    monkeypatch.setattr(_training, "solve_last_layer", solving)
    images, labels = bar_data
    clf = tiny_classifier(validation_fraction=0.25).fit(images, labels)
    epochs = [r for r in clf.history_ if r["stage"] in ("warm", "joint")]
    assert all("valid_acc" in r and "valid_loss" in r for r in epochs)
    train_set = seen["push_prototypes"]
    held_out = set(range(len(images))) - train_set
    assert len(held_out) == 10 and np.bincount(labels[sorted(held_out)]).tolist() == [5, 5]
    # no stage read a held-out image: calibration, initialisation, SGD, push
    for stage in ("calibrate_batchnorm", "init", "sgd"):
        assert seen[stage] <= train_set, stage
    assert held_out.isdisjoint(clf.prototype_source_index_.tolist())
    assert seen["last layer rows"] == 30
    # the last layer is optimal on the 30 training images' similarities only
    train_rows = sorted(train_set)
    S, W = clf.transform(images), clf.coef_

    def own_gradient(rows):
        P = np.exp(S[rows] @ W.T)
        P /= P.sum(axis=1, keepdims=True)
        G = (P - np.eye(2)[labels[rows]]).T @ S[rows] / len(rows) + clf.last_layer_l2 * W
        own = clf.classes_[:, None] == clf.prototype_class_[None, :]
        return np.abs(G[own]).max()

    assert own_gradient(train_rows) < 1e-4
    assert own_gradient(list(range(len(images)))) > 10 * own_gradient(train_rows)
    assert clf.history_[-1]["converged"]


@pytest.mark.parametrize("fraction, n, match", [
    (0.05, 20, "gives 1 validation and 19 training images"),
    (0.98, 20, "gives 20 validation and 0 training images"),
    (0.5, 3, "class 1 has 1"),
])
def test_an_impossible_validation_split_is_refused_before_decoding(bar_data, monkeypatch,
                                                                   fraction, n, match):
    from sklearn_protopnet import _training

    def fail(*args, **kwargs):
        raise AssertionError("images were decoded before the problem was detected")

    monkeypatch.setattr(_training, "decode_all", fail)
    images, labels = bar_data
    idx = np.r_[np.flatnonzero(labels == 0)[:n - n // 2], np.flatnonzero(labels == 1)[:n // 2]]
    with pytest.raises(ValueError, match=match):
        tiny_classifier(validation_fraction=fraction).fit(images[idx], labels[idx])


@pytest.mark.slow
def test_accuracy_on_digit_files(tmp_path):
    """Scikit-learn's digits as PNG files, a small CNN, a few epochs: >= 90%."""
    from sklearn.model_selection import train_test_split

    from sklearn_protopnet._demo import demo_classifier, write_digits

    paths, labels = write_digits(str(tmp_path))
    X_train, X_test, y_train, y_test = train_test_split(
        paths, labels, test_size=0.25, stratify=labels, random_state=0
    )
    clf = demo_classifier(verbose=0).fit(X_train, y_train)
    assert clf.score(X_test, y_test) >= 0.9



def test_untrained_batchnorm_is_calibrated_and_trained_batchnorm_left_alone(bar_data):
    from sklearn_protopnet._init import _uncalibrated_batchnorms
    from sklearn_protopnet.backbones import SmallCNN

    images, labels = bar_data
    fresh = SmallCNN(width=8)
    assert len(_uncalibrated_batchnorms(fresh)) == 3
    clf = tiny_classifier(backbone=fresh, warm_epochs=1, joint_epochs=0).fit(images, labels)
    bns = [m for m in clf.module_.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # warm-up only: the backbone never trained, yet its statistics are the data's
    assert not _uncalibrated_batchnorms(clf.module_.backbone)
    assert all(bn.running_var.mean() != 1 for bn in bns)

    pretrained = SmallCNN(width=8)
    for bn in (m for m in pretrained.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.fill_(0.25)
        bn.running_var.fill_(2.0)
    clf = tiny_classifier(backbone=pretrained, warm_epochs=1, joint_epochs=0).fit(images, labels)
    for bn in (m for m in clf.module_.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert torch.all(bn.running_mean == 0.25) and torch.all(bn.running_var == 2.0)
    assert "batchnorm_calibration" not in [r["stage"] for r in clf.history_]


def test_log_probabilities_stay_finite_where_the_softmax_underflows(fitted, bar_files):
    paths, _ = bar_files
    np.testing.assert_allclose(np.exp(fitted.predict_log_proba(paths)),
                               fitted.predict_proba(paths), rtol=1e-12, atol=1e-15)
    clf = copy.deepcopy(fitted)
    with torch.no_grad():
        clf.module_.last_layer.weight.mul_(1e4)  # logits thousands apart
    logits = clf.decision_function(paths[:2])
    assert (np.ptp(logits, axis=1) > 800).all()
    log_p = clf.predict_log_proba(paths[:2])
    assert np.isfinite(log_p).all()
    np.testing.assert_allclose(log_p, logits - logits.max(axis=1, keepdims=True), atol=1e-9)


@pytest.mark.parametrize("width, expected", [(8, 32), (64, 128)])
def test_auto_prototype_dim_is_the_backbone_depth_up_to_128(bar_data, width, expected):
    """SmallCNN(width) ends with 4 x width channels: 32 stay 32, 256 are
    reduced to the reference's 128; an int is taken as given."""
    from sklearn_protopnet.backbones import SmallCNN

    X, y = bar_data
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = SmallCNN(width=width)
    clf = tiny_classifier(backbone=backbone, prototype_dim="auto", warm_epochs=1,
                          joint_epochs=0).fit(X, y)
    assert clf.prototype_dim == "auto"
    assert tuple(clf.module_.prototypes.shape[:2]) == (clf.n_prototypes_, expected)
    assert clf.transform(X[:2]).shape == (2, clf.n_prototypes_)
    fixed = tiny_classifier(backbone=backbone, prototype_dim=12, warm_epochs=1,
                            joint_epochs=0).fit(X, y)
    assert fixed.module_.prototypes.shape[1] == 12


@pytest.mark.parametrize("lr", [0.0, 0.05])
def test_the_joint_stage_trains_the_last_layer_only_when_asked(bar_data, monkeypatch, lr):
    """With ``lr_last_layer=0`` (the reference) the convex solve after the joint
    stage starts from the untouched 1 / -0.5 weights; with a rate, the joint
    stage has moved them (and its loss has the off-class L1 term). The warm
    stage never trains the last layer."""
    from sklearn_protopnet import _training

    starts = []
    solve = _training.solve_last_layer

    def spy(S, y, own, l1, l2, W0, **kw):
        starts.append((own.copy(), W0.copy()))
        return solve(S, y, own, l1, l2, W0, **kw)

    monkeypatch.setattr(_training, "solve_last_layer", spy)
    images, labels = bar_data
    # warm-only: the last layer must stay frozen whatever the rate
    tiny_classifier(warm_epochs=1, joint_epochs=0, lr_last_layer=lr).fit(images, labels)
    own, W0 = starts.pop()
    np.testing.assert_array_equal(W0, np.where(own, 1.0, -0.5))
    tiny_classifier(lr_last_layer=lr, push_start=100).fit(images, labels)  # one solve, at the end
    (own, W0), = starts
    if lr == 0:
        np.testing.assert_array_equal(W0, np.where(own, 1.0, -0.5))
    else:
        assert np.abs(W0 - np.where(own, 1.0, -0.5)).max() > 1e-3
