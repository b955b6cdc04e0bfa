"""Everything before the first epoch: BatchNorm calibration and prototype
initialisation.

Both run once, in eval mode, on the training images without augmentation.
:func:`initialise_prototypes` dispatches on ``prototype_init``: "uniform"
keeps the network's uniform draw, "patches" is a push
(:func:`._push.push_prototypes`), "discriminative" is
:func:`discriminative_patches`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._batches import iterate_batches
from ._push import push_prototypes


@dataclass
class InitResult:
    source_index: np.ndarray  # (m,) index into the dataset of each prototype's image
    location: np.ndarray  # (m, 2) (row, col) of its cell in the latent map
    margin: np.ndarray  # (m,) the score it was chosen by (separation minus cluster)


def initialise_prototypes(kind: str, module, dataset, labels, batch_size: int, device,
                          num_workers=0) -> None:
    """Place the prototypes before training by the ``prototype_init`` rule."""
    if kind == "patches":
        push_prototypes(module, dataset, labels, batch_size, device, num_workers)
    elif kind == "discriminative":
        discriminative_patches(module, dataset, labels, batch_size, device, num_workers)
    elif kind != "uniform":
        raise ValueError(f"unknown prototype_init {kind!r}")


def _uncalibrated_batchnorms(module: torch.nn.Module) -> list:
    """BatchNorm layers whose running statistics are still at their initial
    values (mean 0, variance 1): they have never seen data."""
    found = []
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
            if torch.all(layer.running_mean == 0) and torch.all(layer.running_var == 1):
                found.append(layer)
    return found


#: Images the BatchNorm calibration averages over, at most. The calibration
#: only has to replace made-up statistics (mean 0, variance 1) by the data's
#: scale before the warm-up; the joint stage then normalises with the
#: statistics of each batch, noisier than 128 images' averages. Measured
#: against all images (benchmarks/calibration.py, docs/benchmarks.md): 128
#: give every channel's mean to 6% of its standard deviation and its variance
#: to 11% (ResNet-18, 480 images at 128 px; the median channel of the last
#: layer to 2%); 512 were a whole extra forward pass at that size.
CALIBRATION_IMAGES = 128


@torch.no_grad()
def calibrate_batchnorm(module, dataset, batch_size: int, device, num_workers=0):
    """Give never-trained BatchNorm layers of the backbone real statistics.

    A randomly initialised backbone is frozen, in eval mode, during warm-up;
    its BatchNorm layers would normalise with mean 0 and variance 1, and the
    switch to batch statistics at the start of the joint stage would change
    every feature at once. One pass without gradient or augmentation over
    at most :data:`CALIBRATION_IMAGES` training images, evenly spread over
    the data set (no random draw), with a cumulative average gives them the
    data's statistics first. Layers that already hold statistics (pretrained
    weights) are left alone. Returns the number of layers calibrated.
    """
    layers = _uncalibrated_batchnorms(module.backbone)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the pass
    module.eval()
    for layer in layers:
        layer.train()
    if len(dataset) > CALIBRATION_IMAGES:
        dataset = dataset.subset(np.linspace(0, len(dataset) - 1, CALIBRATION_IMAGES)
                                 .round().astype(np.int64))
    try:
        for start, images, _ in iterate_batches(dataset, batch_size, device, num_workers):
            if len(images) == 1 and start > 0:
                break  # a last batch of one image cannot be batch-normalised on 1 x 1 maps
            module.backbone(module.normalise(images))
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        module.eval()
    return len(layers)


@torch.no_grad()
def discriminative_patches(
    module, dataset, labels: np.ndarray, batch_size: int, device, num_workers=0,
    images_per_class: int = 32, candidates_per_class: int = 512, generator=None,
) -> InitResult:
    """Initialise each prototype of class k on a latent patch typical of class k
    and rare elsewhere.

    The SGD loss rewards a prototype of class k for being close to a patch of
    every class-k image (cluster cost) and far from every patch of the other
    classes (separation cost). A patch that every image has (background, the
    border of the padded map) satisfies the first at once and gives the
    cross-entropy no gradient, a trap the reference's random initialisation
    often falls into on small data. This scores candidate patches of class k
    by that very margin on a sample of images,

        score(c) = mean over other-class images of min over cells |z - c|^2
                 - mean over class-k images of min over cells |z - c|^2,

    and gives each prototype of class k one of the best-scoring candidates,
    at most one per source image. Like a push, every prototype is then a real
    latent patch of a training image.
    """
    module.eval()
    labels = np.asarray(labels)
    classes = np.unique(labels)
    rng = np.random.default_rng(
        int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    )
    per_class = max(4, min(images_per_class, 8192 // max(len(classes), 1)))
    sample = {k: rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in classes}
    chosen = np.concatenate(list(sample.values()))
    z = torch.cat([module.latent(images) for _, images, _ in
                   iterate_batches(dataset.subset(chosen), batch_size, device, num_workers)])
    n, d, h, w = z.shape
    cells = z.permute(0, 2, 3, 1).reshape(n, h * w, d)  # (n, hw, D)
    sample_labels = labels[chosen]

    def mean_min_distance(cand: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        total = torch.zeros(len(cand), device=cand.device)
        for start in range(0, len(rows), 16):
            block = cells[torch.as_tensor(rows[start : start + 16], device=cells.device)]
            dist = torch.cdist(cand[None], block.reshape(1, -1, d))[0] ** 2
            total += dist.view(len(cand), -1, h * w).amin(dim=2).sum(dim=1)
        return total / max(len(rows), 1)

    proto_class = module.prototype_class.cpu().numpy()
    new = module.prototypes.detach().clone()
    source = np.full(module.n_prototypes, -1, dtype=np.int64)
    location = np.zeros((module.n_prototypes, 2), dtype=np.int64)
    margin = np.zeros(module.n_prototypes)
    for k in classes:
        own_rows = np.flatnonzero(sample_labels == k)
        other_rows = np.flatnonzero(sample_labels != k)
        other_rows = rng.permutation(other_rows)[: max(per_class, 32)]
        flat = rng.permutation(len(own_rows) * h * w)[:candidates_per_class]
        cand_img, cand_cell = own_rows[flat // (h * w)], flat % (h * w)
        cand = cells[torch.as_tensor(cand_img), torch.as_tensor(cand_cell)]
        score = mean_min_distance(cand, other_rows) - mean_min_distance(cand, own_rows)
        order = torch.argsort(score, descending=True).cpu().numpy()
        js = np.flatnonzero(proto_class == k)
        used_images: set = set()
        picks = []
        for c in order:
            if cand_img[c] in used_images:
                continue
            used_images.add(cand_img[c])
            picks.append(c)
            if len(picks) == len(js):
                break
        picks += list(order[: len(js) - len(picks)])  # fewer images than prototypes
        for j, c in zip(js, picks):
            new[j] = cand[c]
            source[j] = chosen[cand_img[c]]
            location[j] = divmod(int(cand_cell[c]), w)
            margin[j] = float(score[c])
    module.prototypes.data.copy_(new)
    return InitResult(source, location, margin)


__all__ = ["InitResult", "calibrate_batchnorm", "discriminative_patches",
           "initialise_prototypes"]
