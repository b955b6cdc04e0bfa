"""A self-contained HTML report: a summary, the prototypes and explanations of images.

Every picture is embedded as a base64 PNG, so the one file can be mailed,
archived or opened on a machine without the model or the images. It is made
to be read for a few hundred images: a summary at the top (per-class counts,
and the accuracy when the true labels are given) whose index links to every
explanation, each evidence item linked to its prototype's card, each card
linked back to the explanations it appears in, and every image loaded lazily
(``loading="lazy"``), as the reader scrolls to it.
"""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np
from PIL import Image

from ._explain import PrototypeParts
from ._geometry import box_rule_text
from ._render import evidence_text, gallery_caption, scoring_sheet, sheet_text, that_tiles
from ._render import total_text as _total_text

_STYLE = """
body { font-family: sans-serif; margin: 0 2em 2em; color: #222; max-width: 1400px; }
nav { position: sticky; top: 0; background: #fff; padding: 0.6em 0;
      border-bottom: 1px solid #ddd; z-index: 1; }
nav a { margin-right: 1.5em; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.wrong td { background: #fdecea; }
section, #summary { margin-bottom: 3em; scroll-margin-top: 3em; }
.summary { font-size: 1.1em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 1.5em; }
.card { border: 1px solid #ddd; padding: 6px; width: 250px; font-size: 0.85em;
        scroll-margin-top: 3em; overflow-wrap: anywhere; }
h2, h3 { overflow-wrap: anywhere; }
.card:target, section:target { outline: 3px solid #0a7; }
h3 { scroll-margin-top: 3em; }
.card img { border: none; vertical-align: top; }
.muted { color: #666; }
.index-box { max-height: 32em; overflow-y: auto; display: inline-block; }
"""


