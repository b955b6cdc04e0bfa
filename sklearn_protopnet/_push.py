"""Prototype projection ("push"): every prototype becomes a real training patch.

Each prototype of class k is replaced by its nearest latent patch among the
images of class k, computed in eval mode without augmentation. Afterwards
its distance to that patch is zero, so "that" is a part of a real image.

In a data-parallel fit (:mod:`._accelerate`) each process searches its
contiguous block of the images and the blocks' nearest patches are gathered,
so every process ends with the same prototypes and source indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._accelerate import nearest_over_processes
from ._batches import latent_batches


@dataclass
class PushResult:
    source_index: np.ndarray  # (m,) index into the dataset of each prototype's image
    location: np.ndarray  # (m, 2) (row, col) of its cell in the latent map
    distance: np.ndarray  # (m,) squared distance moved to the patch before the push


@torch.no_grad()
def push_prototypes(
    module, dataset, labels: np.ndarray, batch_size: int, device, num_workers=0,
    keep_latents: list | None = None, processes=None,
) -> PushResult:
    """Replace each prototype of class k by its nearest latent patch of class k.

    Afterwards every prototype is a copy of a patch of a training image, so its
    distance to that patch is zero. With ``keep_latents`` (a list), the latent
    maps are kept on the CPU, so that the last layer's features need no
    second pass through the frozen network: one tensor for all of them,
    allocated at the first batch, and one view of it per batch appended to
    the list (one block instead of a block per batch keeps the heap from
    growing beyond the maps themselves).

    With ``processes`` (a :class:`._accelerate.Processes` of more than one),
    this process searches (and keeps the latent maps of) its block of
    ``dataset`` only; the nearest patches of all blocks are then gathered.
    ``source_index`` is always an index into the whole ``dataset``.
    """
    offset = 0
    if processes is not None:
        dataset, offset = processes.shard(dataset)
    m = module.n_prototypes
    proto_class = module.prototype_class
    best = torch.full((m,), float("inf"), dtype=torch.float64, device=device)
    best_vec = module.prototypes.detach().clone()
    source = np.full(m, -1, dtype=np.int64)
    location = np.zeros((m, 2), dtype=np.int64)
    kept = None
    for start, z in latent_batches(module, dataset, batch_size, device, num_workers):
        if keep_latents is not None:
            if kept is None:
                kept = torch.empty((len(dataset),) + tuple(z.shape[1:]), dtype=z.dtype)
            kept[start : start + len(z)] = z
            keep_latents.append(kept[start : start + len(z)])
        y = torch.as_tensor(labels[offset + start : offset + start + len(z)], device=device)
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
            source[js_np] = (offset + start + img).cpu().numpy()
            location[js_np, 0] = rows.cpu().numpy()
            location[js_np, 1] = cols.cpu().numpy()
    if processes is not None:
        best, best_vec, source, location = nearest_over_processes(
            processes, best, best_vec, source, location)
    if (source < 0).any():
        raise RuntimeError("push found no image for some prototypes; is every class present?")
    module.prototypes.data.copy_(best_vec)
    return PushResult(source, location, best.cpu().numpy())


__all__ = ["PushResult", "push_prototypes"]
