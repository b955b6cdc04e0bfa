"""Model selection on a dask cluster, and fits inside worker processes.

The dask tests run a LocalCluster of 2 worker processes (one thread each) and
need the ``[distributed]`` extra; the others need nothing beyond the test
extra: the ImportError naming the extra, the refusal of DataLoader workers
in a daemonic process, and fits in concurrent threads staying deterministic.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading

import numpy as np
import pytest
import torch

from sklearn_protopnet._distributed import EXTRA_INSTALL, import_extra

from .conftest import make_bar_images, tiny_classifier, write_pngs

try:
    import dask
    import joblib
    from dask.distributed import Client, LocalCluster
except ImportError:  # the [distributed] extra is not installed
    dask = None

needs_dask = pytest.mark.skipif(
    dask is None, reason=f"dask.distributed is not installed ({EXTRA_INSTALL})")


def small_fit(**overrides):
    """A 2-epoch classifier of the tiny kind, with augmentation on: every
    random draw of a fit (initialisation, shuffling, augmentation) counts."""
    params = dict(warm_epochs=1, joint_epochs=1, push_start=2, augment=True)
    return tiny_classifier(**(params | overrides))


@pytest.fixture(scope="module")
def bar_paths(tmp_path_factory):
    images, labels = make_bar_images(12)  # 24 images of 16 px
    return write_pngs(str(tmp_path_factory.mktemp("dask-bars")), images), labels


# ----------------------------------------------------------------------------
# without dask
# ----------------------------------------------------------------------------
def test_a_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate fails
    with pytest.raises(ImportError, match="'accelerate'.*distributed extra") as info:
        import_extra("accelerate")
    assert 'pip install "sklearn-protopnet[distributed]"' in str(info.value)
    assert import_extra("json") is sys.modules["json"]


def _fit_in_daemonic_child(paths, labels, queue):
    try:
        small_fit(num_workers=1, joint_epochs=0, push_start=1).fit(paths, labels)
        queue.put("fitted")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


def test_num_workers_in_a_daemonic_process_is_refused_with_the_fix(bar_paths):
    """A multiprocessing.Pool worker, or a dask worker by default, is
    daemonic and may not start DataLoader workers; the fit says so and how to
    get out, before any training, instead of multiprocessing's bare
    AssertionError at the first batch."""
    paths, labels = bar_paths
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_fit_in_daemonic_child, args=(paths, labels, queue),
                            daemon=True)
    child.start()
    outcome = queue.get(timeout=120)
    child.join(timeout=30)
    assert outcome.startswith("RuntimeError: num_workers=1"), outcome
    assert "daemonic process" in outcome and "num_workers=0" in outcome
    assert "'distributed.worker.daemon': False" in outcome


@pytest.mark.slow
def test_fits_in_concurrent_threads_give_the_models_of_sequential_fits(bar_paths):
    """A dask worker with several threads (``dask worker`` runs one per core
    by default) fits in threads of one process, which share the global
    random streams; each fit must still give its own seed's model."""
    paths, labels = bar_paths
    seeds = (0, 1)
    alone = [small_fit(random_state=s).fit(paths, labels).predict_proba(paths)
             for s in seeds]
    together = {}
    start = threading.Barrier(len(seeds))
    # built here: building one seeds the global stream (tiny_classifier), which
    # is the caller's to keep away from a fit running in another thread
    estimators = {s: small_fit(random_state=s) for s in seeds}

    def fit(seed):
        start.wait()
        together[seed] = estimators[seed].fit(paths, labels).predict_proba(paths)

    threads = [threading.Thread(target=fit, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not np.array_equal(alone[0], alone[1])  # the seeds do make other models
    for seed, expected in zip(seeds, alone):
        np.testing.assert_array_equal(together[seed], expected)


# ----------------------------------------------------------------------------
# on a 2-worker LocalCluster
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    """Two worker processes of one thread each. They start from a forkserver
    that has imported torch and the package once, rather than by dask's
    default spawn, where each worker (and each restart) imports them anew:
    seconds of CPU per worker on this machine. What the tests check is the
    same either way: separate processes, daemonic by default."""
    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        get_mp_context().set_forkserver_preload(["distributed", "torch", "sklearn_protopnet"])
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as c:
            yield c


def _executed(dask_worker):
    return dask_worker.state.executed_count


@needs_dask
@pytest.mark.slow
def test_grid_search_on_two_dask_workers_matches_n_jobs_1(bar_paths, client):
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    paths, labels = bar_paths
    # bit-identical floats need the same intra-op threads: dask's nanny starts
    # its workers with OMP_NUM_THREADS=1, and the test process runs one too
    assert torch.get_num_threads() == 1
    assert set(client.run(torch.get_num_threads).values()) == {1}

    grid = {"prototypes_per_class": [1, 2], "lr_prototypes": [1e-3, 3e-2]}

    def search(n_jobs):
        cv = StratifiedKFold(2, shuffle=True, random_state=0)
        return GridSearchCV(small_fit(), grid, cv=cv, scoring="neg_log_loss",
                            n_jobs=n_jobs, error_score="raise", refit=False)

    serial = search(1).fit(paths, labels)
    before = client.run(_executed)
    with joblib.parallel_backend("dask"):
        spread = search(-1).fit(paths, labels)
    ran = {w: n - before[w] for w, n in client.run(_executed).items()}
    assert len(ran) == 2 and all(n > 0 for n in ran.values()), ran  # both workers fitted

    assert spread.best_params_ == serial.best_params_
    for key in ("split0_test_score", "split1_test_score", "mean_test_score",
                "rank_test_score"):
        np.testing.assert_array_equal(spread.cv_results_[key], serial.cv_results_[key])
    assert len(set(serial.cv_results_["mean_test_score"])) == 4  # the scores tell apart


def _fit_in_worker(estimator, paths, labels):
    try:
        return estimator.fit(paths, labels).predict_proba(paths)
    except RuntimeError as exc:
        return str(exc)


def _decode_in_worker(paths, num_workers):
    from sklearn_protopnet._images import check_images, decode_all

    return decode_all(check_images(paths), (16, 16), num_workers)


@needs_dask
@pytest.mark.slow
def test_num_workers_in_a_dask_worker_is_refused_unless_not_daemonic(bar_paths, client):
    paths, labels = bar_paths
    # dask's default: daemonic workers, which may not start DataLoader workers
    assert set(client.run(lambda: multiprocessing.current_process().daemon).values()) \
        == {True}
    estimator = small_fit(num_workers=1)
    message = client.submit(_fit_in_worker, estimator, paths, labels, pure=False).result()
    assert isinstance(message, str) and message.startswith("num_workers=1"), message
    assert "in the dask worker tcp://" in message
    assert "'distributed.worker.daemon': False" in message

    # the fix the message names: the nanny reads the setting when it starts a worker
    with dask.config.set({"distributed.worker.daemon": False}):
        client.restart()
    assert set(client.run(lambda: multiprocessing.current_process().daemon).values()) \
        == {False}
    # one pass with a DataLoader worker (each pass starts its workers afresh, by
    # the worker's start method: a whole fit here would take a minute)
    with_workers = client.submit(_decode_in_worker, paths, 1, pure=False).result()
    np.testing.assert_array_equal(with_workers, _decode_in_worker(paths, 0))
