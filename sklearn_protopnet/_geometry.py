"""Where a feature-map cell lies in the image, and the box rule.

One place for both, used for prototypes and test images alike:

- :func:`cell_geometry` finds how cells of the latent map sit on the resized
  input image (stride, the pixel centre of cell (0, 0), receptive field), for
  any backbone, by probing a simplified copy of it (below).
- :func:`upsample_map` turns an (h, w) similarity map into a map over the
  image as the user sees it, placing each cell at its true centre.
- :func:`box_from_map` is the box rule: by default ("peak") the bounding box
  of the connected region of pixels at or above a percentile of the
  upsampled map that holds the peak cell's centre (:func:`peak_pixel`); the
  paper's rule ("percentile") is the smallest rectangle holding every such
  pixel, wherever it is.

How the geometry is found
-------------------------
Assuming the cells tile the image evenly is wrong for most CNNs: a 3x3
convolution with stride 2 and padding 1 centres its output cell 0 on input
pixel 0, not 0.5, so a ResNet's cell (0, 0) is centred on pixel 0 rather than
15.5, half a cell away from where even tiling puts it; and an image size the
stride does not divide changes the stride even tiling infers.

We measure the geometry on a float32 copy of the backbone made *linear and
translation-symmetric*: every convolution and linear layer averages its
inputs (constant positive weights, no bias), normalisation layers are
removed, max pooling becomes average pooling over the same window, bounded
activations (sigmoid, tanh, ReLU6, ...) are removed, and global pooling
(squeeze-and-excitation gates) returns a constant. Fed a large positive
constant ``B`` plus the pixel coordinate along one axis, ReLU-like
activations are the identity and every feature map stays an affine function
of the position; with padding extended linearly instead of with zeros, each
cell's value is ``B`` plus the coordinate of its centre, exactly as the
receptive-field arithmetic of Araujo et al. (Distill, 2019) defines it.
Padding asymmetries (``nn.ZeroPad2d``), odd image sizes and branching
(residual sums, concatenation) come out right because nothing is assumed
about them. The receptive field is the support of a central cell's gradient
in the same copy with zero padding, clipped to the image. A backbone the
probe cannot handle (an error, or a map that is not affine in the position)
falls back to even tiling, recorded in ``CellGeometry.method``.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class CellGeometry:
    """How an (h, w) feature map sits on an (H, W) input image.

    ``centre(i, j) = offset + (i, j) * stride`` in input pixels (pixel
    centres at integer coordinates).

    Attributes
    ----------
    image_size : (int, int)
        (height, width) of the network's input (the resized image).
    feature_map_shape : (int, int)
        (height, width) of the latent feature map.
    stride : (float, float)
        Input pixels between two neighbouring cells, per axis.
    offset : (float, float)
        (row, column) in input pixels of the centre of cell (0, 0).
    receptive_field : (int, int)
        Extent, in input pixels and clipped to the image, of what the
        central cell sees.
    method : {"probed", "tiled"}
        "probed" when measured on the backbone, "tiled" when the even-tiling
        fallback was used.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_protopnet import ProtoPNetClassifier
    >>> from sklearn_protopnet.backbones import SmallCNN
    >>> X = np.zeros((8, 16, 16), np.uint8); X[:4, 7:9] = X[4:, :, 7:9] = 255  # bars
    >>> y = np.repeat(["horizontal", "vertical"], 4)
    >>> clf = ProtoPNetClassifier(backbone=SmallCNN(width=4), image_size=16,
    ...                           prototypes_per_class=1, prototype_dim=4, warm_epochs=0,
    ...                           joint_epochs=1, random_state=0).fit(X, y)
    >>> clf.cell_geometry_.feature_map_shape  # SmallCNN: a quarter of 16 px
    (4, 4)
    >>> clf.cell_geometry_.stride
    (4.0, 4.0)
    """

    image_size: tuple[int, int]
    feature_map_shape: tuple[int, int]
    stride: tuple[float, float]
    offset: tuple[float, float]
    receptive_field: tuple[int, int]
    method: str = "probed"

    def centre(self, i: float, j: float) -> tuple[float, float]:
        """The centre of a cell in input pixels.

        Parameters
        ----------
        i, j : float
            Row and column of the cell (fractions interpolate).

        Returns
        -------
        (float, float)
            (row, column) in pixels of the network's input.

        Examples
        --------
        >>> from sklearn_protopnet import CellGeometry
        >>> g = CellGeometry((32, 32), (8, 8), (4.0, 4.0), (1.5, 1.5), (11, 11))
        >>> g.centre(2, 3)
        (9.5, 13.5)
        """
        return (self.offset[0] + i * self.stride[0], self.offset[1] + j * self.stride[1])


# activations become the identity (the map must stay affine in the position)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
                nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Sigmoid, nn.Hardsigmoid,
                nn.Tanh, nn.Softsign, nn.Softplus, nn.Dropout, nn.Dropout2d)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
          nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


class _ConstantPool(nn.Module):
    """Global pooling replaced by a constant, so gates do not depend on the input."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        return torch.ones_like(self.pool(x))


