"""Pictures of explanations with Pillow only: scoring sheets, the gallery, heat maps.

Text drawn on a picture is produced by small formatting functions
(:func:`sheet_text`, :func:`gallery_caption`) so that the numbers a person
reads can be checked against the :class:`~._explain.Explanation` they come from.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ._geometry import box_rule_text as rule_text
from ._geometry import upsample_map

TILE = 112  # side of the image tiles in a sheet row, pixels
PAD = 8
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
BOX = (0, 200, 255)
PEAK = (255, 255, 255)  # the peak cell's cross, outlined in black
POSITIVE = (0, 120, 0)
NEGATIVE = (180, 0, 0)


def font(size: int = 13):
    """Pillow's default font at ``size``; the bitmap default on old Pillow."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no scalable default font
        return ImageFont.load_default()


def _text_height(f) -> int:
    x0, y0, x1, y1 = f.getbbox("Ag")
    return int(y1 + 3)


# --------------------------------------------------------------------------
# numbers as text
# --------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def evidence_text(item) -> list[str]:
    """The lines printed beside one evidence item."""
    return [
        f"prototype {item.prototype} (class {item.prototype_class})",
        f"{_fmt(item.similarity)} x {_fmt(item.weight)} = {_fmt(item.contribution)}",
        "similarity x weight = contribution",
    ]


def total_text(explanation, label, items) -> list[str]:
    """Lines closing a class's column: shown sum, the rest, and the logit."""
    logit = explanation.logit(label)
    shown = float(sum(item.contribution for item in items))
    rest = logit - shown
    n_rest = len(explanation.similarities) - len(items)
    lines = [f"sum of {len(items)} shown = {_fmt(shown)}"]
    if n_rest:
        lines.append(f"+ {n_rest} other prototypes = {_fmt(rest)}")
    lines.append(f"total = logit of {label} = {_fmt(logit)}")
    return lines


def sheet_text(explanation) -> dict:
    """Every piece of text on the scoring sheet, by place."""
    k = int(np.flatnonzero(explanation.classes == explanation.predicted)[0])
    return {
        "title": os.path.basename(str(explanation.name)) or str(explanation.name),
        "header": [
            f"predicted: {explanation.predicted} "
            f"(probability {explanation.probabilities[k]:.3f}, logit "
            f"{_fmt(explanation.logits[k])})",
            f"image {explanation.original_size[0]}x{explanation.original_size[1]} px; "
            f"boxes: {box_rule_text(explanation)}",
        ],
    }


# --------------------------------------------------------------------------
# image pieces
# --------------------------------------------------------------------------
def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8, blue (low) to red (high), jet-like."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.concatenate([r, g, b], axis=-1) * 255).astype(np.uint8)


def fit_tile(img: Image.Image, side: int = TILE) -> Image.Image:
    """``img`` scaled so that its longer side is ``side``.

    Small images are enlarged without smoothing so their pixels stay visible.
    """
    scale = side / max(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return img.resize(size, resample)


def box_rule_text(explanation) -> str:
    """The box rule as drawn: test-image and prototype boxes may differ when
    ``explain`` was given another rule or percentile than the fit's."""
    this = rule_text(explanation.box_rule, explanation.box_percentile)
    parts = explanation.prototypes
    that = rule_text(parts.box_rule, parts.percentile)
    return this if this == that else f"{this}; prototype boxes: {that}, set at fit"


def draw_peak(img: Image.Image, peak, original_size, colour=PEAK) -> Image.Image:
    """Mark ``peak`` (row, column), in pixels of an image of ``original_size``
    (width, height), with a small cross on ``img``, a scaled copy of it."""
    sx, sy = img.size[0] / float(original_size[0]), img.size[1] / float(original_size[1])
    x, y = (peak[1] + 0.5) * sx - 0.5, (peak[0] + 0.5) * sy - 0.5
    arm = max(3, round(min(img.size) / 16))
    draw = ImageDraw.Draw(img)
    for dx, dy in ((arm, 0), (0, arm)):
        draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=(0, 0, 0), width=3)
        draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=colour, width=1)
    return img


