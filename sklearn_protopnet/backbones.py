"""Backbones: the torchvision trunks by name, and a small CNN for small images.

Any ``torch.nn.Module`` mapping (N, 3, H, W) images to a feature map
(N, C, h, w) is a backbone; :class:`SmallCNN` is one made for images of
28-64 px, and :func:`list_backbones` names the torchvision trunks.
"""

from ._backbones import SmallCNN, list_backbones

__all__ = ["SmallCNN", "list_backbones"]