class _Padding:
    """Pre-hook padding of convolutions and pools: "linear" or "zeros"."""

    mode = "linear"

    def __init__(self, pad):  # (left, right, top, bottom)
        self.pad = tuple(int(p) for p in pad)

    def __call__(self, module, args):
        x = args[0]
        if not any(self.pad):
            return None
        if _Padding.mode == "zeros":
            return (F.pad(x, self.pad),)
        left, right, top, bottom = self.pad
        x = _extend(x, -1, left, right)
        x = _extend(x, -2, top, bottom)
        return (x,)


class _PadModule(nn.Module):
    """An explicit padding layer (zero, constant, reflection, ...) in the probe."""

    def __init__(self, pad):
        super().__init__()
        self.padding = _Padding(pad)

    def forward(self, x):
        return self.padding(self, (x,))[0] if any(self.padding.pad) else x


def _extend(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """Pad along ``dim`` by continuing the values linearly."""
    n = x.shape[dim]
    if n == 0 or (before == 0 and after == 0):
        return x
    parts = [x]
    first, last = x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)
    slope0 = x.narrow(dim, 1, 1) - first if n > 1 else torch.zeros_like(first)
    slope1 = last - x.narrow(dim, n - 2, 1) if n > 1 else torch.zeros_like(last)
    shape = [1] * x.ndim
    shape[dim] = -1
    if before:
        k = torch.arange(before, 0, -1, dtype=x.dtype).view(shape)
        parts.insert(0, first - k * slope0)
    if after:
        k = torch.arange(1, after + 1, dtype=x.dtype).view(shape)
        parts.append(last + k * slope1)
    return torch.cat(parts, dim=dim)


def _pad_of(module) -> tuple[int, int, int, int]:
    if isinstance(module, nn.modules.conv._ConvNd):
        return tuple(module._reversed_padding_repeated_twice)
    p = module.padding
    ph, pw = (p, p) if isinstance(p, int) else p
    return (pw, pw, ph, ph)


