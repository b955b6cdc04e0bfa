"""Decoding every odd kind of image file, large files, and decoding once per fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sklearn_protopnet import _images
from sklearn_protopnet._geometry import box_from_map, upsample_map
from sklearn_protopnet._images import ImageSource, check_images, load_resized, open_image

from .conftest import tiny_classifier, write_pngs

BIG = (4000, 3000)  # 12 megapixels (width, height)


def _pattern(w=40, h=24):
    """An RGB image with no symmetry: a gradient and a red top-left block."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 2] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    arr[: h // 3, : w // 4] = (255, 0, 0)
    return arr


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    """One file of each odd kind; returns {kind: path}."""
    d = tmp_path_factory.mktemp("odd")
    files = {}

    def save(kind, img, ext, **kw):
        path = str(d / f"{kind}.{ext}")
        img.save(path, **kw)
        files[kind] = path

    rgb = Image.fromarray(_pattern())
    save("gray", rgb.convert("L"), "png")
    la = Image.new("LA", (40, 24), (100, 0))
    la.paste((100, 255), (10, 0, 40, 24))
    save("gray_alpha", la, "png")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    save("palette", pal, "png", transparency=0)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    save("rgba", rgba, "png")
    save("gray16", Image.fromarray(np.full((24, 40), 257 * 77, dtype=np.uint16)), "png")
    save("cmyk_tiff", Image.new("CMYK", (40, 24), (0, 255, 255, 0)), "tiff")
    save("cmyk_jpeg", Image.new("CMYK", (40, 24), (0, 255, 255, 0)), "jpg", quality=95)
    save("exif_rotated", rgb, "png", exif=_exif(6))
    frames = [Image.new("RGB", (40, 24), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(str(d / "anim.gif"), save_all=True, append_images=frames[1:])
    files["gif"] = str(d / "anim.gif")
    save("bmp", rgb, "bmp")
    save("webp", rgb, "webp", lossless=True)
    save("tiff", rgb, "tiff")
    # 12-megapixel files: a smooth gradient compresses fast
    w, h = BIG
    gx = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    gy = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    big = np.stack(np.broadcast_arrays(gx, gy, (gx + gy) / 2), axis=-1).astype(np.uint8)
    save("big_jpeg", Image.fromarray(big), "jpg", quality=80, exif=_exif(6))
    save("big_png", Image.fromarray(big), "png", compress_level=1)
    return files


def test_colours_after_conversion(odd_files):
    rgb = _pattern()
    red = np.asarray(open_image(odd_files["cmyk_tiff"]))
    assert (red == (255, 0, 0)).all()
    assert np.abs(np.asarray(open_image(odd_files["cmyk_jpeg"])).astype(int)
                  - (255, 0, 0)).max() <= 8
    gray16 = np.asarray(open_image(odd_files["gray16"]))
    assert (gray16 == 77).all()
    la = np.asarray(open_image(odd_files["gray_alpha"]))
    assert (la[:, :10] == 255).all() and (la[:, 10:] == 100).all()  # transparent -> white
    pal_img = Image.open(odd_files["palette"])
    transparent = np.asarray(pal_img) == 0
    assert transparent.any()
    pal = np.asarray(open_image(odd_files["palette"]))
    assert (pal[transparent] == 255).all()
    rgba = np.asarray(open_image(odd_files["rgba"])).astype(int)
    expected = np.rint(rgb * (128 / 255) + 255 * (127 / 255))
    assert np.abs(rgba - expected).max() <= 1
    assert (np.asarray(open_image(odd_files["gif"])) == (255, 0, 0)).all()  # first frame
    rotated = np.asarray(open_image(odd_files["exif_rotated"]))
    np.testing.assert_array_equal(rotated, np.rot90(rgb, k=-1))  # orientation 6: 90 deg cw
    for kind in ("bmp", "webp", "tiff"):
        np.testing.assert_array_equal(np.asarray(open_image(odd_files[kind])), rgb)


def test_original_size_is_what_the_user_sees(odd_files):
    source = check_images([odd_files["exif_rotated"], odd_files["big_jpeg"],
                           odd_files["big_png"], odd_files["gif"]])
    assert source.original_size(0) == (24, 40)  # rotated: width and height swap
    assert source.original_size(1) == (BIG[1], BIG[0])
    assert source.original_size(2) == BIG
    assert source.original_size(3) == (40, 24)
    assert source.open(0).size == (24, 40) and source.open(0).mode == "RGB"


@pytest.mark.parametrize("kind", ["big_jpeg", "big_png"])
def test_large_images_are_reduced_while_decoding(odd_files, kind):
    small = open_image(odd_files[kind], draft_size=(32, 32))
    # never near 12 MP: at most ~4x the target per side before the final resize
    assert max(small.size) <= 4 * 32 * 2 and min(small.size) >= 32
    full = np.asarray(open_image(odd_files[kind]).resize((32, 32), Image.Resampling.BILINEAR))
    fast = load_resized(odd_files[kind], (32, 32))
    assert fast.shape == (32, 32, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4  # same picture


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(OSError, match="broken.png"):
        open_image(str(bad))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    good = tmp_path / "good.png"
    Image.fromarray(_pattern()).save(good)
    with pytest.raises(OSError, match="notes.png"):  # found by its header, up front
        check_images([str(good), str(text)])


def test_every_odd_kind_trains_in_one_fit(odd_files):
    kinds = sorted(odd_files)
    paths = [odd_files[k] for k in kinds] * 2
    y = np.arange(len(paths)) % 2
    clf = tiny_classifier(image_size=24, prototypes_per_class=2, joint_epochs=1,
                          augment=True).fit(paths, y)
    proba = clf.predict_proba(paths)
    assert proba.shape == (len(paths), 2) and np.isfinite(proba).all()
    # a box on the 12 MP image, in its own pixels
    big = ImageSource(paths=[odd_files["big_png"]])
    width, height = big.original_size(0)
    sims = clf.module_.similarity(clf.module_.distance_map(clf.module_.latent(
        big.load(0, clf.image_size_)[None].clone()))).detach().numpy()[0]
    up = upsample_map(sims[0], clf.cell_geometry_, (height, width))
    x0, y0, x1, y1 = box_from_map(up, 95)
    assert up.shape == (3000, 4000)
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


# ----------------------------------------------------------- decode once
@pytest.fixture
def count_decodes(monkeypatch):
    counter = {"n": 0}
    real = _images.load_resized

    def counting(path, image_size):
        counter["n"] += 1
        return real(path, image_size)

    monkeypatch.setattr(_images, "load_resized", counting)
    return counter


def test_fit_decodes_each_file_once(bar_data, tmp_path, count_decodes):
    X, y = bar_data
    paths = write_pngs(str(tmp_path), X)
    # 4 epochs with a push and last layer after each, BN calibration, patch init,
    # validation split and augmentation: still one decode per file
    clf = tiny_classifier(warm_epochs=1, joint_epochs=3, push_start=1, push_interval=1,
                          augment=True, validation_fraction=0.25)
    clf.fit(paths, y)
    assert sum(r["stage"] == "push" for r in clf.history_) == 4
    assert count_decodes["n"] == len(paths)


def test_streaming_beyond_the_memory_budget_gives_the_same_model(bar_data, tmp_path,
                                                                 count_decodes):
    X, y = bar_data
    paths = write_pngs(str(tmp_path), X)
    cached = tiny_classifier(joint_epochs=1).fit(paths, y)
    count_decodes["n"] = 0
    streamed = tiny_classifier(joint_epochs=1, memory_budget=0).fit(paths, y)
    assert count_decodes["n"] > 3 * len(paths)  # every pass decodes again
    np.testing.assert_allclose(streamed.decision_function(paths),
                               cached.decision_function(paths), rtol=1e-5, atol=1e-5)


def test_arrays_and_files_decode_alike(tmp_path):
    rgb = _pattern()
    path = str(tmp_path / "p.png")
    Image.fromarray(rgb).save(path)
    from_file = check_images([path]).load(0, (12, 20))
    from_array = check_images(rgb[None]).load(0, (12, 20))
    assert from_file.dtype == from_array.dtype and from_file.shape == (3, 12, 20)
    assert (from_file == from_array).all()


def test_an_array_and_a_png_of_the_same_pixels_give_the_model_the_same_input(tmp_path):
    """Large images are first reduced by an integer factor (files while
    decoding); arrays take the same steps, so the input does not depend on how
    the images were given."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 120, 200, 3), dtype=np.uint8)
    paths = []
    for i, img in enumerate(pixels):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    from_array, from_files = check_images(pixels), check_images(paths)
    for i in range(2):
        a, b = from_array.load(i, (16, 16)), from_files.load(i, (16, 16))
        assert a.shape == (3, 16, 16)
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_a_16_bit_array_and_a_16_bit_png_of_the_same_pixels_agree(tmp_path, dtype):
    """Both round x / 257 to the nearest 8-bit level; byte order does not matter."""
    values = np.array([[0, 128, 129, 385, 40000, 65534, 65535, 257 * 77]], dtype=np.uint16)
    path = str(tmp_path / "sixteen.png")
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    from_file = check_images([path]).load(0, values.shape)[0].numpy()
    from_array = check_images(values.astype(dtype)[None]).load(0, values.shape)[0].numpy()
    np.testing.assert_array_equal(from_array, from_file)
    np.testing.assert_array_equal(from_array[0], np.rint(values[0] / 257.0))