def draw_box(img: Image.Image, box, original_size, colour=BOX) -> Image.Image:
    """Draw ``box`` (x0, y0, x1, y1), in pixels of an image of ``original_size``
    (width, height), on ``img``, a scaled copy of that image. Each axis has
    its own scale: rounding makes the two differ for long, thin images."""
    sx, sy = img.size[0] / float(original_size[0]), img.size[1] / float(original_size[1])
    x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 60))
    draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=width)
    return img


def overlay(image: Image.Image, activation_map: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The image with its upsampled similarity map blended over it as a heat map."""
    a = activation_map.astype(np.float64)
    span = a.max() - a.min()
    a = (a - a.min()) / span if span > 0 else np.zeros_like(a)
    heat = Image.fromarray(heat_colours(a)).resize(image.size, Image.Resampling.BILINEAR)
    return Image.blend(image.convert("RGB"), heat, alpha)


def this_tile(tile: Image.Image, original_size: tuple[int, int], item) -> Image.Image:
    """The test image's tile with the evidence's heat map, box and peak cell.

    ``tile`` is the test image already scaled to a tile (``fit_tile``) and
    ``original_size`` its (width, height). The heat map is the similarity map
    upsampled straight to the tile's pixels (the real map, whatever the box
    rule), so that a photo's full-size map is never drawn; the box is the one
    in original pixels, and a cross marks the centre of the peak cell.
    """
    heat = upsample_map(item.similarity_map, item.geometry, (tile.size[1], tile.size[0]))
    boxed = draw_box(overlay(tile, heat), item.box, original_size)
    return draw_peak(boxed, item.peak, original_size)


def that_tiles(parts, j: int) -> tuple[Image.Image, Image.Image]:
    """The prototype's crop, and its box on the thumbnail of its source image."""
    crop = fit_tile(Image.fromarray(parts.crop[j]))
    tile = fit_tile(Image.fromarray(parts.thumbnail[j]))
    return crop, draw_box(tile, parts.box[j], parts.original_size[j])


