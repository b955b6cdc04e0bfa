"""The HTML report: a summary that counts right, links that land, lazy images,
and (where Chromium is installed) what a real browser makes of it."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from sklearn_protopnet._report import report_html, write_report

from ._browser import CHROMIUM, Browser


class _Page(HTMLParser):
    """The ids, internal links, images and table rows of a page."""

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.images, self.rows = set(), [], [], {}
        self._table, self._row, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href", "").startswith("#"):
            self.links.append(attrs["href"][1:])
        if tag == "img":
            self.images.append(attrs)
        if tag == "table":
            self._table = attrs.get("class")
            self.rows.setdefault(self._table, [])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._table is not None:
            self.rows[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


@pytest.fixture(scope="module")
def explained(fitted, bar_files):
    """Twelve explained images with their true labels, two of them flipped so
    that the summary has wrong predictions to count."""
    paths, labels = bar_files
    chosen = list(range(0, len(paths), max(1, len(paths) // 12)))[:12]
    X = [paths[i] for i in chosen]
    y = np.array([labels[i] for i in chosen], dtype=object)
    predicted = fitted.predict(X)
    y[:2] = np.where(predicted[:2] == "horizontal", "vertical", "horizontal")  # wrong on purpose
    return fitted.explain(X, top_k=3), y, predicted


def test_summary_counts_and_accuracy(fitted, explained):
    explanations, y, predicted = explained
    text = report_html(fitted, explanations, y=y)
    correct = predicted == y
    assert (f"Accuracy on these images: {correct.mean():.3f} ({int(correct.sum())} of "
            f"{len(y)} correct)") in text
    page = _parse(text)
    header, *rows = page.rows["per-class"]
    assert header == ["class", "images", "predicted", "correct", "prototypes"]
    for label, row in zip(fitted.classes_, rows):
        assert row == [str(label), str(np.sum(y == label)), str(np.sum(predicted == label)),
                       str(np.sum(correct & (y == label))),
                       str(np.sum(fitted.prototype_class_ == label))]
    header, *index = page.rows["index"]
    assert len(index) == len(explanations)
    assert [r[2] for r in index] == [str(p) for p in predicted]
    assert [r[4] for r in index] == [str(t) for t in y]
    assert text.count("<tr class=wrong>") == int((~correct).sum())


def test_summary_without_labels(fitted, explained):
    explanations, _, predicted = explained
    text = report_html(fitted, explanations)
    assert "Accuracy" not in text
    header, *rows = _parse(text).rows["per-class"]
    assert header == ["class", "predicted", "prototypes"]
    assert [r[1] for r in rows] == [str(np.sum(predicted == c)) for c in fitted.classes_]


def test_every_link_lands_and_evidence_links_to_its_prototype(fitted, explained):
    explanations, y, _ = explained
    text = report_html(fitted, explanations, y=y)
    page = _parse(text)
    assert page.links and set(page.links) <= page.ids
    assert {f"prototype-{j}" for j in range(fitted.n_prototypes_)} <= page.ids
    sections = re.findall(r"<section id='image-(\d+)'>(.*?)</section>", text, flags=re.S)
    assert len(sections) == len(explanations)
    for (n, body), e in zip(sections, explanations):
        assert int(n) == explanations.index(e)
        linked = [int(j) for j in re.findall(r"href='#prototype-(\d+)'", body)]
        assert linked == [item.prototype for item in e.evidence]
    # each card links back to exactly the explanations whose evidence lists it
    for j in range(fitted.n_prototypes_):
        card = re.search(rf"<div class='card' id='prototype-{j}'>(.*?)</div>", text, re.S)
        back = [int(i) for i in re.findall(r"href='#image-(\d+)'", card.group(1))]
        assert back == [i for i, e in enumerate(explanations)
                        if j in [item.prototype for item in e.evidence]]


def test_images_are_embedded_and_lazy(fitted, explained):

    explanations, y, _ = explained
    page = _parse(report_html(fitted, explanations, y=y))
    assert len(page.images) == 2 * fitted.n_prototypes_ + len(explanations)
    for img in page.images:
        assert img["loading"] == "lazy" and img["class"] == "lazy" and "src" not in img
        data = img["data-src"]
        assert data.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))) as decoded:
            assert decoded.size == (int(img["width"]), int(img["height"]))


def test_labels_of_another_length_are_refused_before_writing(fitted, bar_files, tmp_path):
    paths, labels = bar_files
    out = tmp_path / "report.html"
    with pytest.raises(ValueError, match="y has 3 labels but the report explains 2 images"):
        write_report(fitted, paths[:2], out, y=labels[:3])
    assert not out.exists()


# ----------------------------------------------------------------------------
# in a real browser
# ----------------------------------------------------------------------------
# Which images the page's script has asked for (src set) and which the browser
# has decoded. The waits are in real time, with a bound: tests/_browser.py says
# why virtual time cannot do this.
_STATE = """(function () {
  var images = Array.prototype.slice.call(document.images);
  return {requested: images.map(function (i) { return i.hasAttribute('src'); }),
          decoded: images.map(function (i) { return i.complete && i.naturalWidth > 0; })};
})()"""

_WAIT = """new Promise(function (done) {
  var start = Date.now();
  (function poll() {
    var images = document.images;
    var img = images[%s];
    if ((img.complete && img.naturalWidth > 0) || Date.now() - start > 30000) done(true);
    else setTimeout(poll, 50);
  })();
})"""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian: chromium)")
def test_report_in_headless_chromium(fitted, explained, tmp_path):
    explanations, y, predicted = explained
    text = report_html(fitted, explanations, y=y)
    page_file = tmp_path / "report.html"
    page_file.write_text(text, encoding="utf-8")
    with Browser(width=1200, height=900) as browser:
        browser.open(page_file.as_uri())
        browser.evaluate(_WAIT % "0")
        top = browser.evaluate(_STATE)
        height = browser.evaluate("document.body.scrollHeight")
        summary = browser.evaluate("document.getElementById('summary').innerText")
        broken = browser.evaluate(
            "Array.prototype.slice.call(document.querySelectorAll('a[href^=\"#\"]'))"
            ".filter(function (a) {"
            " return !document.getElementById(a.getAttribute('href').slice(1)); }).length")
        shot = browser.screenshot()
        # a long file name (no spaces to break at) wraps inside its card
        spilled = browser.evaluate(
            "(function () { var card = document.querySelector('.card');"
            " card.querySelector('.muted').textContent = '/data/' + 'x'.repeat(200) + '.png';"
            " return card.scrollWidth > card.clientWidth; })()")
        browser.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        browser.evaluate(_WAIT % "images.length - 1")
        bottom = browser.evaluate(_STATE)

    correct = predicted == y
    assert f"Accuracy on these images: {correct.mean():.3f}" in summary
    assert broken == 0
    assert not spilled
    assert len(top["requested"]) == 2 * fitted.n_prototypes_ + len(explanations)
    # lazy: the pictures near the top are asked for and decoded, those several
    # screens away are not asked for; after scrolling to the end, the last are
    assert height > 5 * 900
    assert top["requested"][0] and top["decoded"][0]
    assert not top["requested"][-1] and not top["decoded"][-1]
    assert bottom["requested"][-1] and bottom["decoded"][-1]
    assert all(bottom["requested"][-3:])

    # the screenshot shows a page: dark text on white
    with Image.open(io.BytesIO(shot)) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape[:2] == (900, 1200)
    grey = pixels.mean(axis=2)
    assert (grey > 240).mean() > 0.5  # mostly white page
    assert (grey < 80).mean() > 0.002  # with text on it
    # the shaded rows of the wrong predictions: the summary rendered its table
    shaded = np.all(np.abs(pixels.astype(int) - (0xFD, 0xEC, 0xEA)) <= 2, axis=2)
    assert shaded.sum() > 1000


def test_the_estimator_passes_the_labels_to_the_summary(fitted, bar_files, tmp_path):
    paths, labels = bar_files
    out = fitted.report(paths[:4], tmp_path / "report.html", top_k=1, y=labels[:4])
    text = open(out, encoding="utf-8").read()
    accuracy = float(np.mean(fitted.predict(paths[:4]) == labels[:4]))
    assert "Accuracy" in text and f"{accuracy:.3f}" in text
    without = open(fitted.report(paths[:4], tmp_path / "plain.html", top_k=1),
                   encoding="utf-8").read()
    assert "Accuracy" not in without
