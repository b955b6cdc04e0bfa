"""Batches and forward passes over a data set, and the choice of device.

Every pass of the package over images goes through here: decoding into the
cache (:func:`._images.decode_all`), the BatchNorm calibration, the
initialisation, the push, the last layer's features, and inference
(``transform``, ``decision_function``, ``explain``, ``prune``). All run in
eval mode on deterministic preprocessing (no augmentation), in order.
"""

from __future__ import annotations

import copy
import threading
import warnings
import weakref

import numpy as np
import torch

from ._distributed import check_worker_processes


def resolve_device(device, cpu_fallback: bool = False) -> torch.device:
    """The torch device of the ``device`` parameter.

    A CUDA device on a machine without CUDA is an error for training; with
    ``cpu_fallback`` (inference: a model fitted on a GPU, loaded elsewhere)
    it warns and gives the CPU, where the outputs are the same.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        if cpu_fallback:
            warnings.warn(
                f"device={str(device)!r}, but CUDA is not available here; running on the "
                "CPU (set_params(device='cpu') silences this)", UserWarning, stacklevel=4,
            )
            return torch.device("cpu")
        raise ValueError(f"device={str(device)!r} was asked for, but CUDA is not available")
    return device


# The fitted network lives on the CPU (pickles and model files stay portable);
# inference on another device uses one copy of it there, made on first use and
# kept for as long as the network lives, so that nothing moves between calls
# and concurrent calls share it read-only.
_DEVICE_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DEVICE_COPIES_LOCK = threading.Lock()


def _stamp(module: torch.nn.Module) -> tuple:
    """Changes when any parameter or buffer of ``module`` changes in place."""
    return tuple((name, t._version, t.data_ptr())
                 for name, t in module.state_dict(keep_vars=True).items())


def on_device(module: torch.nn.Module, device) -> torch.nn.Module:
    """``module`` itself on the CPU, else its copy on ``device`` (in eval mode).

    The copy is made once per network and device and made again only when
    the network has changed since (a parameter or buffer written in place).
    Thread-safe: two threads predicting at once get the same copy.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return module
    key = str(device)
    with _DEVICE_COPIES_LOCK:
        copies = _DEVICE_COPIES.setdefault(module, {})
        stamp = _stamp(module)
        if key not in copies or copies[key][0] != stamp:
            moved = copy.deepcopy(module).to(device).eval()
            if device.type == "cuda":
                moved = moved.to(memory_format=torch.channels_last)
            copies[key] = (stamp, moved)
        return copies[key][1]


def iterate_batches(dataset, batch_size: int, device, num_workers: int = 0,
                    generator: torch.Generator | None = None):
    """Yield ``(start, images on device, labels)`` over ``dataset`` in order.

    On CUDA, batches come from pinned memory, are copied without blocking
    (the copy overlaps the previous batch's compute) and are laid out
    channels-last, the layout cuDNN convolutions are fastest on.

    The data loader draws a seed for its workers on every pass; it draws it
    from ``generator``, by default a generator of the pass's own, never from
    the global torch RNG: no pass changes the random stream of a fit (so
    skipping one, e.g. a forward pass served from cached latents, changes
    nothing else) or of the caller.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    check_worker_processes(num_workers)  # e.g. in a daemonic dask worker
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


@torch.no_grad()
def forward_batches(module, dataset, batch_size: int, device, num_workers=0):
    """Yield ``(start, logits, similarities, distance_map)`` per batch, in eval mode.

    The one inference pass: ``transform``, ``decision_function`` and the
    explanations all read these tensors, so they cannot drift apart. The
    distance map and the similarities are float64 (accurate near zero, see
    :mod:`._network`), and the logits are their float64 product with the
    last layer's weights, so that they equal ``transform @ coef_.T`` and the
    sum of the contributions to float64 rounding.
    """
    module.eval()
    weight = module.last_layer.weight.detach().double()
    for start, images, _ in iterate_batches(dataset, batch_size, device, num_workers):
        d = module.distance_map(module.latent(images))
        s, _ = module.pool(d)
        yield start, s.double() @ weight.T, s, d


@torch.no_grad()
def latent_batches(module, dataset, batch_size: int, device, num_workers=0):
    """Yield ``(start, z)`` per batch: the latent maps (N, D, h, w), in eval mode."""
    module.eval()
    for start, images, _ in iterate_batches(dataset, batch_size, device, num_workers):
        yield start, module.latent(images)


@torch.no_grad()
def similarities_of_latents(module, latents, device):
    """(logits, similarities) as float64 numpy arrays from latent maps already
    computed (a list of (N, D, h, w) tensors, in order), as
    :func:`similarities` would give them from the images."""
    weight = module.last_layer.weight.detach().double()

    def batches():
        start = 0
        for z in latents:
            d = module.distance_map(z.to(device))
            s, _ = module.pool(d)
            yield start, s.double() @ weight.T, s, d
            start += len(z)

    return gather_outputs(batches())


def gather_outputs(batches):
    """(logits, similarities) as float64 numpy arrays, in order, from the
    batches of :func:`forward_batches`."""
    logits, sims = [], []
    for _, out, s, _ in batches:
        logits.append(out.double().cpu().numpy())
        sims.append(s.double().cpu().numpy())
    return np.concatenate(logits), np.concatenate(sims)


def similarities(module, dataset, batch_size: int, device, num_workers=0):
    """(logits, similarities) of every image in ``dataset``, float64 numpy, in order."""
    return gather_outputs(forward_batches(module, dataset, batch_size, device, num_workers))


__all__ = ["forward_batches", "gather_outputs", "iterate_batches", "latent_batches",
           "on_device", "resolve_device", "similarities_of_latents",
           "similarities"]
