"""Pictures: they open, have sensible sizes, and print the explanation's numbers."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from sklearn_protopnet._explain import _shrunk
from sklearn_protopnet._render import (
    BOX,
    evidence_text,
    fit_tile,
    gallery_caption,
    heat_colours,
    overlay,
    scoring_sheet,
    sheet_text,
    that_tiles,
    this_tile,
    total_text,
)


@pytest.fixture(scope="module")
def explanations(fitted, bar_files):
    paths, _ = bar_files
    return fitted.explain(paths[:3] + paths[-2:], top_k=3)


def _numbers(line):
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", line)]


def _half_last_digit(line):
    """Half a unit in the last printed digit of the line's last number."""
    token = re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", line)[-1]
    mantissa, _, exponent = token.partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 0.5 * 10.0 ** (-decimals + (int(exponent) if exponent else 0))


def test_sheet_text_is_the_explanation(explanations):
    for e in explanations:
        for item in e.evidence:
            lines = evidence_text(item)
            assert f"prototype {item.prototype} " in lines[0]
            sim, weight, contribution = _numbers(lines[1])
            assert sim == pytest.approx(item.similarity, rel=1e-3)
            assert weight == pytest.approx(item.weight, rel=1e-3)
            assert contribution == pytest.approx(item.contribution, rel=1e-3)
        totals = total_text(e, e.explained_class, e.evidence)
        assert _numbers(totals[0])[-1] == pytest.approx(
            sum(x.contribution for x in e.evidence), rel=1e-3)
        # shown + the rest = the logit, printed last
        assert _numbers(totals[-1])[-1] == pytest.approx(e.logit(), rel=1e-3)
        rest = _numbers(totals[1])[-1]
        # each printed number is rounded to its last printed digit
        rounding = _half_last_digit(totals[0]) + _half_last_digit(totals[1])
        assert abs(_numbers(totals[0])[-1] + rest - e.logit()) <= rounding + 1e-6
        header = sheet_text(e)["header"][0]
        assert f"predicted: {e.predicted} " in header
        k = int(np.flatnonzero(e.classes == e.predicted)[0])
        assert _numbers(header)[0] == pytest.approx(e.probabilities[k], abs=1e-3)


def test_scoring_sheet_png(explanations, tmp_path):
    e = explanations[0]
    path = tmp_path / "sheet.png"
    e.save(path)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        width, height = img.size
    # the header, and one row of tiles per evidence item in each of two columns
    assert 800 <= width <= 1600
    assert height >= 3 * 112 + 200
    png = e._repr_png_()
    assert png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).size == (width, height)


def _places(sheet, tile):
    """(row, column) of every place where ``tile`` appears in ``sheet``, pixel for pixel."""
    th, tw = tile.shape[:2]
    corner = (sheet[: sheet.shape[0] - th + 1, : sheet.shape[1] - tw + 1] == tile[0, 0]).all(2)
    return [(r, c) for r, c in zip(*np.nonzero(corner))
            if np.array_equal(sheet[r : r + th, c : c + tw], tile)]


def test_sheet_draws_the_boxes(explanations, monkeypatch):
    """The box drawn on the test image tile is where the evidence box is: the
    sheet differs from one drawn without these boxes exactly there."""
    from sklearn_protopnet import _render
    from sklearn_protopnet._geometry import upsample_map

    e = explanations[0]
    image = Image.new("RGB", e.original_size, (0, 0, 0))
    # the peak cell's cross is tested on its own below
    monkeypatch.setattr(_render, "draw_peak", lambda img, *args, **kwargs: img)
    sheet = np.asarray(scoring_sheet(e, image=image)).astype(int)

    def unboxed(tile, image_size, item):  # the test image's tile with its heat map only
        return overlay(tile, upsample_map(item.similarity_map, item.geometry,
                                          (tile.size[1], tile.size[0])))

    monkeypatch.setattr(_render, "this_tile", unboxed)
    plain = np.asarray(scoring_sheet(e, image=image)).astype(int)
    changed = (sheet != plain).any(axis=2)
    assert changed.any(), "the sheet without the test image's boxes is the same sheet"
    assert (np.abs(sheet[changed] - BOX).sum(axis=1) < 10).all()  # drawn in the box colour
    tile = fit_tile(image)
    sx, sy = tile.size[0] / e.original_size[0], tile.size[1] / e.original_size[1]
    found = np.zeros_like(changed)
    for item in e.evidence + e.evidence_for(e.runner_up):  # the sheet's two columns
        places = _places(plain, np.asarray(unboxed(tile, e.original_size, item)).astype(int))
        assert places, "the evidence's tile is not on the sheet"
        x0, y0, x1, y1 = item.box
        for r, c in places:
            here = changed[r : r + tile.size[1], c : c + tile.size[0]]
            rows, cols = np.flatnonzero(here.any(axis=1)), np.flatnonzero(here.any(axis=0))
            assert len(rows), f"no box drawn on the tile of prototype {item.prototype}"
            # the outline's extent on the tile is the evidence box, scaled
            assert abs(cols[0] - x0 * sx) <= 1 and abs(cols[-1] + 1 - x1 * sx) <= 1
            assert abs(rows[0] - y0 * sy) <= 1 and abs(rows[-1] + 1 - y1 * sy) <= 1
            found[r : r + tile.size[1], c : c + tile.size[0]] |= here
    # and nothing else changed: no box drawn elsewhere
    np.testing.assert_array_equal(found, changed)


