"""The default augmentation of the SGD stages: one warp per batch.

Each image of a training batch goes through its own random random-resized
crop, horizontal flip, rotation and shear, the mild versions of the
reference's offline set. The four are one affine map of the image plane, so
the whole batch is resampled by one ``affine_grid`` / ``grid_sample`` call on
the training device, instead of four torchvision transforms per image in the
data loader (which was 18% of a joint epoch and half of a warm-up epoch on
the CPU; one warp per batch takes about 0.4x that time, docs/benchmarks.md).

The random draws come from the process's global torch stream on the CPU, in
the batch order, so a fit is reproducible from its seed on any device and a
resumed fit (which restores the global streams) draws the same warps.

Where the crop's warped square reaches past the image, the samples are black
(zero), as torchvision's affine fill; where it reaches past the crop but not
the image, they are the image's own pixels (torchvision's crop-then-rotate
would fill those with black too).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class BatchWarp:
    """Random affine warps of a batch of images (N, 3, H, W).

    Parameters
    ----------
    scale : tuple of float
        Range of the crop's area as a fraction of the image's.
    ratio : tuple of float
        Range of the crop's aspect ratio (width / height), drawn log-uniform.
    flip : float
        Probability of a horizontal flip.
    degrees : float
        Rotation drawn uniform in [-degrees, degrees].
    shear : float
        Horizontal shear angle drawn uniform in [-shear, shear] degrees.
    """

    def __init__(self, scale=(0.75, 1.0), ratio=(3 / 4, 4 / 3), flip=0.5, degrees=10.0,
                 shear=5.0):
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.flip, self.degrees, self.shear = float(flip), float(degrees), float(shear)

    def __repr__(self) -> str:
        return (f"BatchWarp(scale={self.scale}, ratio={self.ratio}, flip={self.flip}, "
                f"degrees={self.degrees}, shear={self.shear})")

    def matrices(self, n: int, height: int, width: int) -> torch.Tensor:
        """``n`` sampling matrices (n, 2, 3) for ``F.affine_grid``: each maps
        an output position (normalised to [-1, 1]) to where it samples the
        input. Float64, on the CPU, drawn from the global torch stream."""
        u = torch.rand(n, 7, dtype=torch.float64)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * u[:, 1])
        # the crop's width and height as fractions of the image's (pixels:
        # w = sqrt(area * H * W * aspect)), at most the whole image
        fw = torch.sqrt(area * aspect * height / width).clamp(max=1.0)
        fh = torch.sqrt(area / aspect * width / height).clamp(max=1.0)
        cx = (1 - fw) * (2 * u[:, 2] - 1)
        cy = (1 - fh) * (2 * u[:, 3] - 1)
        sign = torch.where(u[:, 4] < self.flip, -1.0, 1.0).to(torch.float64)
        angle = torch.deg2rad(self.degrees * (2 * u[:, 5] - 1))
        shear = torch.tan(torch.deg2rad(self.shear * (2 * u[:, 6] - 1)))

        # rotation and shear act on pixel offsets from the centre; the output's
        # normalised position u is the pixel offset D u, D = diag(W/2, H/2)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # A = R S with S = [[1, shear], [0, 1]]; its inverse is S^-1 R^-1
        inv = torch.empty(n, 2, 2, dtype=torch.float64)
        inv[:, 0, 0] = cos + shear * sin
        inv[:, 0, 1] = sin - shear * cos
        inv[:, 1, 0] = -sin
        inv[:, 1, 1] = cos
        d = torch.tensor([width / 2, height / 2], dtype=torch.float64)
        inv = inv * d.view(1, 1, 2) / d.view(1, 2, 1)  # D^-1 A^-1 D
        # then undo the flip, then into the crop: source = c + f * v
        inv[:, 0, :] *= sign.view(n, 1)
        inv[:, 0, :] *= fw.view(n, 1)
        inv[:, 1, :] *= fh.view(n, 1)
        theta = torch.empty(n, 2, 3, dtype=torch.float64)
        theta[:, :, :2] = inv
        theta[:, 0, 2] = cx
        theta[:, 1, 2] = cy
        return theta

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The warped batch as float in [0, 1] (uint8 input) or in the input's
        scale (float input), on the input's device."""
        if images.ndim != 4:
            raise ValueError(f"BatchWarp expects a batch (N, C, H, W), got shape "
                             f"{tuple(images.shape)}")
        n, _, h, w = images.shape
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        theta = self.matrices(n, h, w).to(device=x.device, dtype=torch.float32)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)
