"""The ProtoPNet network: backbone, add-on layers, prototype layer, last layer.

This module knows nothing of scikit-learn. Data flows one way::

    uint8 image ─▶ normalise ─▶ backbone ─▶ add-on ─▶ z (N, D, h, w)
        ─▶ squared distances to prototypes (N, m, h, w) ─▶ min over space
        ─▶ similarity s (N, m) ─▶ logits = s @ W.T (N, K)

Distances near zero
-------------------
The squared distance of a patch z to a prototype p is usually computed as
``|z|^2 - 2 z.p + |p|^2``: two matrix products, fast, but in float32 it
loses about ``|z|^2 * 6e-8`` (~1e-5 for 128 sigmoid features) to
cancellation when z and p are close, and the similarity
``log((d + 1) / (d + 1e-4))`` has slope ~1e4 there: a last-bit change of the
convolution (another batch size, CPU or BLAS) would move a similarity by
~0.05. So the distances are computed where that cannot happen:

- inference (push, the last layer's features, transform, explain, prune):
  the whole map in float64 (:meth:`ProtoPNet.distance_map`), accurate to
  ~1e-14 everywhere; a pushed prototype's similarity to its own source patch
  is ``log(1 / 1e-4)`` up to the backbone's own rounding;
- training (:meth:`ProtoPNet.forward`): the float32 map only chooses the
  closest cell (no gradient), and the distance to that cell is computed
  directly as ``sum((z - p)^2)``, which is accurate near zero and carries
  the gradient.

Both run outside autocast, in float32 or float64, whatever the precision of
the backbone.

Cosine similarity
-----------------
With ``similarity="cosine"`` the latent cells are scaled to unit length
(:meth:`ProtoPNet.latent`) and so are the prototypes wherever a distance is
taken (:meth:`ProtoPNet.unit_prototypes`); the squared distance of two unit
vectors is ``2 - 2 cos``, so every distance above, the cluster and
separation costs and the push work unchanged, and the similarity is
``cos = 1 - d / 2``. A push copies a unit-length cell, so a pushed
prototype's similarity to its source patch is 1.
"""

from __future__ import annotations

import torch
from torch import nn

#: ``log((d + 1) / (d + eps))``: the paper's similarity of a squared distance.
SIMILARITY_EPSILON = 1e-4
#: The smallest length a cell or prototype is divided by with cosine similarity.
UNIT_EPSILON = 1e-12


