"""Prototype projection ("push") and the fixed-feature passes over a data set.

Both run in eval mode on deterministic preprocessing (no augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._network import ProtoPNet


def iterate_batches(dataset, batch_size: int, device, num_workers: int = 0,
                    generator: torch.Generator | None = None):
    """Yield ``(start, images on device, labels)`` over ``dataset`` in order.

    On CUDA, batches come from pinned memory, are copied without blocking
    (the copy overlaps the previous batch's compute) and are laid out
    channels-last, the layout cuDNN convolutions are fastest on.

    The data loader draws a seed for its workers on every pass, from
    ``generator`` when given, else from the global torch RNG (the passes
    inside ``fit``, whose seeded stream includes those draws).
    """
    cuda = torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=cuda,
        generator=generator,
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
def forward_batches(module: ProtoPNet, dataset, batch_size: int, device, num_workers=0,
                    generator: torch.Generator | None = None):
    """Yield ``(start, logits, similarities, distance_map)`` per batch, in eval mode.

    The one inference pass: ``transform``, ``decision_function`` and the
    explanations all read these tensors, so they cannot drift apart. The
    logits are the float64 product of the similarities and the last layer's
    weights, so that they equal ``transform @ coef_.T`` and the sum of the
    contributions to float64 rounding (the float32 layer would differ from
    both by float32 rounding).
    """
    module.eval()
    weight = module.last_layer.weight.detach().double()
    for start, images, _ in iterate_batches(dataset, batch_size, device, num_workers,
                                            generator):
        d = module.distance_map(module.latent(images))
        s, _ = module.pool(d)
        yield start, s.double() @ weight.T, s, d


def gather_outputs(batches):
    """(logits, similarities) as float64 numpy arrays, in order, from the
    batches of :func:`forward_batches`."""
    logits, sims = [], []
    for _, out, s, _ in batches:
        logits.append(out.double().cpu().numpy())
        sims.append(s.double().cpu().numpy())
    return np.concatenate(logits), np.concatenate(sims)


def similarities(module: ProtoPNet, dataset, batch_size: int, device, num_workers=0):
    """(logits, similarities) of every image in ``dataset``, float64 numpy, in order."""
    return gather_outputs(forward_batches(module, dataset, batch_size, device, num_workers))


@torch.no_grad()
def discriminative_patches(
    module: ProtoPNet, dataset, labels: np.ndarray, batch_size: int, device, num_workers=0,
    images_per_class: int = 32, candidates_per_class: int = 512, generator=None,
) -> PushResult:
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
    gap = np.zeros(module.n_prototypes)
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
            gap[j] = float(score[c])
    module.prototypes.data.copy_(new)
    return PushResult(source, location, gap)
