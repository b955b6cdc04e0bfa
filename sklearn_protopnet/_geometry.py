"""Where a feature-map cell lies in the image, and the box rule.

One place for both, used for prototypes and test images alike:

- :func:`cell_geometry` finds how cells of the latent map sit on the resized
  input image (stride, the pixel centre of cell (0, 0), receptive field).
- :func:`upsample_map` turns an (h, w) similarity map into a map over the
  image as the user sees it, placing each cell at its centre.
- :func:`box_from_map` is the paper's box: the smallest rectangle holding every
  pixel at or above a percentile of the upsampled map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class CellGeometry:
    """How an (h, w) feature map sits on an (H, W) input image.

    ``centre(i, j) = offset + (i, j) * stride`` in input pixels (pixel
    centres at integer coordinates); ``receptive_field`` is the size of the
    input region one cell sees.
    """

    input_size: tuple[int, int]  # (H, W)
    map_size: tuple[int, int]  # (h, w)
    stride: tuple[float, float]
    offset: tuple[float, float]
    receptive_field: tuple[int, int]


def cell_geometry(backbone: torch.nn.Module, image_size: tuple[int, int],
                  map_size: tuple[int, int]) -> CellGeometry:
    """Geometry of ``backbone``'s output cells on an ``image_size`` input.

    The cells are taken to tile the input evenly.
    """
    H, W = image_size
    h, w = map_size
    stride = (H / h, W / w)
    offset = (stride[0] / 2 - 0.5, stride[1] / 2 - 0.5)
    return CellGeometry((H, W), (h, w), stride, offset,
                        (int(np.ceil(stride[0])), int(np.ceil(stride[1]))))


def upsample_map(cell_map: np.ndarray, geometry: CellGeometry,
                 out_size: tuple[int, int]) -> np.ndarray:
    """Bicubic upsampling of an (h, w) map to ``out_size`` (height, width).

    ``out_size`` is the image as the user sees it (original size); the model
    saw it resized to ``geometry.input_size``, a pure scaling.
    """
    t = torch.as_tensor(np.asarray(cell_map, dtype=np.float32))[None, None]
    up = F.interpolate(t, size=tuple(out_size), mode="bicubic", align_corners=False)
    return up[0, 0].numpy()


def box_from_map(upsampled: np.ndarray, percentile: float = 95.0) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end-exclusive, around the pixels >= the percentile."""
    threshold = np.percentile(upsampled, percentile)
    rows = np.flatnonzero((upsampled >= threshold).any(axis=1))
    cols = np.flatnonzero((upsampled >= threshold).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