def _probe_copy(backbone: nn.Module) -> nn.Module:
    """A float32, eval-mode copy of ``backbone`` that is linear (see above)."""
    probe = copy.deepcopy(backbone).float().eval()
    replacements = []
    for parent in probe.modules():
        for name, child in parent.named_children():
            if isinstance(child, _NORMS + _ACTIVATIONS):
                replacements.append((parent, name, nn.Identity()))
            elif isinstance(child, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d,
                                    nn.ReplicationPad2d)):
                pad = child.padding
                pad = (pad,) * 4 if isinstance(pad, int) else tuple(pad)
                replacements.append((parent, name, _PadModule(pad)))
            elif isinstance(child, nn.MaxPool2d):
                replacements.append((parent, name, nn.AvgPool2d(
                    child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode,
                    count_include_pad=False)))
            elif isinstance(child, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                replacements.append((parent, name, _ConstantPool(child)))
    for parent, name, module in replacements:
        setattr(parent, name, module)
    handled = set()
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                handled.update(id(p) for p in module.parameters(recurse=False))
            if isinstance(module, nn.Conv2d):
                if module.padding_mode != "zeros":
                    raise ValueError("only zero padding is probed")
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
                module.register_forward_pre_hook(_Padding(_pad_of(module)))
                module.padding = (0, 0)
            elif isinstance(module, nn.AvgPool2d):
                module.register_forward_pre_hook(_Padding(_pad_of(module)))
                module.padding = 0
            elif isinstance(module, nn.modules.conv._ConvNd):
                raise ValueError(f"{type(module).__name__} is not probed")
            elif isinstance(module, nn.Linear):
                module.weight.fill_(1.0 / module.in_features)
                if module.bias is not None:
                    module.bias.zero_()
        # other learnable tensors (layer scales, ...) become positive constants
        for param in probe.parameters():
            if id(param) not in handled and (param <= 0).any():
                param.fill_(1.0)
            param.requires_grad_(False)
    return probe


def _measure(backbone: nn.Module, image_size: tuple[int, int], map_size: tuple[int, int]):
    """(stride, offset, receptive field) per axis, measured; None on failure."""
    H, W = image_size
    try:
        probe = _probe_copy(backbone)
        rows = torch.arange(H, dtype=torch.float32).view(1, 1, H, 1).expand(1, 3, H, W)
        cols = torch.arange(W, dtype=torch.float32).view(1, 1, 1, W).expand(1, 3, H, W)
        # a positive shift keeps functional ReLUs (not replaced) the identity
        big = 2.0 * max(H, W) + 64.0
        x = torch.cat([torch.zeros(1, 3, H, W, dtype=torch.float32), rows, cols]) + big
        _Padding.mode = "linear"
        with torch.no_grad():
            out = probe(x)
        if tuple(out.shape[2:]) != tuple(map_size):
            return None
        base = out[0]
        centres = [((out[k] - base) / base * big).mean(0) for k in (1, 2)]
        result = []
        for axis, c in enumerate(centres):
            line = c.mean(dim=1 - axis).numpy()  # along rows (axis 0) or columns (axis 1)
            spread = (c - c.mean(dim=1 - axis, keepdim=True)).abs().max().item()
            n = len(line)
            if n > 1:
                stride, offset = np.polyfit(np.arange(n), line, 1)
                fit_error = np.abs(offset + stride * np.arange(n) - line).max()
            else:
                stride, offset, fit_error = float(image_size[axis]), float(line[0]), 0.0
            if not (np.isfinite(stride) and stride > 0) or max(fit_error, spread) > 0.05:
                return None
            # float32 rounding leaves ~0.03 px of noise; architectures put
            # centres on half or quarter pixels, so snap to 1/8 px
            result.append([round(float(stride) * 8) / 8, round(float(offset) * 8) / 8])
        # receptive field: where a central cell's gradient is non-zero, zero padding
        _Padding.mode = "zeros"
        x = torch.ones(1, 3, H, W, dtype=torch.float32, requires_grad=True)
        with torch.enable_grad():
            out = probe(x)
            h, w = out.shape[2:]
            (grad,) = torch.autograd.grad(out[0, :, h // 2, w // 2].sum(), x)
        seen = grad[0].abs().sum(0) > 0
        for axis in (0, 1):
            hit = np.flatnonzero(seen.any(dim=1 - axis).numpy())
            result[axis].append(int(hit[-1] - hit[0] + 1) if len(hit) else 0)
        return result
    except Exception:  # a module the probe cannot simplify: fall back to tiling
        return None
    finally:
        _Padding.mode = "linear"


def cell_geometry(backbone: torch.nn.Module, image_size: tuple[int, int],
                  map_size: tuple[int, int]) -> CellGeometry:
    """Geometry of ``backbone``'s output cells on an ``image_size`` input.

    Parameters
    ----------
    backbone : nn.Module
        Maps (N, 3, H, W) images to (N, C, h, w) feature maps. It is not
        modified (a simplified copy is probed).
    image_size : (int, int)
        (H, W) of the images the backbone sees.
    map_size : (int, int)
        (h, w) of its feature map on such images.

    Returns
    -------
    CellGeometry
        Measured stride, offset of cell (0, 0) and receptive field; even
        tiling of the image by the cells if the backbone cannot be probed.

    The geometry depends on the architecture only, not on the weights, so it
    is measured once per architecture and image size in a process (a probe
    of a ResNet-50 at 224 px takes seconds) and then reused: every fold of a
    grid search, every refit.
    """
    H, W = (int(v) for v in image_size)
    h, w = (int(v) for v in map_size)
    key = (_architecture(backbone), H, W, h, w)
    found = _MEASURED.get(key)
    if found is None:
        found = _MEASURED[key] = _geometry_of(backbone, H, W, h, w)
        while len(_MEASURED) > 64:
            _MEASURED.pop(next(iter(_MEASURED)))
    return found


#: (architecture, H, W, h, w) -> CellGeometry, in the order they were measured.
_MEASURED: dict = {}


def _architecture(backbone: torch.nn.Module) -> str:
    """What the geometry depends on: every submodule's class and settings
    (kernel sizes, strides, paddings, ...), not the weights."""
    classes = ",".join(f"{type(m).__module__}.{type(m).__qualname__}"
                       for m in backbone.modules())
    return f"{classes}\n{backbone!r}"


def _geometry_of(backbone, H: int, W: int, h: int, w: int) -> CellGeometry:
    measured = _measure(backbone, (H, W), (h, w))
    if measured is None:
        stride = (H / h, W / w)
        offset = (stride[0] / 2 - 0.5, stride[1] / 2 - 0.5)
        return CellGeometry((H, W), (h, w), stride, offset,
                            (int(np.ceil(stride[0])), int(np.ceil(stride[1]))), "tiled")
    (sr, orow, rr), (sc, ocol, rc) = measured
    return CellGeometry((H, W), (h, w), (float(sr), float(sc)), (float(orow), float(ocol)),
                        (int(rr), int(rc)), "probed")


#: The cubic convolution kernel's parameter, as in PyTorch's and OpenCV's bicubic.
_CUBIC_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Weights (n, 4) of the taps at -1, 0, +1, +2 around a point ``t`` in [0, 1)."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(n_out: int, n_in: int, n_cells: int, stride: float,
                          offset: float) -> np.ndarray:
    """(n_out, n_cells) bicubic interpolation from cell centres to output pixels."""
    # output pixel centre -> input pixel coordinate -> cell coordinate, held
    # at the outermost centres beyond them
    pixel = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    cell = np.clip((pixel - offset) / stride, 0.0, n_cells - 1.0)
    base = np.floor(cell).astype(np.int64)
    weights = _cubic_weights(cell - base)
    matrix = np.zeros((n_out, n_cells))
    rows = np.arange(n_out)
    for k in range(4):  # taps outside the map take the border cell's value
        np.add.at(matrix, (rows, np.clip(base - 1 + k, 0, n_cells - 1)), weights[:, k])
    matrix.setflags(write=False)
    return matrix


def upsample_map(cell_map: np.ndarray, geometry: CellGeometry,
                 out_size: tuple[int, int]) -> np.ndarray:
    """Bicubic interpolation of an (h, w) cell map over an image of ``out_size``.

    ``out_size`` (height, width) is the image as the user sees it (its
    original size); the model saw it resized to ``geometry.image_size``, a
    pure scaling. Each cell's value is placed at the cell's centre
    (``geometry.centre``) mapped to output pixels; between centres the map is
    interpolated bicubically, beyond the outermost centres it is held at the
    border value.

    Bicubic interpolation is separable, so this is two small matrix products,
    ``rows @ cell_map @ cols.T``: no per-pixel sampling grid, which for a
    12-megapixel photo would take hundreds of megabytes. The values are
    those of PyTorch's bicubic ``grid_sample`` at the same (clipped)
    coordinates (tested).
    """
    cell_map = np.asarray(cell_map, dtype=np.float64)
    h, w = cell_map.shape
    out_h, out_w = (int(v) for v in out_size)
    H, W = geometry.image_size
    rows = _interpolation_matrix(out_h, int(H), h, float(geometry.stride[0]),
                                 float(geometry.offset[0]))
    cols = _interpolation_matrix(out_w, int(W), w, float(geometry.stride[1]),
                                 float(geometry.offset[1]))
    # the small product in float64, the image-sized one straight into float32
    return (rows @ cell_map).astype(np.float32) @ cols.T.astype(np.float32)


BOX_RULES = ("peak", "percentile")


def peak_pixel(location, geometry: CellGeometry, original_size) -> tuple[int, int]:
    """(row, column), in pixels of the image as the user sees it, of the centre
    of the latent cell ``location`` (row, column); ``original_size`` is that
    image's (width, height)."""
    width, height = (int(v) for v in original_size)
    H, W = geometry.image_size
    cy, cx = geometry.centre(*location)
    row = int(round((cy + 0.5) * height / H - 0.5))
    col = int(round((cx + 0.5) * width / W - 0.5))
    return min(max(row, 0), height - 1), min(max(col, 0), width - 1)


def box_from_map(upsampled: np.ndarray, percentile: float = 95.0,
                 peak: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end-exclusive, around the pixels >= the percentile.

    With ``peak`` None, the paper's box: the smallest rectangle holding every
    such pixel, wherever it is. With ``peak`` (row, column), the "peak" rule:
    only the connected region (8-neighbours) of such pixels that holds the
    peak, so that a second, unrelated peak of the map never enlarges the box.
    If the peak pixel itself is below the threshold (bicubic overshoot
    elsewhere can do that), the region holding the nearest pixel above it is
    taken.
    """
    threshold = np.percentile(upsampled, percentile)
    mask = upsampled >= threshold
    if peak is not None:
        r, c = (int(v) for v in peak)
        if not mask[r, c]:
            rr, cc = np.nonzero(mask)
            k = int(np.argmin((rr - r) ** 2 + (cc - c) ** 2))
            r, c = int(rr[k]), int(cc[k])
        regions, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        mask = regions == regions[r, c]
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def box_rule_text(rule: str, percentile: float) -> str:
    """The box rule in a few words, as sheets and the report name it."""
    if rule == "peak":
        return f"peak rule, region >= {percentile:g}th percentile around the peak cell (+)"
    return f"percentile rectangle (paper), all pixels >= {percentile:g}th percentile"