def test_the_peak_cell_is_marked_with_a_cross_at_its_centre(explanations, monkeypatch):
    from sklearn_protopnet import _render

    for e in explanations:
        tile = fit_tile(Image.new("RGB", e.original_size, (128, 128, 128)))
        sx, sy = tile.size[0] / e.original_size[0], tile.size[1] / e.original_size[1]
        for item in e.evidence:
            marked = np.asarray(_render.this_tile(tile, e.original_size, item)).astype(int)
            with monkeypatch.context() as m:
                m.setattr(_render, "draw_peak", lambda img, *args, **kwargs: img)
                plain = np.asarray(_render.this_tile(tile, e.original_size, item)).astype(int)
            changed = (marked != plain).any(axis=2)
            rows, cols = np.nonzero(changed)
            assert len(rows), "no cross drawn"
            # white on black, centred on the peak cell's centre
            colours = {tuple(v) for v in marked[changed]}
            assert colours <= {(255, 255, 255), (0, 0, 0)}
            r, c = item.peak
            assert abs(np.median(rows) - ((r + 0.5) * sy - 0.5)) <= 1.5
            assert abs(np.median(cols) - ((c + 0.5) * sx - 0.5)) <= 1.5
            # at the map's strongest cell
            assert item.similarity_map[item.location] == item.similarity_map.max()


def test_prototype_box_on_a_long_thin_source_is_drawn_where_it_is():
    """The source thumbnail's two axes are scaled separately: for a 15 x 1000
    source the box over its bottom fifth is drawn over the tile's bottom fifth."""
    from types import SimpleNamespace

    source = Image.new("RGB", (15, 1000))
    parts = SimpleNamespace(crop=[np.zeros((8, 8, 3), np.uint8)],
                            thumbnail=[np.asarray(_shrunk(source, 160))],
                            box=np.array([[0, 800, 15, 1000]]),
                            original_size=np.array([[15, 1000]]))
    _, tile = that_tiles(parts, 0)
    rows = np.flatnonzero((np.abs(np.asarray(tile).astype(int) - BOX).sum(axis=2) < 10).any(1))
    height = tile.size[1]
    assert abs(rows[0] - 0.8 * height) <= 1.5 and rows[-1] >= height - 2


def test_heat_map_is_drawn_at_the_tile_size_where_the_box_is(explanations, monkeypatch):
    """The tile's heat map is the similarity map upsampled to the tile, and its
    peak lies inside the box drawn from the original-size map."""
    from sklearn_protopnet import _render
    from sklearn_protopnet._geometry import upsample_map

    monkeypatch.setattr(_render, "draw_peak", lambda img, *args, **kwargs: img)  # see above

    for e in explanations:
        item = e.evidence[0]
        tile = fit_tile(Image.new("RGB", e.original_size, (128, 128, 128)))
        drawn = np.asarray(this_tile(tile, e.original_size, item)).astype(int)
        heat = upsample_map(item.similarity_map, item.geometry, (tile.size[1], tile.size[0]))
        expected = np.asarray(overlay(tile, heat)).astype(int)
        outline = np.abs(drawn - BOX).sum(axis=2) < 10
        assert outline.any()
        np.testing.assert_array_equal(drawn[~outline], expected[~outline])
        sx, sy = tile.size[0] / e.original_size[0], tile.size[1] / e.original_size[1]
        x0, y0, x1, y1 = item.box
        r, c = np.unravel_index(np.argmax(heat), heat.shape)
        assert x0 * sx - 1 <= c + 0.5 <= x1 * sx + 1 and y0 * sy - 1 <= r + 0.5 <= y1 * sy + 1


def test_overlay_and_colours():
    colours = heat_colours(np.array([0.0, 1.0]))
    assert colours[0, 2] > colours[0, 0] and colours[1, 0] > colours[1, 2]  # blue to red
    img = Image.new("RGB", (40, 20), (128, 128, 128))
    heat = np.zeros((20, 40))
    heat[5:10, 30:35] = 1.0
    out = np.asarray(overlay(img, heat)).astype(int)
    assert out.shape == (20, 40, 3)
    assert out[7, 32, 0] > out[7, 5, 0]  # red where the map is high


def test_gallery(fitted, tmp_path):
    img = fitted.prototype_gallery(tmp_path / "gallery.png")
    with Image.open(tmp_path / "gallery.png") as saved:
        assert saved.size == img.size
    # one block per class, each holding its prototypes
    assert img.size[1] >= len(fitted.classes_) * 2 * 112
    for j in range(fitted.n_prototypes_):
        caption = gallery_caption(fitted_parts(fitted), j)
        assert caption[0] == f"prototype {j}"
        assert tuple(_numbers(caption[2])) == tuple(fitted.prototype_box_[j])


def fitted_parts(fitted):
    from sklearn_protopnet._explain import PrototypeParts

    return PrototypeParts.of(fitted)


def test_html_report_is_self_contained(fitted, bar_files, tmp_path):
    paths, _ = bar_files
    out = fitted.report(paths[:2], tmp_path / "sub" / "report.html", top_k=2)
    text = open(out, encoding="utf-8").read()
    assert "<html" in text and text.count("<section") == 2
    sources = re.findall(r"data-src='([^']+)'", text)
    # each prototype's crop and source, and two sheets; nothing outside the file
    assert len(sources) == 2 * fitted.n_prototypes_ + 2
    assert not re.search(r"""\ssrc=['"]""", text)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    for path in paths[:2]:
        assert path in text
