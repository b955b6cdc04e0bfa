"""Backbones: named torchvision trunks and a small CNN for small images."""

from __future__ import annotations

from torch import nn

from ._backbones import build_backbone, list_backbones

__all__ = ["SmallCNN", "build_backbone", "list_backbones"]


class SmallCNN(nn.Module):
    """A small convolutional backbone for small images (e.g. 28-64 px).

    Three 3x3 conv-BN-ReLU blocks, the last two with stride 2, so the
    feature map is a quarter of the image in each direction.

    Parameters
    ----------
    width : int, default=32
        Channels of the first block; doubled by each strided block.
    """

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.width = width
        self.layers = nn.Sequential(
            *block(3, width, 1), *block(width, 2 * width, 2), *block(2 * width, 4 * width, 2)
        )

    def forward(self, x):
        return self.layers(x)
