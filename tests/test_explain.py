"""Explanations: the logit identity, boxes in original pixels, portability."""

import os
import shutil

import joblib
import numpy as np
import pytest
import torch
from PIL import Image

from sklearn_protopnet._explain import Evidence, Explanation
from sklearn_protopnet._geometry import CellGeometry
from sklearn_protopnet.backbones import SmallCNN

from .conftest import make_bar_images, tiny_classifier, write_pngs


@pytest.fixture(scope="module")
def new_images(tmp_path_factory):
    """Images the model never saw: new bars saved as 50x30 (non-square) PNGs."""
    images, labels = make_bar_images(4, seed=7)
    folder = str(tmp_path_factory.mktemp("new"))
    paths = []
    for i, img in enumerate(images):
        path = os.path.join(folder, f"wide{i}.png")
        Image.fromarray(img).resize((50, 30), Image.Resampling.NEAREST).save(path)
        paths.append(path)
    return paths


def test_contributions_add_up_to_the_logits(fitted, new_images):
    logits = fitted.decision_function(new_images)
    sims = fitted.transform(new_images)
    proba = fitted.predict_proba(new_images)
    W = fitted.coef_
    explanations = fitted.explain(new_images, top_k=None, classes="all")
    assert len(explanations) == len(new_images)
    for i, e in enumerate(explanations):
        assert isinstance(e, Explanation)
        np.testing.assert_allclose(e.logits, logits[i], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(e.similarities, sims[i], rtol=1e-6, atol=1e-6)
        assert e.predicted == fitted.classes_[np.argmax(logits[i])]
        assert e.explained_class == e.predicted
        np.testing.assert_allclose(e.probabilities, proba[i],
                                   rtol=1e-5)
        assert set(e.evidence_by_class) == set(fitted.classes_)
        for label, items in e.evidence_by_class.items():
            k = int(np.flatnonzero(fitted.classes_ == label)[0])
            assert sorted(item.prototype for item in items) == list(range(fitted.n_prototypes_))
            total = sum(item.contribution for item in items)
            np.testing.assert_allclose(total, logits[i, k], rtol=1e-12, atol=1e-12)
            contributions = [item.contribution for item in items]
            assert contributions == sorted(contributions, reverse=True)
            for item in items:
                assert isinstance(item, Evidence)
                j = item.prototype
                assert item.explained_class == label
                assert item.prototype_class == fitted.prototype_class_[j]
                np.testing.assert_allclose(item.similarity, sims[i, j], rtol=1e-6, atol=1e-6)
                assert item.weight == pytest.approx(W[k, j], rel=1e-12)
                assert item.contribution == pytest.approx(item.similarity * item.weight,
                                                          rel=1e-12)
                # the pooled similarity is the peak of the similarity map
                assert item.similarity_map.max() == pytest.approx(item.similarity, rel=1e-5)


def test_top_k_and_class_options(fitted, new_images):
    full = fitted.explain(new_images[:2], top_k=None)
    top = fitted.explain(new_images[:2], top_k=2)
    for a, b in zip(full, top):
        assert [x.prototype for x in b.evidence] == [x.prototype for x in a.evidence[:2]]
        assert list(b.evidence_by_class) == [b.predicted]
    other = fitted.classes_[1]
    (e,) = fitted.explain(new_images[:1], top_k=3, classes=other)
    assert e.explained_class == other and len(e.evidence) == 3
    assert all(x.explained_class == other for x in e.evidence)
    assert e.runner_up != other
    assert e.evidence_for(other) is e.evidence
    np.testing.assert_allclose(
        sum(x.contribution for x in e.evidence_for(e.runner_up, top_k=None)),
        e.logit(e.runner_up), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="unknown class"):
        fitted.explain(new_images[:1], classes="no such class")
    with pytest.raises(ValueError, match="a class label must be a single value"):
        e.logit(list(fitted.classes_[::-1]))  # not matched element by element
    with pytest.raises(ValueError, match="top_k"):
        fitted.explain(new_images[:1], top_k=0)


def test_boxes_are_in_original_pixels(fitted, new_images):
    """The model sees 16x16; boxes and maps are on the 50x30 image the user sees."""
    for e in fitted.explain(new_images, top_k=None):
        assert e.original_size == (50, 30)
        for item in e.evidence:
            x0, y0, x1, y1 = item.box
            assert 0 <= x0 < x1 <= 50 and 0 <= y0 < y1 <= 30
            assert item.activation_map.shape == (30, 50)
            # the map's peak, in original pixels, lies in the box
            r, c = np.unravel_index(np.argmax(item.activation_map), (30, 50))
            assert x0 <= c < x1 and y0 <= r < y1
    # the box rule on a hand-made map whose boxes are known: one latent cell per
    # original pixel, so the upsampled map is the map itself; 75 pixels (5%) at
    # 1, 50 at 0.5, the rest 0
    cell_map = np.zeros((30, 50))
    cell_map[5:10, 20:35] = 1.0
    cell_map[20:25, 0:10] = 0.5
    geometry = CellGeometry(image_size=(30, 50), feature_map_shape=(30, 50), stride=(1.0, 1.0),
                            offset=(0.0, 0.0), receptive_field=(1, 1))

    def evidence(percentile, rule="percentile", location=(5, 20)):
        return Evidence(prototype=0, prototype_class=0, explained_class=0, similarity=1.0,
                        weight=1.0, contribution=1.0, location=location,
                        similarity_map=cell_map, original_size=(50, 30), geometry=geometry,
                        percentile=percentile, box_rule=rule)

    np.testing.assert_array_equal(evidence(95).activation_map, cell_map)
    assert evidence(95).box == (20, 5, 35, 10)  # the pixels at 1 only
    assert evidence(92).box == (0, 5, 35, 25)  # the 92nd percentile is 0.5: both blocks
    assert evidence(50).box == (0, 0, 50, 30)  # the median is 0: every pixel
    # the peak rule keeps the region connected to the peak cell: the second
    # block never enlarges the box, whatever the percentile lets in
    assert evidence(95, "peak").box == (20, 5, 35, 10)
    assert evidence(92, "peak").box == (20, 5, 35, 10)
    assert evidence(50, "peak").box == (0, 0, 50, 30)  # all one region at the median
    assert evidence(92, "peak", location=(7, 30)).peak == (7, 30)
    # anchored at the peak cell: a peak in the other block takes that block
    assert evidence(92, "peak", location=(22, 3)).box == (0, 20, 10, 25)


def test_boxes_follow_exif_orientation(fitted, tmp_path):
    """A JPEG stored 40 wide x 20 high with 'rotate 90' shows as 20 x 40."""
    img = Image.fromarray(make_bar_images(1, seed=3)[0][0]).convert("RGB").resize((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = str(tmp_path / "rotated.jpg")
    img.save(path, exif=exif)
    (e,) = fitted.explain([path], top_k=None)
    assert e.original_size == (20, 40)
    for item in e.evidence:
        x0, y0, x1, y1 = item.box
        assert 0 <= x0 < x1 <= 20 and 0 <= y0 < y1 <= 40
        assert item.activation_map.shape == (40, 20)


@pytest.mark.parametrize("rule", ["percentile", "peak"])
def test_box_percentile(fitted, new_images, rule):
    wide = fitted.explain(new_images[:2], top_k=None, box_percentile=50, box_rule=rule)
    narrow = fitted.explain(new_images[:2], top_k=None, box_percentile=99, box_rule=rule)
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    for a, b in zip(wide, narrow):
        width, height = a.original_size
        for p, q in zip(a.evidence, b.evidence):
            assert p.prototype == q.prototype
            if rule == "percentile":
                # at least half the pixels are >= the median, all inside the wide box
                assert area(p.box) >= width * height / 2
            # (the peak rule's region is the part of that half connected to the
            # peak: it can be smaller, but the nesting below holds for both)
            # the top 1% are among the top half: the narrow box lies in the wide one,
            # and is smaller
            assert p.box[0] <= q.box[0] and p.box[1] <= q.box[1]
            assert q.box[2] <= p.box[2] and q.box[3] <= p.box[3]
            assert area(q.box) < area(p.box)
        assert a.box_percentile == 50 and b.box_percentile == 99


def test_one_box_rule_for_prototypes_and_test_images(fitted, new_images):
    """explain's default rule and percentile are the fit's, those the prototypes'
    boxes were drawn with, even after set_params; another is stated as such;
    another rule without a percentile takes that rule's "auto" one."""
    import copy

    from sklearn_protopnet._render import sheet_text

    # "auto" with the peak rule: 90
    assert (fitted.box_percentile, fitted.box_rule, fitted.box_percentile_) == ("auto", "peak", 90)
    changed = copy.deepcopy(fitted).set_params(box_percentile=50)
    (default,) = changed.explain(new_images[:1], top_k=3)
    (same,) = fitted.explain(new_images[:1], top_k=3)
    assert [e.box for e in default.evidence] == [e.box for e in same.evidence]
    peak90 = "peak rule, region >= 90th percentile around the peak cell (+)"
    assert sheet_text(default)["header"][1].endswith(peak90)
    assert "set at fit" not in sheet_text(default)["header"][1]
    (other,) = fitted.explain(new_images[:1], top_k=3, box_percentile=50)
    assert sheet_text(other)["header"][1].endswith(
        "region >= 50th percentile around the peak cell (+); prototype boxes: "
        f"{peak90}, set at fit")
    (paper,) = fitted.explain(new_images[:1], top_k=3, box_rule="percentile")
    assert sheet_text(paper)["header"][1].endswith(
        "percentile rectangle (paper), all pixels >= 95th percentile; prototype boxes: "
        f"{peak90}, set at fit")
    (auto,) = fitted.explain(new_images[:1], top_k=3, box_rule="percentile",
                             box_percentile="auto")
    assert [e.box for e in auto.evidence] == [e.box for e in paper.evidence]
    # at one percentile, the paper's rectangle holds every pixel the peak
    # rule's region holds
    (paper90,) = fitted.explain(new_images[:1], top_k=3, box_rule="percentile",
                                box_percentile=90)
    for a, b in zip(paper90.evidence, same.evidence):
        assert a.box[0] <= b.box[0] and a.box[1] <= b.box[1]
        assert a.box[2] >= b.box[2] and a.box[3] >= b.box[3]
    from sklearn_protopnet._report import report_html

    escaped = peak90.replace(">", "&gt;")
    assert (f"{escaped} (for the test images' boxes where explain was given another rule: "
            "peak rule, region &gt;= 50th percentile") in report_html(fitted, [same, other])
    assert f"Boxes: {escaped}, of the upsampled" in report_html(fitted, [same])


def test_prototype_that_data(fitted, bar_files):
    paths, _ = bar_files
    m = fitted.n_prototypes_
    assert fitted.prototype_box_.shape == (m, 4)
    assert fitted.prototype_original_size_.shape == (m, 2)
    assert len(fitted.prototype_crop_) == len(fitted.prototype_source_thumbnail_) == m
    for j in range(m):
        i = fitted.prototype_source_index_[j]
        assert fitted.prototype_source_path_[j] == paths[i]
        x0, y0, x1, y1 = fitted.prototype_box_[j]
        w, h = fitted.prototype_original_size_[j]
        assert (w, h) == (16, 16)
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        crop = fitted.prototype_crop_[j]
        assert crop.dtype == np.uint8 and crop.shape == (y1 - y0, x1 - x0, 3)
        # the crop is the source image's pixels inside the box
        source = np.asarray(Image.open(paths[i]).convert("RGB"))
        np.testing.assert_array_equal(crop, source[y0:y1, x0:x1])
        # the box is where the prototype fits its own source image best
        (e,) = fitted.explain([paths[i]], top_k=None, classes=fitted.prototype_class_[j])
        item = next(x for x in e.evidence if x.prototype == j)
        assert item.box == tuple(fitted.prototype_box_[j])


def test_explain_and_render_without_training_files(tmp_path, bar_data):
    """Pickle, delete the training images, load, explain and draw other images."""
    images, labels = bar_data
    train = write_pngs(str(tmp_path / "train"), images)
    clf = tiny_classifier(joint_epochs=1).fit(train, labels)
    joblib.dump(clf, tmp_path / "model.joblib")
    shutil.rmtree(tmp_path / "train")
    loaded = joblib.load(tmp_path / "model.joblib")
    other = write_pngs(str(tmp_path / "other"), make_bar_images(2, seed=11)[0])
    explanations = loaded.explain(other, top_k=3)
    assert all(not os.path.exists(p) for p in loaded.prototype_source_path_)
    explanations[0].save(tmp_path / "sheet.png")
    loaded.prototype_gallery(tmp_path / "gallery.png")
    loaded.report(other, tmp_path / "report.html")
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size[0] > 300
    assert os.path.getsize(tmp_path / "report.html") > 1000


def test_array_input_has_no_source_path(bar_data):
    images, labels = bar_data
    clf = tiny_classifier(joint_epochs=1).fit(images, labels)
    assert clf.prototype_source_path_ == [None] * clf.n_prototypes_
    (e,) = clf.explain(images[:1], top_k=2)
    assert e.name == "X[0]" and e.original_size == (16, 16)
    assert e._repr_png_().startswith(b"\x89PNG")


def _planted_motif_fit(seed: int, **settings):
    """(model, training motif centres, test images, labels, motif centres):
    the planted-motif benchmark's model of one seed."""
    from sklearn_protopnet._synthetic import make_motif_images

    X, y, centres = make_motif_images(100, seed=seed)
    X_test, y_test, test_centres = make_motif_images(20, seed=100 + seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = SmallCNN(width=8)
    clf = tiny_classifier(backbone=backbone, image_size=32, prototypes_per_class=2,
                          prototype_dim=16, warm_epochs=2, joint_epochs=20, push_start=100,
                          random_state=seed, **settings).fit(X, y)
    return clf, centres, X_test, y_test, test_centres


def _local_box_hits(clf, X_test, centres) -> list[bool]:
    """Per test image: the top evidence box holds the motif's centre and
    covers at most a quarter of the 32 px image."""
    hits = []
    for e, (cx, cy) in zip(clf.explain(X_test, top_k=1), centres):
        x0, y0, x1, y1 = e.evidence[0].box
        hits.append(x0 <= cx < x1 and y0 <= cy < y1 and (x1 - x0) * (y1 - y0) <= 32 * 32 / 4)
    return hits


@pytest.mark.slow
def test_prototypes_and_top_evidence_find_a_planted_motif():
    """The class evidence is an 8 px motif among distractors both classes share.

    With the small-data settings the docs advise (separation_coef=0.4, a
    constant joint learning rate), every prototype must end on a motif patch
    and the top evidence box must hold the motif, locally (at most a quarter
    of the image), in at least 80% of the test images. The rate is estimated
    on the 80 test images of two seeds, the hardest of five (3: 0.78 alone)
    and a typical one (4: 0.95); the reference's costs and schedule reach 0.50
    and 0.60 on them (benchmarks/planted_motif.py, table in
    docs/explanations.md).
    """
    from sklearn_protopnet._synthetic import MOTIF

    hits = []
    for seed in (3, 4):
        clf, centres, X_test, y_test, test_centres = _planted_motif_fit(
            seed, separation_coef=0.4, joint_lr_gamma=1.0, joint_lr_schedule="step",
            lr_backbone=3e-4)
        stride = clf.cell_geometry_.stride
        for i, (r, c) in zip(clf.prototype_source_index_, clf.prototype_location_):
            cx, cy = centres[i]
            assert abs(c * stride[1] + stride[1] / 2 - cx) <= MOTIF
            assert abs(r * stride[0] + stride[0] / 2 - cy) <= MOTIF
        assert clf.score(X_test, y_test) >= 0.95
        hits += _local_box_hits(clf, X_test, test_centres)
    assert np.mean(hits) >= 0.8


@pytest.mark.slow
def test_with_two_classes_the_default_separation_keeps_the_top_evidence_on_the_motif():
    """With the reference's separation weight, seed 3's plus prototypes drift
    off the plus (ROC AUC 0.68 and 0.82, docs/explanations.md) and the top
    evidence of every plus image points beside it (0.35 of the test images
    point at the motif). The default for two classes (half the cluster
    weight) keeps the evidence on the motif: seeds 3 and 4 point at it in
    0.90 and 1.00 of the test images with a 2 px tolerance
    (benchmarks/planted_motif.py)."""
    from sklearn_protopnet import pointing_game
    from sklearn_protopnet._synthetic import MOTIF

    pointing, hits = [], []
    for seed in (3, 4):
        clf, _, X_test, y_test, centres = _planted_motif_fit(seed)
        assert clf.separation_coef == "auto" and clf.auto_values_["separation_coef"] == 0.4
        assert clf.score(X_test, y_test) >= 0.95
        boxes = np.concatenate([centres - MOTIF / 2, centres + MOTIF / 2], axis=1)
        pointing.extend(pointing_game(clf, X_test, boxes, tolerance=2).hits[:, 0])
        hits += _local_box_hits(clf, X_test, centres)
    assert np.mean(pointing) >= 0.85 and np.mean(hits) >= 0.8


@pytest.mark.slow
def test_among_decoys_a_peak_box_covers_one_object_where_the_paper_rectangle_spans_several():
    """A class is a (shape, colour) pair; each image also holds a decoy of its
    colour and one of its shape, where a prototype's map has second peaks."""
    from sklearn_protopnet._synthetic import make_decoy_images

    X, y, parts, decoys = make_decoy_images(20, size=40, seed=5)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        backbone = SmallCNN(width=16)
    clf = tiny_classifier(backbone=backbone, image_size=40, prototypes_per_class=3,
                          prototype_dim=32, warm_epochs=2, joint_epochs=6, push_start=100,
                          random_state=5).fit(X, y)

    def objects_touched(box, i):
        x0, y0, x1, y1 = box
        return sum(not (x1 <= b[0] or b[2] <= x0 or y1 <= b[1] or b[3] <= y0)
                   for b in [parts[i], *decoys[i]])

    spans = 0
    for rule in ("peak", "percentile"):
        for i, e in enumerate(clf.explain(X, top_k=1, box_rule=rule)):
            box = e.evidence[0].box
            area = (box[2] - box[0]) * (box[3] - box[1]) / (40 * 40)
            if rule == "peak":
                assert objects_touched(box, i) <= 1 and area <= 0.25, (i, box)
            else:
                spans += objects_touched(box, i) >= 2
    assert spans >= len(X) // 4  # the decoys do pull the paper's rectangle apart
