"""From what the user passes as X to uint8 image tensors.

One preprocessing for fit, push, the last layer, predict and explain: open
(EXIF orientation applied, first frame), convert to RGB, resize to
``image_size``, keep as uint8 (3, H, W). Normalisation happens inside the
network, augmentation only in the SGD stages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ._batches import iterate_batches

_WHITE = (255, 255, 255)


# --------------------------------------------------------------------------
# the input contract
# --------------------------------------------------------------------------
class ImageSource:
    """Images given as file paths or as one array; indexable, sized."""

    def __init__(self, paths: list[str] | None = None, array: np.ndarray | None = None):
        self.paths = paths
        self.array = array

    @property
    def is_paths(self) -> bool:
        return self.paths is not None

    def __len__(self) -> int:
        return len(self.paths) if self.is_paths else len(self.array)

    def name(self, i: int) -> str:
        return self.paths[i] if self.is_paths else f"X[{i}]"

    def open(self, i: int) -> Image.Image:
        """The i-th image as an RGB PIL image in the orientation the user sees."""
        if self.is_paths:
            return open_image(self.paths[i])
        return Image.fromarray(self.array[i])

    def original_size(self, i: int) -> tuple[int, int]:
        """(width, height) of the i-th image as the user sees it."""
        if not self.is_paths:
            return int(self.array.shape[2]), int(self.array.shape[1])
        with Image.open(self.paths[i]) as img:
            w, h = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation: transposed
                w, h = h, w
        return w, h

    def load(self, i: int, image_size: tuple[int, int]) -> torch.Tensor:
        """The i-th image, resized, as a uint8 tensor (3, H, W)."""
        if self.is_paths:
            arr = load_resized(self.paths[i], image_size)
        else:  # the same reduction and resize as a (non-JPEG) file of these pixels
            h, w = image_size
            arr = _resize(_reduce(Image.fromarray(self.array[i]), (w, h)), image_size)
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def check_images(X) -> ImageSource:
    """Validate X up front, before any training; never decodes pixel data.

    Paths must exist, be files and have an image header Pillow recognises
    (checked for all of them up front, so that a missing or non-image file
    fails in seconds and names itself). Arrays must be (n, H, W)
    or (n, H, W, C) with C in {1, 3, 4}, finite, and in range.
    """
    if isinstance(X, (str, os.PathLike)):
        raise TypeError(
            "X must be a sequence of image paths or an image array, not a single path; "
            "wrap it in a list"
        )
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):  # pandas Series / Index
        if getattr(X, "ndim", 1) != 1:
            raise TypeError("X must be a 1-d sequence of paths, not a 2-d table")
        X = X.to_numpy()
    if isinstance(X, np.ndarray) and X.dtype.kind in "biuf":
        return ImageSource(array=_check_array(X))
    if isinstance(X, np.ndarray) and X.dtype.kind in "OUS":
        if X.ndim != 1:
            raise ValueError(f"an array of paths must be 1-d, got shape {X.shape}")
        X = X.tolist()
    if not isinstance(X, Sequence) or isinstance(X, bytes):
        raise TypeError(
            "X must be a list, numpy array or pandas Series of image paths, or a numeric "
            f"image array of shape (n, H, W) or (n, H, W, C); got {type(X).__name__}"
        )
    if len(X) == 0:
        raise ValueError("X is empty: at least one image is required")
    if not all(isinstance(p, (str, os.PathLike)) for p in X):
        bad = next(p for p in X if not isinstance(p, (str, os.PathLike)))
        raise TypeError(
            f"X must hold image paths (str or os.PathLike); found {type(bad).__name__}: "
            f"{bad!r:.80}. Pass images as one numeric array instead of a list of arrays."
        )
    paths = [os.fspath(p) for p in X]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise FileNotFoundError(f"image file not found: {missing[0]!r}{more}")
    folders = [p for p in paths if not os.path.isfile(p)]
    if folders:
        raise IsADirectoryError(f"not an image file (a directory?): {folders[0]!r}")
    for p in paths:
        # the header only (no pixel decoding): a file that is not an image is
        # named now, even when fit will stream the images later
        try:
            with Image.open(p):
                pass
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise OSError(f"cannot read image file {p!r}: {exc}") from exc
    return ImageSource(paths=paths)


def _check_array(X: np.ndarray) -> np.ndarray:
    """Validate a numeric image array and return it as uint8 (n, H, W, 3)."""
    if X.ndim not in (3, 4):
        raise ValueError(
            f"an image array must have shape (n, H, W) or (n, H, W, C); got {X.shape}"
        )
    if X.shape[0] == 0:
        raise ValueError("X is empty: at least one image is required")
    if X.ndim == 4 and X.shape[3] not in (1, 3, 4):
        raise ValueError(
            f"an image array (n, H, W, C) must have C in 1, 3 or 4 channels, got C={X.shape[3]}"
        )
    if X.dtype.kind == "f":
        if not np.isfinite(X).all():
            raise ValueError("the image array contains NaN or infinite values")
        lo, hi = float(X.min()), float(X.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float image arrays must hold values in [0, 1]; found [{lo:g}, {hi:g}]. "
                "Divide by 255 (8-bit data) or pass an integer array."
            )
        X = np.rint(X * 255.0).astype(np.uint8)
    elif X.dtype.kind == "b":
        X = X.astype(np.uint8) * 255
    elif X.dtype.kind == "u" and X.dtype.itemsize == 2:  # 16-bit, either byte order
        # round(x / 257), as for 16-bit files, in integers (no ties: 257 is odd)
        X = ((X.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)
    elif X.dtype != np.uint8:
        lo, hi = int(X.min()), int(X.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"integer image arrays must hold 8-bit values in [0, 255]; found [{lo}, {hi}]"
            )
        X = X.astype(np.uint8)
    if X.ndim == 3:
        X = X[..., None]
    if X.shape[3] == 1:
        X = np.repeat(X, 3, axis=3)
    elif X.shape[3] == 4:
        X = np.stack([_flatten_alpha(Image.fromarray(x, "RGBA")) for x in X])
        X = np.asarray(X)
    return np.ascontiguousarray(X)


# --------------------------------------------------------------------------
# decoding one file
# --------------------------------------------------------------------------
def _flatten_alpha(img: Image.Image) -> np.ndarray:
    """RGBA on a white background, as most viewers show transparency."""
    background = Image.new("RGBA", img.size, _WHITE + (255,))
    return np.asarray(Image.alpha_composite(background, img.convert("RGBA")).convert("RGB"))


_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# EXIF orientation -> the transposition that shows the image upright
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def _reducible(img: Image.Image) -> Image.Image:
    """A mode whose pixels can be averaged: ``Image.reduce`` and resizing
    need it, and a palette index or 1-bit value cannot be averaged."""
    mode = img.mode
    if _has_alpha(img):
        # transparency is composited first: averaging unpremultiplied colours
        # would bleed the colour of invisible pixels into visible ones
        return Image.fromarray(_flatten_alpha(img))
    if mode in ("P", "1"):
        return img.convert("RGB" if mode == "P" else "L")
    if mode in _SIXTEEN_BIT:
        return img.convert("I")  # 32-bit integers, same values, reducible
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit data are scaled from 0-65535, float data from [0, 1]."""
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            arr = arr * 255.0 if arr.max(initial=0.0) <= 1.0 else arr
        else:  # 16-bit data: full scale is 65535
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    if _has_alpha(img):
        return Image.fromarray(_flatten_alpha(img))
    if mode != "RGB":
        return img.convert("RGB")  # L, CMYK, YCbCr, P without transparency ...
    return img


