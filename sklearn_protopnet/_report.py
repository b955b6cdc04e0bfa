"""A self-contained HTML report: the prototype gallery and explanations of images.

Every picture is embedded as a base64 PNG, so the one file can be mailed,
archived or opened on a machine without the model or the images.
"""

from __future__ import annotations

import base64
import html
import io
import os

from PIL import Image

from ._explain import PrototypeParts
from ._geometry import box_rule_text
from ._render import evidence_text, prototype_gallery, scoring_sheet, sheet_text, total_text

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
section { margin-bottom: 3em; }
"""


def png_data_uri(image: Image.Image) -> str:
    """``data:image/png;base64,...`` of a PIL image."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _explanation_html(explanation, n: int) -> str:
    e = html.escape
    texts = sheet_text(explanation)
    rows = "".join(
        f"<tr><td>{item.prototype}</td><td>{e(str(item.prototype_class))}</td>"
        f"<td class=num>{item.similarity:.6g}</td><td class=num>{item.weight:.6g}</td>"
        f"<td class=num>{item.contribution:.6g}</td><td>{item.box}</td></tr>"
        for item in explanation.evidence
    )
    totals = "<br>".join(
        e(line) for line in total_text(explanation, explanation.explained_class,
                                       explanation.evidence)
    )
    sheet = png_data_uri(scoring_sheet(explanation))
    return (
        f"<section id='image-{n}'><h3>{e(str(explanation.name))}</h3>"
        + "".join(f"<p>{e(line)}</p>" for line in texts["header"])
        + f"<img alt='scoring sheet of {e(str(explanation.name))}' src='{sheet}'>"
        f"<table><tr><th>prototype</th><th>its class</th><th>similarity</th><th>weight</th>"
        f"<th>contribution</th><th>box (x0, y0, x1, y1)</th></tr>{rows}</table>"
        f"<p>{totals}</p>"
        + "".join(f"<!-- {e(' | '.join(evidence_text(i)))} -->" for i in explanation.evidence)
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


def report_html(estimator, explanations) -> str:
    """The report as one HTML string."""
    prototypes = PrototypeParts.of(estimator)
    gallery = png_data_uri(prototype_gallery(prototypes, estimator.classes_))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>ProtoPNet explanations</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>ProtoPNet explanations</h1>",
        f"<p>{estimator.n_prototypes_} prototypes, classes "
        f"{html.escape(', '.join(map(str, estimator.classes_)))}. Each logit is the sum over "
        "prototypes of similarity x weight. Boxes: "
        f"{html.escape(_box_rules(prototypes, explanations), quote=False)}, of the upsampled "
        "similarity "
        "map; a cross marks the peak cell, whose similarity is the prototype's score.</p>",
        "<h2>Prototypes</h2>",
        f"<img alt='prototype gallery' src='{gallery}'>",
        "<h2>Explanations</h2>",
    ]
    parts += [_explanation_html(x, n) for n, x in enumerate(explanations)]
    parts.append("</body></html>")
    return "\n".join(parts)


def _write_html(estimator, explanations, path) -> str:
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(report_html(estimator, explanations))
    return os.fspath(path)


def write_report(estimator, X, path, top_k: int = 5) -> str:
    """Explain X and write the HTML report to ``path``; return the path."""
    return _write_html(estimator, estimator.explain(X, top_k=top_k), path)


def write_sheets_and_report(estimator, explanations, folder, report_path) -> list[str]:
    """One scoring sheet PNG per explanation in ``folder``, named after its image
    (made unique when two images share a file name, and never the path of an
    explained image: ``--out`` may be the images' own folder), and the HTML
    report of them all at ``report_path``. Returns the sheets' paths, in order."""
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
    _write_html(estimator, explanations, report_path)
    return sheets


__all__ = ["report_html", "write_report", "write_sheets_and_report", "png_data_uri"]
