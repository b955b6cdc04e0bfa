"""Prototype projection ("push") and the fixed-feature passes over a data set.

Both run in eval mode on deterministic preprocessing (no augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._network import ProtoPNet


def iterate_batches(dataset, batch_size: int, device, num_workers: int = 0):
    """Yield ``(start, images on device, labels)`` over ``dataset`` in order.

    On CUDA, batches come from pinned memory, are copied without blocking
    (the copy overlaps the previous batch's compute) and are laid out
    channels-last, the layout cuDNN convolutions are fastest on.
    """
    cuda = torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=cuda,
    )
    start = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        yield start, images, labels
        start += len(images)


@dataclass
class PushResult:
    source_index: np.ndarray  # (m,) index into the dataset of each prototype's image
    location: np.ndarray  # (m, 2) (row, col) of its cell in the latent map
    distance: np.ndarray  # (m,) squared distance moved to the patch before the push


@torch.no_grad()
def push_prototypes(
    module: ProtoPNet, dataset, labels: np.ndarray, batch_size: int, device, num_workers=0
) -> PushResult:
    """Replace each prototype of class k by its nearest latent patch of class k.

    Afterwards every prototype is a copy of a patch of a training image, so its
    distance to that patch is zero.
    """
    module.eval()
    m = module.n_prototypes
    proto_class = module.prototype_class
    best = torch.full((m,), float("inf"), device=device)
    best_vec = module.prototypes.detach().clone()
    source = np.full(m, -1, dtype=np.int64)
    location = np.zeros((m, 2), dtype=np.int64)
    for start, images, _ in iterate_batches(dataset, batch_size, device, num_workers):
        y = torch.as_tensor(labels[start : start + len(images)], device=device)
        z = module.latent(images)  # (N, D, h, w)
        n, _, h, w = z.shape
        d = module.distance_map(z)  # (N, m, h, w)
        own = y[:, None] == proto_class[None, :]  # (N, m)
        d = d.masked_fill(~own[:, :, None, None], float("inf"))
        d = d.permute(1, 0, 2, 3).reshape(m, -1)  # (m, N*h*w)
        batch_min, arg = d.min(dim=1)
        better = batch_min < best
        if better.any():
            js = better.nonzero().flatten()
            flat = arg[js]
            img, cell = flat // (h * w), flat % (h * w)
            rows, cols = cell // w, cell % w
            best[js] = batch_min[js]
            best_vec[js] = z[img, :, rows, cols]
            js_np = js.cpu().numpy()
            source[js_np] = (start + img).cpu().numpy()
            location[js_np, 0] = rows.cpu().numpy()
            location[js_np, 1] = cols.cpu().numpy()
    if (source < 0).any():
        raise RuntimeError("push found no image for some prototypes; is every class present?")
    module.prototypes.data.copy_(best_vec)
    return PushResult(source, location, best.cpu().numpy())


@torch.no_grad()
def forward_batches(module: ProtoPNet, dataset, batch_size: int, device, num_workers=0):
    """Yield ``(start, logits, similarities, distance_map)`` per batch, in eval mode.

    The one inference pass: ``transform``, ``decision_function`` and the
    explanations all read these tensors, so they cannot drift apart.
    """
    module.eval()
    for start, images, _ in iterate_batches(dataset, batch_size, device, num_workers):
        d = module.distance_map(module.latent(images))
        logits, s, _ = module.head(d)
        yield start, logits, s, d


def similarities(module: ProtoPNet, dataset, batch_size: int, device, num_workers=0):
    """(logits, similarities) of every image in ``dataset``, float32 numpy, in order."""
    logits, sims = [], []
    for _, out, s, _ in forward_batches(module, dataset, batch_size, device, num_workers):
        logits.append(out.float().cpu().numpy())
        sims.append(s.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(sims)