def _reduce(img: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Shrink by an integer factor while staying at least twice ``target``
    (width, height), so that a large image is not kept at full size and the
    final resize still has enough pixels to filter from."""
    factor = min(img.width // (2 * target[0]), img.height // (2 * target[1]))
    return img.reduce(factor) if factor >= 2 else img


def open_image(path: str, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` to an RGB image in the orientation the user sees.

    Parameters
    ----------
    path : str
        An image file Pillow can read; the first frame of an animation is used.
    draft_size : (int, int) or None
        (width, height) the image will be resized to. When given, a JPEG is
        decoded directly at a reduced scale (draft mode) no smaller than that,
        and any other image is reduced by an integer factor right after
        decoding, so a 12-megapixel file never stays at full size.

    Returns
    -------
    PIL.Image.Image
        RGB, EXIF orientation applied, transparency composited on white.
    """
    try:
        with Image.open(path) as img:
            img.seek(0)  # the first frame of an animation
            orientation = img.getexif().get(0x0112, 1)
            target = None
            if draft_size is not None:
                target = tuple(int(v) for v in draft_size)
                if orientation in (5, 6, 7, 8):  # the file's axes are swapped
                    target = target[::-1]
                if img.format == "JPEG":
                    img.draft("RGB" if img.mode == "RGB" else img.mode, target)
            img.load()
            if target is not None:
                img = _reduce(_reducible(img), target)
            img = _to_rgb(img)
            if orientation in _ORIENTATION:
                img = img.transpose(_ORIENTATION[orientation])
            return img.copy() if img.readonly else img
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise OSError(f"cannot read image file {path!r}: {exc}") from exc


def _resize(img: Image.Image, image_size: tuple[int, int]) -> np.ndarray:
    h, w = image_size
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy


def load_resized(path: str, image_size: tuple[int, int]) -> np.ndarray:
    """Decode and resize one file to uint8 (H, W, 3)."""
    h, w = image_size
    return _resize(open_image(path, draft_size=(w, h)), image_size)


# --------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------
class ImageDataset(torch.utils.data.Dataset):
    """(uint8 image (3, H, W), label) pairs for skorch and the inference loops.

    Images come from ``cache`` (a uint8 tensor decoded once) when given,
    otherwise they are decoded on access. ``transform`` (augmentation) is
    applied to the uint8 tensor. With ``weight`` (one float per image of
    ``source``), an item is ``(image, (label, weight))``: the SGD stages'
    loss reads the weights beside the labels.
    """

    def __init__(self, source: ImageSource, image_size, y=None, cache=None, transform=None,
                 indices=None, weight=None):
        self.source = source
        self.image_size = tuple(image_size)
        self.y = y
        self.cache = cache
        self.transform = transform
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices)
        self.weight = weight

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        j = int(self.indices[i])
        img = self.cache[j] if self.cache is not None else self.source.load(j, self.image_size)
        if self.transform is not None:
            img = self.transform(img)
        label = self.y[j] if self.y is not None else -1
        if self.weight is not None:
            return img, (label, np.float32(self.weight[j]))
        return img, label

    def subset(self, indices, transform="same", weight="same") -> ImageDataset:
        """The images at ``indices`` (positions in this data set); ``transform``
        and ``weight`` (per image of the source) are kept unless given."""
        return ImageDataset(
            self.source,
            self.image_size,
            y=self.y,
            cache=self.cache,
            transform=self.transform if transform == "same" else transform,
            indices=self.indices[np.asarray(indices)],
            weight=self.weight if isinstance(weight, str) and weight == "same" else weight,
        )


def decode_all(source: ImageSource, image_size, num_workers: int = 0) -> torch.Tensor:
    """Decode every image once into one uint8 tensor (n, 3, H, W)."""
    h, w = image_size
    out = torch.empty((len(source), 3, h, w), dtype=torch.uint8)
    for start, images, _ in iterate_batches(ImageDataset(source, image_size), 64, "cpu",
                                            num_workers):
        out[start : start + len(images)] = images
    return out


def check_decodable(source: ImageSource, image_size, num_workers: int = 0) -> None:
    """Decode every image once, keeping none: a file whose header is valid but
    whose data is not (truncated, corrupt) raises an ``OSError`` naming it."""
    for _ in iterate_batches(ImageDataset(source, image_size), 64, "cpu", num_workers):
        pass