def make_add_on(in_channels: int, prototype_dim: int, style: str,
                sigmoid: bool = True) -> nn.Sequential:
    """1x1 convolutions from the backbone's channels to ``prototype_dim``.

    Both styles end in a sigmoid so that latent features lie in (0, 1), the
    range prototypes are initialised in; with ``sigmoid=False`` (cosine
    similarity) the last convolution's output is the latent, which is then
    scaled to unit length: vectors in (0, 1)^D all lie within a few degrees
    of the diagonal, where every cosine is near 1.
    """
    if style == "regular":
        layers = [
            nn.Conv2d(in_channels, prototype_dim, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(prototype_dim, prototype_dim, kernel_size=1),
            nn.Sigmoid(),
        ]
    elif style == "bottleneck":
        layers = []
        channels = in_channels
        while channels > prototype_dim or not layers:
            out = max(prototype_dim, channels // 2)
            layers += [
                nn.Conv2d(channels, out, kernel_size=1),
                nn.ReLU(),
                nn.Conv2d(out, out, kernel_size=1),
                nn.ReLU(),
            ]
            channels = out
        if channels != prototype_dim:  # only when in_channels < prototype_dim
            layers += [nn.Conv2d(channels, prototype_dim, kernel_size=1)]
        else:
            layers.pop()  # the last ReLU gives way to the sigmoid
        layers.append(nn.Sigmoid())
    else:
        raise ValueError(f"unknown add-on style {style!r}")
    if not sigmoid:
        layers.pop()
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def squared_distances(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of every 1x1 patch of ``z`` to every prototype.

    ``z`` is (N, D, h, w), ``prototypes`` is (m, D); the result is
    (N, m, h, w), computed as ``|z|^2 - 2 z.p + |p|^2`` and clamped at 0
    because the expansion can dip below zero by rounding.
    """
    z_sq = (z * z).sum(dim=1, keepdim=True)
    cross = torch.einsum("ndhw,md->nmhw", z, prototypes)
    p_sq = (prototypes * prototypes).sum(dim=1).view(1, -1, 1, 1)
    return (z_sq - 2.0 * cross + p_sq).clamp_min(0.0)


def distances_at(z: torch.Tensor, prototypes: torch.Tensor, cells: torch.Tensor):
    """Squared distances ``sum((z - p)^2)`` at one cell per (image, prototype).

    ``z`` is (N, D, h, w), ``prototypes`` (m, D) and ``cells`` (N, m) flat
    indices into the h * w cells; the result is (N, m). Computed from the
    difference, so it is accurate near zero (no cancellation) and
    differentiable in ``z`` and ``prototypes``.
    """
    n, d, h, w = z.shape
    flat = z.flatten(2).transpose(1, 2)  # (N, hw, D)
    picked = torch.gather(flat, 1, cells.unsqueeze(-1).expand(-1, -1, d))  # (N, m, D)
    diff = picked - prototypes.unsqueeze(0)
    return (diff * diff).sum(dim=-1)


def distance_to_similarity(d: torch.Tensor, kind: str) -> torch.Tensor:
    """Turn squared distances into similarities (decreasing in ``d``).

    For "cosine", ``d`` is the squared distance of unit vectors, ``2 - 2 cos``.
    """
    if kind == "log":
        return torch.log((d + 1.0) / (d + SIMILARITY_EPSILON))
    if kind == "linear":
        return -d
    if kind == "cosine":
        return 1.0 - 0.5 * d
    raise ValueError(f"unknown similarity {kind!r}")


class ProtoPNet(nn.Module):
    """Prototypical part network with 1x1 prototypes.

    Parameters
    ----------
    backbone : nn.Module
        Maps a normalised float image batch (N, 3, H, W) to a feature map
        (N, C, h, w).
    backbone_channels : int
        ``C``, the backbone's output channels.
    prototype_class : torch.Tensor of int64, shape (m,)
        The class index (0..K-1) each prototype belongs to.
    n_classes : int
        ``K``.
    prototype_dim : int
        ``D``, the depth of the latent space and of each prototype.
    add_on : {"regular", "bottleneck"}
    similarity : {"log", "linear", "cosine"}
        The similarity of a squared distance d; "cosine" also scales cells
        and prototypes to unit length (module docstring).
    mean, std : sequence of 3 floats
        Normalisation applied to images scaled to [0, 1].
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_channels: int,
        prototype_class: torch.Tensor,
        n_classes: int,
        prototype_dim: int = 128,
        add_on: str = "regular",
        similarity: str = "log",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    ):
        super().__init__()
        self.backbone = backbone
        self.add_on = make_add_on(backbone_channels, prototype_dim, add_on,
                                  sigmoid=similarity != "cosine")
        m = len(prototype_class)
        self.prototypes = nn.Parameter(torch.rand(m, prototype_dim))
        self.last_layer = nn.Linear(m, n_classes, bias=False)
        if similarity not in ("log", "linear", "cosine"):
            raise ValueError(f"unknown similarity {similarity!r}")
        self.similarity_kind = similarity
        self.register_buffer("prototype_class", prototype_class.clone().long())
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.backbone_trainable = True
        self.reset_last_layer()

    # -- structure -------------------------------------------------------
    @property
    def n_prototypes(self) -> int:
        return self.prototypes.shape[0]

    def own_class_mask(self) -> torch.Tensor:
        """(K, m) boolean mask, True where prototype j belongs to class k."""
        k = self.last_layer.out_features
        classes = torch.arange(k, device=self.prototype_class.device)
        return classes[:, None] == self.prototype_class[None, :]

    def reset_last_layer(self, off_class_weight: float = -0.5) -> None:
        """+1 for a prototype's own class and ``off_class_weight`` elsewhere."""
        own = self.own_class_mask().to(self.last_layer.weight.dtype)
        with torch.no_grad():
            self.last_layer.weight.copy_(own + off_class_weight * (1.0 - own))

    def set_trainable(self, *, backbone: bool, add_on: bool, prototypes: bool,
                      last_layer: bool = False) -> None:
        """Freeze or unfreeze the parts; the last layer only with ``last_layer``
        (the joint stage with ``lr_last_layer > 0``).

        A frozen backbone is also kept in eval mode by :meth:`train`, so its
        BatchNorm statistics do not drift while other parts learn.
        """
        self.backbone_trainable = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(backbone)
        for p in self.add_on.parameters():
            p.requires_grad_(add_on)
        self.prototypes.requires_grad_(prototypes)
        self.last_layer.weight.requires_grad_(last_layer)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and not self.backbone_trainable:
            self.backbone.eval()
        return self

    # -- computation -----------------------------------------------------
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 1] float) images to the backbone's input scale."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return (x - self.mean) / self.std

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The latent feature map z, (N, D, h, w): values in (0, 1) (the
        add-on's sigmoid), or with cosine similarity cells of unit length."""
        z = self.add_on(self.backbone(self.normalise(x)))
        if self.similarity_kind == "cosine":  # in float32: eps is 0 in float16
            z = nn.functional.normalize(z.float(), dim=1, eps=UNIT_EPSILON)
        return z

    def unit_prototypes(self) -> torch.Tensor:
        """The prototypes distances are taken to: as they are, or with cosine
        similarity scaled to unit length (a pushed prototype already is)."""
        if self.similarity_kind == "cosine":
            return nn.functional.normalize(self.prototypes, dim=1, eps=UNIT_EPSILON)
        return self.prototypes

    def distance_map(self, z: torch.Tensor) -> torch.Tensor:
        """Squared distances (N, m, h, w) of every cell to every prototype, in
        float64 (accurate near zero; see the module docstring), outside
        autocast. For inference: no pass of the SGD stages uses it."""
        with torch.autocast(z.device.type, enabled=False):
            return squared_distances(z.double(), self.unit_prototypes().double())

    def similarity(self, d: torch.Tensor) -> torch.Tensor:
        """Similarities of squared distances, elementwise, in their dtype."""
        return distance_to_similarity(d, self.similarity_kind)

    def pool(self, distance_map: torch.Tensor):
        """(similarities, min distances) of a distance map: the closest cell."""
        min_distances = distance_map.flatten(2).amin(dim=2)
        return self.similarity(min_distances), min_distances

    def min_distances(self, z: torch.Tensor) -> torch.Tensor:
        """Each image's smallest squared distance to each prototype, (N, m), in
        float32 outside autocast, with its gradient: the closest cell is
        chosen on the float32 map, the distance to it computed directly."""
        with torch.autocast(z.device.type, enabled=False):
            z, p = z.float(), self.unit_prototypes().float()
            with torch.no_grad():
                cells = squared_distances(z, p).flatten(2).argmin(dim=2)
            return distances_at(z, p, cells)

    def forward(self, x: torch.Tensor):
        """Return ``(logits, min_distances)``; logits = similarity @ W.T.

        The training pass: the latent map may be computed under autocast,
        the distances, similarities and logits are float32.
        """
        z = self.latent(x)
        with torch.autocast(z.device.type, enabled=False):
            min_distances = self.min_distances(z)
            logits = self.last_layer(self.similarity(min_distances))
        return logits, min_distances


def prototype_losses(
    min_distances: torch.Tensor, y: torch.Tensor, prototype_class: torch.Tensor,
    weight: torch.Tensor | None = None,
):
    """Cluster and separation terms of the ProtoPNet loss.

    Returns ``(cluster, separation)``: the batch mean of the smallest squared
    distance to a prototype of the image's own class, and to a prototype of
    any other class; with ``weight`` (one per image), the mean of the
    weighted distances.
    """
    own = y[:, None] == prototype_class[None, :]
    big = torch.finfo(min_distances.dtype).max
    cluster = min_distances.masked_fill(~own, big).amin(dim=1)
    separation = min_distances.masked_fill(own, big).amin(dim=1)
    if weight is not None:
        cluster, separation = cluster * weight, separation * weight
    return cluster.mean(), separation.mean()


def off_class_l1(model: ProtoPNet) -> torch.Tensor:
    """L1 norm of the last-layer weights that connect prototypes to other classes."""
    return (model.last_layer.weight * (~model.own_class_mask())).abs().sum()


__all__ = [
    "ProtoPNet",
    "make_add_on",
    "squared_distances",
    "distances_at",
    "distance_to_similarity",
    "prototype_losses",
    "off_class_l1",
]
