"""Training checkpoints: identity, atomic writes, loading and refusal.

A checkpoint is one file, ``<checkpoint_dir>/protopnet-checkpoint.pt``,
written with ``torch.save`` and read back with ``torch.load(weights_only=True)``
so that reading it never runs code from it. It holds:

- ``identity``: a JSON text describing the parameters that affect training
  and a fingerprint of the data (paths with their sizes and modification
  times, or a hash of the image array) and of the labels. A checkpoint whose
  identity differs from the current fit is refused with the differences
  named, never silently used.
- ``seed``: the seed the interrupted fit drew, so that ``random_state=None``
  resumes on the same random stream.
- ``state``: what the training loop needs to continue after its last
  completed step (see :mod:`._training`).

Writes are atomic: a temporary file in the same directory is written,
flushed to disk (``fsync``) and renamed over the previous checkpoint
(``os.replace``), so a process killed at any moment leaves either the old or
the new checkpoint, never a torn one.

In a data-parallel fit every process reads the checkpoint, and only rank 0
writes and deletes it (``Checkpoint(..., write=False)`` on the others).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import random
import tempfile
import threading
from contextlib import contextmanager

import numpy as np
import torch

from ._params import NOT_IN_IDENTITY

CHECKPOINT_NAME = "protopnet-checkpoint.pt"
CHECKPOINT_FORMAT = 2



def describe_value(value):
    """A JSON-able description of a parameter value, equal for equal settings."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return repr(float(value))  # repr keeps every bit and handles nan/inf
    if isinstance(value, (tuple, list)):
        return [describe_value(v) for v in value]
    if isinstance(value, dict):  # e.g. class_weight: sorted (key, value) pairs
        return sorted([str(k), describe_value(v)] for k, v in value.items())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, np.random.RandomState):
        # the seed actually used is stored in the checkpoint itself
        return "RandomState instance"
    if isinstance(value, torch.nn.Module):
        digest = hashlib.sha256()
        for name, tensor in value.state_dict().items():
            digest.update(name.encode())
            digest.update(_tensor_bytes(tensor))
        return {"module": f"{type(value).__module__}.{type(value).__qualname__}",
                "state_sha256": digest.hexdigest()}
    if callable(value):
        return {"callable": f"{getattr(value, '__module__', '?')}."
                            f"{getattr(value, '__qualname__', type(value).__qualname__)}"}
    return {"repr": repr(value)}


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().cpu().contiguous().reshape(-1)
    header = f"{t.dtype}{tuple(tensor.shape)}".encode()
    return header + t.view(torch.uint8).numpy().tobytes()


