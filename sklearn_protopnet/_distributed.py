"""Fits that run elsewhere: the optional ``[distributed]`` extra, and the
checks a fit needs inside a worker process.

Model selection spreads whole fits over a dask cluster through joblib's dask
backend (``docs/scaling.md``); the package imports no dask for that. What it
does need:

- :func:`import_extra`: a module of the ``[distributed]`` extra, or an
  ImportError naming the ``pip install`` command that provides it.
- :func:`check_worker_processes`: a DataLoader with ``num_workers > 0``
  starts child processes, which a daemonic process (a dask worker in dask's
  default configuration, a ``multiprocessing.Pool`` worker) may not do;
  the error Python gives there (an AssertionError from the depths of
  ``multiprocessing``) names neither the cause nor the fix, this one does.
"""

from __future__ import annotations

import importlib
import multiprocessing
import sys

EXTRA_INSTALL = 'pip install "sklearn-protopnet[distributed]"'


def import_extra(name: str):
    """The module ``name`` of the ``[distributed]`` extra (dask, distributed,
    accelerate), imported; an ImportError naming the extra when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"{name!r} is needed here but is not installed; it comes with the "
            f"distributed extra: {EXTRA_INSTALL}"
        ) from exc


def _where() -> str:
    """What the current daemonic process is, in words."""
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            worker = distributed.get_worker()
        except (ValueError, AttributeError):
            worker = None
        if worker is not None:
            return f"the dask worker {worker.address}"
    return f"the daemonic process {multiprocessing.current_process().name!r}"


def check_worker_processes(num_workers: int) -> None:
    """Refuse DataLoader worker processes where none can be started.

    A daemonic process may not have children. dask's nanny starts its
    workers daemonic unless ``distributed.worker.daemon`` is False, so a fit
    with ``num_workers > 0`` inside a dask task would fail at its first
    batch with "daemonic processes are not allowed to have children"; this
    raises first, with the two ways out.
    """
    if num_workers == 0 or not multiprocessing.current_process().daemon:
        return
    raise RuntimeError(
        f"num_workers={num_workers} asks for DataLoader worker processes, but this runs "
        f"in {_where()}, and a daemonic process may not start child processes. Use "
        "num_workers=0 in this process, or start the dask workers non-daemonic: "
        "dask.config.set({'distributed.worker.daemon': False}) before creating the "
        "LocalCluster, or DASK_DISTRIBUTED__WORKER__DAEMON=False in the environment of "
        "`dask worker`."
    )


__all__ = ["EXTRA_INSTALL", "check_worker_processes", "import_extra"]