def _paste_centred(canvas, img, x, y, side=TILE):
    canvas.paste(img, (x + (side - img.size[0]) // 2, y + (side - img.size[1]) // 2))


# --------------------------------------------------------------------------
# the scoring sheet
# --------------------------------------------------------------------------
def _column(explanation, label, items, tile, parts) -> Image.Image:
    f, fb = font(13), font(15)
    lh, lhb = _text_height(f), _text_height(fb)
    text_w = 250
    width = 3 * TILE + 4 * PAD + text_w
    row_h = TILE + PAD
    totals = total_text(explanation, label, items)
    height = lhb + PAD + 14 + len(items) * row_h + len(totals) * lh + 2 * PAD
    col = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(col)
    draw.text((PAD, 0), f"evidence for class {label}", font=fb, fill=INK)
    y = lhb + PAD
    for i, name in enumerate(("this (where)", "that (prototype)", "its source")):
        draw.text((PAD + i * (TILE + PAD), y), name, font=font(11), fill=MUTED)
    y += 14
    for item in items:
        _paste_centred(col, this_tile(tile, explanation.original_size, item), PAD, y)
        crop, source = that_tiles(parts, item.prototype)
        _paste_centred(col, crop, PAD + TILE + PAD, y)
        _paste_centred(col, source, PAD + 2 * (TILE + PAD), y)
        tx = 3 * (TILE + PAD) + PAD
        lines = evidence_text(item)
        colour = POSITIVE if item.contribution >= 0 else NEGATIVE
        draw.text((tx, y + 20), lines[0], font=f, fill=INK)
        draw.text((tx, y + 20 + lh), lines[1], font=fb, fill=colour)
        draw.text((tx, y + 20 + lh + lhb), lines[2], font=font(11), fill=MUTED)
        y += row_h
    for line in totals:
        draw.text((PAD, y), line, font=f, fill=INK)
        y += lh
    return col


def scoring_sheet(explanation, image: Image.Image | None = None) -> Image.Image:
    """The scoring sheet of one explanation as a PIL image.

    The test image; for the explained class and, beside it, the runner-up
    class, one row per evidence item: the box and heat map on the test image,
    the prototype's crop, its place in its source image, and
    "similarity x weight = contribution"; each column ends with the total,
    which is the logit.
    """
    if image is None:
        image = explanation.image()
    parts = explanation.prototypes
    texts = sheet_text(explanation)
    main = explanation.explained_class
    runner = explanation.runner_up
    tile = fit_tile(image)  # once: a photo is not rescaled for every row
    columns = [
        _column(explanation, main, explanation.evidence, tile, parts),
        _column(explanation, runner, explanation.evidence_for(runner), tile, parts),
    ]
    f, fb = font(13), font(18)
    lh, lhb = _text_height(f), _text_height(fb)
    shown = fit_tile(image, 2 * TILE)
    head_h = max(shown.size[1], lhb + len(texts["header"]) * lh) + 2 * PAD
    width = max(sum(c.size[0] for c in columns) + PAD, 2 * TILE + 600)
    height = head_h + max(c.size[1] for c in columns) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    sheet.paste(shown, (PAD, PAD))
    draw = ImageDraw.Draw(sheet)
    x = 2 * TILE + 3 * PAD
    draw.text((x, PAD), texts["title"], font=fb, fill=INK)
    for i, line in enumerate(texts["header"]):
        draw.text((x, PAD + lhb + i * lh), line, font=f, fill=INK)
    x = 0
    for c in columns:
        sheet.paste(c, (x, head_h))
        x += c.size[0]
    draw.line([(columns[0].size[0], head_h), (columns[0].size[0], height - PAD)],
              fill=(210, 210, 210), width=1)
    return sheet


# --------------------------------------------------------------------------
# the prototype gallery
# --------------------------------------------------------------------------
def gallery_caption(parts, j: int) -> list[str]:
    """The lines under prototype ``j`` in the gallery."""
    x0, y0, x1, y1 = (int(v) for v in parts.box[j])
    name = os.path.basename(parts.source_name(j)) or parts.source_name(j)
    return [f"prototype {j}", f"{name}"[:22], f"box {x0},{y0},{x1},{y1}"]


def prototype_gallery(parts, classes, per_line: int = 6) -> Image.Image:
    """Every prototype, grouped by class: its crop over its place in its source.

    ``parts`` is the :class:`~._explain.PrototypeParts` of a fitted model and
    ``classes`` its ``classes_``, in the order the blocks are drawn.
    """
    f, fb = font(11), font(16)
    lh, lhb = _text_height(f), _text_height(fb)
    cell_w = TILE + 2 * PAD
    cell_h = 2 * TILE + PAD + 3 * lh + PAD
    blocks = []
    for label in classes:
        js = np.flatnonzero(parts.prototype_class == label)
        lines = max(1, -(-len(js) // per_line))
        block = Image.new("RGB", (per_line * cell_w + PAD, lhb + PAD + lines * cell_h),
                          BACKGROUND)
        draw = ImageDraw.Draw(block)
        draw.text((PAD, 0), f"class {label}: {len(js)} prototypes", font=fb, fill=INK)
        for n, j in enumerate(js):
            x = PAD + (n % per_line) * cell_w
            y = lhb + PAD + (n // per_line) * cell_h
            crop, source = that_tiles(parts, int(j))
            _paste_centred(block, crop, x, y)
            _paste_centred(block, source, x, y + TILE + PAD // 2)
            for i, line in enumerate(gallery_caption(parts, int(j))):
                draw.text((x, y + 2 * TILE + PAD + i * lh), line, font=f,
                          fill=INK if i == 0 else MUTED)
        blocks.append(block)
    width = max(b.size[0] for b in blocks)
    gallery = Image.new("RGB", (width, sum(b.size[1] for b in blocks) + PAD), BACKGROUND)
    y = PAD
    for b in blocks:
        gallery.paste(b, (0, y))
        y += b.size[1]
    return gallery


__all__ = ["scoring_sheet", "prototype_gallery", "sheet_text", "evidence_text",
           "total_text", "gallery_caption", "overlay", "heat_colours"]