def data_fingerprint(source, classes, y_enc, sample_weight=None) -> str:
    """sha256 over the images (paths + size + mtime, or the array), labels and
    image weights."""
    digest = hashlib.sha256()
    if source.is_paths:
        for path in source.paths:
            st = os.stat(path)
            digest.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        array = np.ascontiguousarray(source.array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    digest.update(repr([str(c) for c in classes]).encode())
    digest.update(np.ascontiguousarray(y_enc, dtype=np.int64).tobytes())
    if sample_weight is not None:
        digest.update(b"weights")
        digest.update(np.ascontiguousarray(sample_weight, dtype=np.float64).tobytes())
    return digest.hexdigest()


def training_identity(params: dict, source, classes, y_enc, sample_weight=None) -> dict:
    """The identity a checkpoint must match to be resumed from."""
    described = {k: describe_value(v) for k, v in sorted(params.items())
                 if k not in NOT_IN_IDENTITY}
    weights = params.get("weights")
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        st = os.stat(weights)  # a weights file replaced in place changes the fit
        described["weights"] = [os.fspath(weights), st.st_size, st.st_mtime_ns]
    return {
        "format": CHECKPOINT_FORMAT,
        "params": described,
        "data": data_fingerprint(source, classes, y_enc, sample_weight),
    }


def _differences(saved: dict, current: dict) -> list[str]:
    found = []
    if saved.get("format") != current["format"]:
        found.append(f"checkpoint format {saved.get('format')!r} (this version writes "
                     f"{current['format']})")
    old, new = saved.get("params", {}), current["params"]
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            found.append(f"{key}: checkpoint {old.get(key, '<absent>')!r}, "
                         f"now {new.get(key, '<absent>')!r}")
    if saved.get("data") != current["data"]:
        found.append("the training data or labels (paths, file sizes or modification "
                     "times, image values, or y) differ")
    return found


class Checkpoint:
    """The checkpoint of one fit in ``directory``.

    Parameters
    ----------
    directory : str or path
        Created if missing.
    identity : dict
        From :func:`training_identity`.
    write : bool, default=True
        False: :meth:`save` and :meth:`remove` do nothing (the processes of a
        data-parallel fit other than rank 0).

    Attributes
    ----------
    state : dict or None
        The saved training state when a matching checkpoint was found.
    seed : int or None
        The seed of the fit that wrote it.
    """

    def __init__(self, directory, identity: dict, write: bool = True):
        self.write = write
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, CHECKPOINT_NAME)
        self.identity = identity
        self.state = None
        self.seed = None

    def load(self) -> Checkpoint:
        """Read an existing checkpoint; refuse one made for another fit."""
        if not os.path.exists(self.path):
            return self
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            saved = json.loads(payload["identity"])
        except Exception as exc:
            raise ValueError(
                f"cannot read the checkpoint {self.path!r} ({type(exc).__name__}: {exc}); "
                "delete it to start the fit afresh"
            ) from exc
        differences = _differences(saved, self.identity)
        if differences:
            raise ValueError(
                f"the checkpoint {self.path!r} was written by a fit with other parameters "
                "or data, so it is not resumed: " + "; ".join(differences)
                + ". Use another checkpoint_dir, or delete the file to start afresh."
            )
        self.state = payload["state"]
        self.seed = int(payload["seed"])
        return self

    def save(self, state: dict) -> None:
        """Write ``state`` atomically (temporary file, fsync, rename)."""
        if not self.write:
            return
        os.makedirs(self.directory, exist_ok=True)
        payload = {"identity": json.dumps(self.identity), "seed": int(self.seed),
                   "state": state}
        atomic_write(self.path, lambda f: torch.save(payload, f),
                     prefix=".protopnet-checkpoint-")

    def remove(self) -> None:
        """Delete the checkpoint once the fit it belongs to has finished."""
        if not self.write:
            return
        if os.path.exists(self.path):
            os.unlink(self.path)


def atomic_write(path, write, prefix: str = ".protopnet-") -> None:
    """Write a file so that ``path`` holds either its old or its whole new
    content, even if the process dies: ``write(f)`` fills a temporary file
    in the same folder, which is flushed to disk and renamed over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(folder)


def _fsync_directory(directory: str) -> None:
    # makes the rename itself durable; not possible on every platform
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------
# random number generator states as tensors (weights_only-loadable)
# ----------------------------------------------------------------------------
def get_rng_states() -> dict:
    """torch (CPU and CUDA), numpy and python ``random`` global states."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python_version": int(version),
        "python_mt": torch.tensor(mt, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_name": str(np_name),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_cached": float(np_cached),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def set_rng_states(states: dict) -> None:
    """Set the global states saved by :func:`get_rng_states`."""
    torch.set_rng_state(states["torch"])
    random.setstate((states["python_version"],
                     tuple(int(v) for v in states["python_mt"].tolist()),
                     states["python_gauss"]))
    np.random.set_state((states["numpy_name"],
                         states["numpy_keys"].numpy().astype(np.uint32),
                         states["numpy_pos"], states["numpy_has_gauss"],
                         states["numpy_cached"]))
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


#: Held while a fit owns the process's global random streams (see below).
_GLOBAL_STREAMS = threading.RLock()


@contextmanager
def random_states_kept(cuda_devices=()):
    """Restore the global torch (CPU and ``cuda_devices``), numpy and python
    ``random`` states on exit: a fit seeds them and a resumed fit sets them
    from its checkpoint, and the caller's streams must not notice.

    One thread at a time: the streams are the process's, so two fits in
    threads of one process (a dask worker with several threads, joblib's
    threading backend) would draw from each other's stream and give models
    that depend on timing. A fit in another thread waits for this one."""
    with _GLOBAL_STREAMS:
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=list(cuda_devices)):
                yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
