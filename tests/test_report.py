"""The HTML report: a summary that counts right, links that land, lazy images,
and (where Chromium is installed) what a real browser makes of it."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from sklearn_protopnet._report import report_html, write_report


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
    import base64
    import io

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
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--window-size=1200,900"]

# After the page has loaded: what is shown at the top, which images have been
# decoded, then the same after scrolling to the end of the page.
_PROBE = """<script>
function state() {
  var images = Array.prototype.slice.call(document.images);
  return images.map(function (i) { return i.complete && i.naturalWidth > 0; });
}
window.addEventListener('load', function () {
  setTimeout(function () {
    var top = state();
    window.scrollTo(0, document.body.scrollHeight);
    setTimeout(function () {
      var out = document.createElement('pre');
      out.id = 'probe';
      var links = Array.prototype.slice.call(document.querySelectorAll('a[href^="#"]'));
      out.textContent = JSON.stringify({
        top: top, bottom: state(), height: document.body.scrollHeight,
        summary: document.getElementById('summary').innerText,
        broken: links.filter(function (a) {
          return !document.getElementById(a.getAttribute('href').slice(1)); }).length});
      document.body.appendChild(out);
    }, 500);
  }, 500);
});
</script></body>"""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian: chromium)")
def test_report_in_headless_chromium(fitted, explained, tmp_path):
    explanations, y, predicted = explained
    text = report_html(fitted, explanations, y=y)
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", _PROBE), encoding="utf-8")
    dom = subprocess.run([CHROMIUM, *BROWSER_FLAGS, "--virtual-time-budget=10000",
                          "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.S)
    assert found, "the page's probe did not run"
    state = json.loads(html.unescape(found.group(1)))
    correct = predicted == y
    assert f"Accuracy on these images: {correct.mean():.3f}" in state["summary"]
    assert state["broken"] == 0
    n = len(state["top"])
    assert n == 2 * fitted.n_prototypes_ + len(explanations)
    # lazy: the pictures near the top are decoded, those a page height away are not
    # yet; after scrolling to the end, the last sheets are
    assert state["height"] > 5 * 900
    assert state["top"][0] and not state["top"][-1]
    assert state["bottom"][-1]

    # the screenshot shows a page: dark text on white, and the pictures' colours
    plain, shot = tmp_path / "report.html", tmp_path / "report.png"
    plain.write_text(text, encoding="utf-8")
    subprocess.run([CHROMIUM, *BROWSER_FLAGS, "--virtual-time-budget=5000",
                    f"--screenshot={shot}", plain.as_uri()], capture_output=True, timeout=120)
    with Image.open(shot) as img:
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