def png_data_uri(image: Image.Image) -> str:
    """``data:image/png;base64,...`` of a PIL image."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _e(value) -> str:
    return html.escape(str(value))


def _img(image: Image.Image, alt: str) -> str:
    """An image that the page's script loads when it nears the viewport: a
    browser decodes every ``data:`` URI of a page at once otherwise (headless
    Chromium loaded all 312 images of a 36 MB report at page load, with
    ``loading='lazy'`` alone). Width and height keep the layout fixed."""
    return (f"<img class='lazy' loading='lazy' decoding='async' width='{image.size[0]}' "
            f"height='{image.size[1]}' alt='{_e(alt)}' data-src='{png_data_uri(image)}'>")


# Sets each image's src when it comes within two screens of the viewport; where
# IntersectionObserver is missing, all at once.
_LAZY_SCRIPT = """
(function () {
  var images = Array.prototype.slice.call(document.querySelectorAll('img.lazy'));
  function show(img) { if (img.dataset.src) { img.src = img.dataset.src; delete img.dataset.src; } }
  if (!('IntersectionObserver' in window)) { images.forEach(show); return; }
  var observer = new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (entry.isIntersecting) { show(entry.target); observer.unobserve(entry.target); }
    });
  }, {rootMargin: '200% 0px'});
  images.forEach(function (img) { observer.observe(img); });
})();
"""


def _proto_link(j: int) -> str:
    return f"<a href='#prototype-{j}'>{j}</a>"


def _explanation_html(explanation, n: int, true_label=None, has_label=False) -> str:
    texts = sheet_text(explanation)
    rows = "".join(
        f"<tr><td>{_proto_link(item.prototype)}</td><td>{_e(item.prototype_class)}</td>"
        f"<td class=num>{item.similarity:.6g}</td><td class=num>{item.weight:.6g}</td>"
        f"<td class=num>{item.contribution:.6g}</td><td>{item.box}</td></tr>"
        for item in explanation.evidence
    )
    totals = "<br>".join(
        _e(line) for line in _total_text(explanation, explanation.explained_class,
                                         explanation.evidence)
    )
    truth = ""
    if has_label:
        verdict = "correct" if explanation.predicted == true_label else "wrong"
        truth = f"<p>true class: {_e(true_label)} ({verdict})</p>"
    return (
        f"<section id='image-{n}'><h3>{n}. {_e(explanation.name)}</h3>"
        + "".join(f"<p>{_e(line)}</p>" for line in texts["header"])
        + truth
        + _img(scoring_sheet(explanation), f"scoring sheet of {explanation.name}")
        + f"<table><tr><th>prototype</th><th>its class</th><th class=num>similarity</th>"
        f"<th class=num>weight</th><th class=num>contribution</th>"
        f"<th>box (x0, y0, x1, y1)</th></tr>{rows}</table>"
        f"<p>{totals}</p><p><a href='#summary'>back to the summary</a></p>"
        + "".join(f"<!-- {_e(' | '.join(evidence_text(i)))} -->" for i in explanation.evidence)
        + "</section>"
    )


def _box_rules(parts, explanations) -> str:
    fitted = box_rule_text(parts.box_rule, parts.percentile)
    used = sorted({box_rule_text(e.box_rule, e.box_percentile) for e in explanations}
                  - {fitted})
    if used:
        fitted += (f" (for the test images' boxes where explain was given another rule: "
                   f"{'; '.join(used)})")
    return fitted


def _check_labels(y, explanations):
    if y is None:
        return None
    labels = np.asarray(y, dtype=object).ravel()
    if len(labels) != len(explanations):
        raise ValueError(f"y has {len(labels)} labels but the report explains "
                         f"{len(explanations)} images")
    return labels


def _summary_html(estimator, explanations, labels) -> str:
    """The counts per class, the accuracy with labels, and the index of images."""
    classes = estimator.classes_
    predicted = [e.predicted for e in explanations]
    n = len(explanations)
    lines = [f"{n} images explained with {estimator.n_prototypes_} prototypes of "
             f"{len(classes)} classes."]
    correct = None
    if labels is not None:
        correct = np.array([p == t for p, t in zip(predicted, labels)], dtype=bool)
        lines.append(f"Accuracy on these images: {correct.mean():.3f} "
                     f"({int(correct.sum())} of {n} correct).")
    head = "<tr><th>class</th>"
    head += "<th class=num>images</th>" if labels is not None else ""
    head += "<th class=num>predicted</th>"
    head += "<th class=num>correct</th>" if labels is not None else ""
    head += "<th class=num>prototypes</th></tr>"
    rows = []
    for k, label in enumerate(classes):
        cells = [f"<td><a href='#class-{k}'>{_e(label)}</a></td>"]
        if labels is not None:
            cells.append(f"<td class=num>{sum(t == label for t in labels)}</td>")
        cells.append(f"<td class=num>{sum(p == label for p in predicted)}</td>")
        if labels is not None:
            cells.append(f"<td class=num>{int(correct[labels == label].sum())}</td>")
        cells.append(f"<td class=num>{int(np.sum(estimator.prototype_class_ == label))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    index_head = ("<tr><th class=num>#</th><th>image</th><th>predicted</th>"
                  "<th class=num>probability</th>"
                  + ("<th>true class</th>" if labels is not None else "") + "</tr>")
    index_rows = []
    for i, e in enumerate(explanations):
        k = int(np.flatnonzero(e.classes == e.predicted)[0])
        wrong = labels is not None and not correct[i]
        index_rows.append(
            f"<tr{' class=wrong' if wrong else ''}><td class=num>{i}</td>"
            f"<td><a href='#image-{i}'>{_e(os.path.basename(str(e.name)) or e.name)}</a></td>"
            f"<td>{_e(e.predicted)}</td><td class=num>{e.probabilities[k]:.3f}</td>"
            + (f"<td>{_e(labels[i])}</td>" if labels is not None else "") + "</tr>")
    return (
        "<div id='summary' class='summary'><h2>Summary</h2>"
        + "".join(f"<p>{line}</p>" for line in lines)
        + f"<table class='per-class'>{head}{''.join(rows)}</table>"
        + "<h3>Images</h3>"
        + (f"<p class=muted>{int((~correct).sum())} wrong predictions are shaded.</p>"
           if labels is not None else "")
        + f"<div class='index-box'><table class='index'>{index_head}{''.join(index_rows)}"
        "</table></div></div>"
    )


def _prototypes_html(estimator, parts, explanations) -> str:
    """One card per prototype, grouped by class, each linking back to the
    explanations whose evidence lists it."""
    cited: dict[int, list[int]] = {}
    for i, e in enumerate(explanations):
        for item in e.evidence:
            cited.setdefault(int(item.prototype), []).append(i)
    weights = estimator.coef_
    blocks = []
    for k, label in enumerate(estimator.classes_):
        cards = []
        for j in np.flatnonzero(parts.prototype_class == label):
            j = int(j)
            crop, source = that_tiles(parts, j)
            caption = gallery_caption(parts, j)
            users = cited.get(j, [])
            links = ", ".join(f"<a href='#image-{i}'>{i}</a>" for i in users[:50])
            if len(users) > 50:
                links += f" and {len(users) - 50} more"
            cards.append(
                f"<div class='card' id='prototype-{j}'><b>prototype {j}</b> "
                f"(class {_e(label)}, weight {weights[k, j]:.4g})<br>"
                + _img(crop, f"prototype {j}") + " "
                + _img(source, f"source of prototype {j}")
                + f"<br><span class=muted>{_e(parts.source_name(j))}<br>{_e(caption[2])}"
                f"</span><br>in the evidence of: {links or 'none of these images'}</div>")
        blocks.append(f"<h3 id='class-{k}'>class {_e(label)}: {len(cards)} "
                      f"prototypes</h3><div class='cards'>{''.join(cards)}</div>")
    return "".join(blocks)


def report_html(estimator, explanations, y=None) -> str:
    """The report as one HTML string; ``y``, the true labels of the explained
    images, adds the accuracy and the correct counts to the summary."""
    labels = _check_labels(y, explanations)
    prototypes = PrototypeParts.of(estimator)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>ProtoPNet explanations</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<nav><a href='#summary'>Summary</a><a href='#prototypes'>Prototypes</a>"
        "<a href='#explanations'>Explanations</a></nav>",
        "<h1>ProtoPNet explanations</h1>",
        "<noscript><p><b>The pictures of this report are shown by its script: allow "
        "JavaScript for this file to see them.</b></p></noscript>",
        f"<p>{estimator.n_prototypes_} prototypes, classes "
        f"{html.escape(', '.join(map(str, estimator.classes_)))}. Each logit is the sum over "
        "prototypes of similarity x weight. Boxes: "
        f"{html.escape(_box_rules(prototypes, explanations), quote=False)}, of the upsampled "
        "similarity "
        "map; a cross marks the peak cell, whose similarity is the prototype's score.</p>",
        _summary_html(estimator, explanations, labels),
        "<h2 id='prototypes'>Prototypes</h2>",
        "<p class=muted>Each prototype is a patch of a training image: its crop, and its "
        "box on the whole image.</p>",
        _prototypes_html(estimator, prototypes, explanations),
        "<h2 id='explanations'>Explanations</h2>",
    ]
    parts += [_explanation_html(x, n, None if labels is None else labels[n],
                                labels is not None)
              for n, x in enumerate(explanations)]
    parts.append(f"<script>{_LAZY_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _write_html(estimator, explanations, path, y=None) -> str:
    text = report_html(estimator, explanations, y=y)  # first: bad labels write nothing
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return os.fspath(path)


def write_report(estimator, X, path, top_k: int = 5, y=None) -> str:
    """Explain X and write the HTML report to ``path``; return the path.

    ``y``, the true labels of X, adds the accuracy and per-class correct
    counts to the summary."""
    return _write_html(estimator, estimator.explain(X, top_k=top_k), path, y=y)


def write_sheets_and_report(estimator, explanations, folder, report_path, y=None) -> list[str]:
    """One scoring sheet PNG per explanation in ``folder``, named after its image
    (made unique when two images share a file name, and never the path of an
    explained image: ``--out`` may be the images' own folder), and the HTML
    report of them all at ``report_path``. Returns the sheets' paths, in order."""
    _check_labels(y, explanations)  # before any file is written
    os.makedirs(folder, exist_ok=True)
    inputs = {os.path.realpath(str(e.name)) for e in explanations}
    used, sheets = set(), []
    for explanation in explanations:
        stem = os.path.splitext(os.path.basename(str(explanation.name)))[0] or "image"
        name, n = stem, 1
        # the same file name in two folders, or the explained image itself
        while name in used or os.path.realpath(os.path.join(folder, f"{name}.png")) in inputs:
            n += 1
            name = f"{stem}-{n}"
        used.add(name)
        sheets.append(os.path.join(folder, f"{name}.png"))
        explanation.save(sheets[-1])
    _write_html(estimator, explanations, report_path, y=y)
    return sheets


__all__ = ["report_html", "write_report", "write_sheets_and_report", "png_data_uri"]
