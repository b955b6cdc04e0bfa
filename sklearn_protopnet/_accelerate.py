"""Data-parallel fits: one fit trained by N processes through Hugging Face
accelerate.

A script launched on N processes (``accelerate launch``, ``torchrun``) builds
the same estimator with ``accelerator=`` an ``accelerate.Accelerator`` (or
"auto") and calls ``fit`` on every process with the same data. accelerate
starts the process group; the fit itself divides the work:

- the SGD stages: every step takes one global batch of ``batch_size x N``
  images of one shuffled order (drawn on rank 0), each process a contiguous
  piece of it; the gradients of the pieces are summed over the processes,
  each weighted by its piece's share of the global batch, so the step is the
  one a single process would take on the global batch (:class:`ShardedBatches`,
  :class:`GradientAverage`). The batch metrics are averaged the same way
  (:class:`MetricAverage`), so every process records the same history;
- the push and the last layer's features: each process runs the frozen
  network over its contiguous block of the training images; the per-block
  nearest patches and the similarities are gathered, so that every process
  picks the same prototype (a real patch, with its image's index in the
  whole data set) and solves the same convex last layer;
- the initialisation, validation and the prototypes' parts run on every
  process over all images, and the network is broadcast from rank 0 after
  the initialisation, so every process starts from the same bits.

Why not skorch's ``AccelerateMixin``: it wraps the module in
``DistributedDataParallel`` once, at ``initialize``, and DDP fixes the set of
parameters it reduces then, while the staged loop freezes and unfreezes the
backbone between stages; the mixin's prepared data loaders pad an uneven last
batch with repeated images (a different gradient) and shard the validation
set (different metrics on each process). The gradient reduction here is the
one DDP does (a mean over processes of every trainable gradient), done in
one all-reduce after the backward pass instead of in buckets during it.

BatchNorm layers that train (the joint stage of a backbone with BatchNorm)
normalise each process's piece by its own statistics, as under DDP without
``SyncBatchNorm`` (which torch runs on GPUs only); their running statistics
are averaged over the processes after every step.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from skorch.callbacks import Callback

from ._distributed import import_extra


class Processes:
    """The processes of one fit: ``n`` of them, this one ``rank``.

    ``Processes()`` is a fit in one process without accelerate: every
    collective operation returns its input. :meth:`of` gives the processes of
    the ``accelerator`` parameter.
    """

    def __init__(self, n: int = 1, rank: int = 0, device=None, data_parallel: bool = False):
        self.n = int(n)
        self.rank = int(rank)
        self.device = None if device is None else torch.device(device)
        #: True when the fit goes through the data-parallel code (an accelerator
        #: was given, even of one process)
        self.data_parallel = data_parallel

    @classmethod
    def of(cls, accelerator) -> Processes:
        """The processes of the ``accelerator`` parameter (None: one, plain)."""
        if accelerator is None:
            return cls()
        if isinstance(accelerator, str):  # "auto": the processes this script runs on
            # without cpu=True, accelerate on a machine without CUDA ignores the
            # launch and makes every process a world of one
            accelerator = import_extra("accelerate").PartialState(
                cpu=not torch.cuda.is_available())
        n = int(accelerator.num_processes)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != n:
            raise RuntimeError(
                f"this process was launched as one of {launched} (WORLD_SIZE), but the "
                f"accelerator has {n} process(es): every process would train a fit of its "
                "own. On a machine without a GPU, make it with Accelerator(cpu=True) (or "
                'use accelerator="auto")')
        if n > 1 and not torch.distributed.is_initialized():
            raise RuntimeError(
                f"the accelerator has {n} processes but no torch.distributed process group "
                "is initialised; launch the script with `accelerate launch` or `torchrun`")
        device = torch.device(accelerator.device)
        if device.type == "cpu":
            device = torch.device("cpu")  # accelerate says "cpu:0" under torchrun
        return cls(n, int(accelerator.process_index), device, data_parallel=True)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints progress."""
        return self.rank == 0

    # -- division of the images ------------------------------------------
    def block(self, n_items: int) -> tuple[int, int]:
        """(start, stop) of this process's contiguous block of ``n_items``:
        blocks in rank order, sizes differing by at most one."""
        base, extra = divmod(n_items, self.n)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def shard(self, dataset):
        """(this process's block of ``dataset``, its start in ``dataset``)."""
        if self.n == 1:
            return dataset, 0
        start, stop = self.block(len(dataset))
        return dataset.subset(np.arange(start, stop)), start

    # -- collectives ---------------------------------------------------------
    def _wire(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` where the process group can send it: NCCL (GPUs) sends
        only CUDA tensors, gloo any."""
        if torch.distributed.get_backend() == "nccl" and tensor.device != self.device:
            return tensor.to(self.device)
        return tensor.contiguous()

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the processes (in place; returned)."""
        if self.n > 1:
            wire = self._wire(tensor)
            torch.distributed.all_reduce(wire, op=torch.distributed.ReduceOp.SUM)
            if wire is not tensor:
                tensor.copy_(wire)
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """``tensor`` of rank ``src`` on every process (in place; returned)."""
        if self.n > 1:
            wire = self._wire(tensor)
            torch.distributed.broadcast(wire, src=src)
            if wire is not tensor:
                tensor.copy_(wire)
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor``, stacked in rank order: (n, *shape), on
        ``tensor``'s device. The shapes must be equal."""
        if self.n == 1:
            return tensor[None]
        wire = self._wire(tensor)
        parts = [torch.empty_like(wire) for _ in range(self.n)]
        torch.distributed.all_gather(parts, wire)
        return torch.stack(parts).to(tensor.device)

    def gather_rows(self, array: np.ndarray) -> np.ndarray:
        """The rows of every process's ``array`` concatenated in rank order
        (the blocks of :meth:`block` give back the whole data set's order)."""
        if self.n == 1:
            return array
        rows = self.gather(torch.tensor([len(array)], dtype=torch.int64))[:, 0].tolist()
        padded = torch.zeros((max(rows),) + array.shape[1:], dtype=torch.from_numpy(
            array[:0]).dtype)
        padded[: len(array)] = torch.from_numpy(np.ascontiguousarray(array))
        parts = self.gather(padded)
        return np.concatenate([parts[r, : rows[r]].numpy() for r in range(self.n)])

    def gather_objects(self, obj) -> list:
        """Every process's picklable ``obj``, in rank order."""
        if self.n == 1:
            return [obj]
        out = [None] * self.n
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.n > 1:
            torch.distributed.barrier()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every process."""
        if self.n == 1:
            return
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                self.broadcast(tensor.data)

    def decorrelate_random_streams(self) -> None:
        """Give every rank but 0 a torch random stream of its own, derived from
        the fit's stream: random draws made per process (augmentation) would
        otherwise repeat across processes. Rank 0's stream is left as it is,
        so a fit of one process draws what a plain fit draws."""
        if self.rank == 0:
            return
        draw = int(torch.randint(0, 2**62, (1,)).item())
        torch.manual_seed((draw + 0x9E3779B97F4A7C15 * self.rank) % 2**63)


# ----------------------------------------------------------------------------
# the SGD stages
# ----------------------------------------------------------------------------
def global_batches(n_train: int, batch_size: int, n_processes: int) -> int:
    """Steps of one epoch: global batches of ``batch_size x n_processes``
    images; a last one too small to give every process two images is left
    out (for one process: a last batch of one image, which BatchNorm cannot
    normalise on a 1 x 1 map)."""
    size = batch_size * n_processes
    full, rest = divmod(n_train, size)
    return full + (rest >= 2 * n_processes)


class ShardedBatches(torch.utils.data.Sampler):
    """A batch sampler: this process's piece of every global batch of an epoch.

    Every epoch draws one int64 seed from the global torch stream, as
    ``RandomSampler`` does, takes rank 0's, and shuffles the ``n`` training
    images with it, so that every process (and a plain fit of one process
    with the same seed) sees the same order. Global batch ``i`` is positions
    ``[i*B*N, (i+1)*B*N)`` of that order; process ``r`` takes its ``r``-th
    contiguous piece (``B`` images; in a last, smaller global batch, pieces
    differing by at most one image).
    """

    def __init__(self, n: int, batch_size: int, processes: Processes):
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.processes = processes

    def __len__(self) -> int:
        return global_batches(self.n, self.batch_size, self.processes.n)

    def __iter__(self):
        p = self.processes
        seed = torch.empty((), dtype=torch.int64).random_()
        seed = int(p.broadcast(seed.reshape(1))[0].item())
        generator = torch.Generator()
        generator.manual_seed(seed)
        order = torch.randperm(self.n, generator=generator).tolist()
        size = self.batch_size * p.n
        for i in range(len(self)):
            batch = order[i * size : (i + 1) * size]
            base, extra = divmod(len(batch), p.n)
            start = p.rank * base + min(p.rank, extra)
            yield batch[start : start + base + (p.rank < extra)]


def _batch_norms_training(module: torch.nn.Module) -> list:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and m.training and m.track_running_stats]


class GradientAverage(Callback):
    """skorch callback: after every backward pass, the global batch's gradient.

    Each process's loss is a mean over its piece of ``n_r`` images, so the
    global batch's gradient is ``sum_r n_r * grad_r / sum_r n_r``: one
    all-reduce of the weighted gradients of every trainable parameter, the
    running statistics of the BatchNorm layers in training mode and ``n_r``.
    For the running mean that weighted average is the global batch's; for
    the running variance it leaves out the spread between the pieces' means.
    """

    def __init__(self, processes: Processes):
        self.processes = processes

    def on_grad_computed(self, net, named_parameters, batch=None, training=False, **kwargs):
        p = self.processes
        if p.n == 1:
            return
        params = [param for _, param in named_parameters]
        buffers = [b for m in _batch_norms_training(net.module_)
                   for b in (m.running_mean, m.running_var)]
        n_r = float(len(batch[0]))
        device = params[0].device if params else torch.device("cpu")
        flat = [(param.grad if param.grad is not None else torch.zeros_like(param)).reshape(-1)
                for param in params] + [b.reshape(-1) for b in buffers]
        # in the parameters' dtype (float32): the traffic DDP would have
        flat = torch.cat(flat + [torch.ones(1, device=device)]) * n_r
        p.all_sum(flat)
        flat = flat[:-1] / flat[-1]
        offset = 0
        with torch.no_grad():
            for t in params + buffers:
                size = t.numel()
                value = flat[offset : offset + size].view_as(t).to(t.dtype)
                if isinstance(t, torch.nn.Parameter):
                    if t.grad is None:
                        t.grad = value.clone()
                    else:
                        t.grad.copy_(value)
                else:
                    t.copy_(value)
                offset += size


class MetricAverage(Callback):
    """skorch callback: every process records the global batch's metrics.

    After each training batch the batch row's loss and metrics are replaced
    by their means over the global batch (each process's weighted by its
    images), and its batch size by the global batch's; the epoch means
    skorch computes from the rows are then a single process's.
    """

    def __init__(self, processes: Processes):
        self.processes = processes

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        p = self.processes
        if p.n == 1 or not training:
            return
        row = net.history[-1, "batches", -1]
        keys = sorted(k for k in row if k.startswith("train_") and k != "train_batch_size")
        n_r = float(row["train_batch_size"])
        values = torch.tensor([row[k] * n_r for k in keys] + [n_r], dtype=torch.float64)
        p.all_sum(values)
        total = values[-1].item()
        for k, v in zip(keys, (values[:-1] / total).tolist()):
            row[k] = v
        row["train_batch_size"] = int(round(total))


# ----------------------------------------------------------------------------
# the push
# ----------------------------------------------------------------------------
def nearest_over_processes(processes: Processes, best: torch.Tensor, best_vec: torch.Tensor,
                           source: np.ndarray, location: np.ndarray):
    """Each prototype's nearest patch over every process's block.

    ``best`` (m,) float64 distances, ``best_vec`` (m, D) the patches,
    ``source`` (m,) the images' indices in the whole data set (-1: none in
    this block), ``location`` (m, 2). Returns the same four, equal on every
    process: per prototype, the process with the smallest distance; of equal
    distances the lowest rank, whose block comes first, as a single pass in
    order keeps the first of equal distances.
    """
    if processes.n == 1:
        return best, best_vec, source, location
    device = best.device
    dist = processes.gather(best.cpu()).numpy()  # (n, m)
    vecs = processes.gather(best_vec.cpu())  # (n, m, D)
    sources = processes.gather(torch.from_numpy(source)).numpy()
    locations = processes.gather(torch.from_numpy(location)).numpy()
    winner = np.argmin(dist, axis=0)  # the first of equal minima
    js = np.arange(len(winner))
    return (torch.from_numpy(dist[winner, js]).to(device),
            vecs[torch.from_numpy(winner), torch.from_numpy(js)].to(device),
            sources[winner, js].copy(), locations[winner, js].copy())


__all__ = ["GradientAverage", "MetricAverage", "Processes", "ShardedBatches",
           "global_batches", "nearest_over_processes"]
