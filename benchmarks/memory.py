"""Peak memory of inference and of ``fit`` against the number of images.

Each measurement runs in a fresh process, forked from a server process that
has imported torch, skorch, torchvision's transforms and the package and done
nothing else (multiprocessing's
"forkserver"; it saves the imports, several seconds, per measurement). The
child makes a warm-up call, records its resident memory (RSS), resets the
peak, runs the measured call and records the peak RSS; the *growth* is
peak - before.

- ``inference``: N random 64 px RGB PNG files, a tiny model fitted once on 40
  of them and saved; the child loads it and runs ``transform`` and
  ``predict_proba`` on the N paths. Inference streams, so the growth should
  stay flat in N apart from the outputs (n x m similarities and n x K
  probabilities).
- ``fit``: N random 24 px RGB PNG files of 2 classes; the child fits
  SmallCNN(width=8) at 24 px, 10 prototypes per class (m = 20, D = 32, a
  6 x 6 map), batch 64, 1 warm-up + 1 joint epoch, push and last layer. What
  may grow with N: the decoded-image cache (n x 3 x H x W bytes, uint8), the
  float64 similarities of the last layer (n x m x 8 bytes), and, within what
  the cache leaves of ``memory_budget``, the latent maps a push keeps for the
  last layer after it (n x D x h x w x 4 bytes). Each N is fitted twice: with
  the default ``memory_budget`` (latents kept) and with ``memory_budget``
  equal to the cache's size (no latents kept). The table gives those
  expected sizes next to the measured growth, and the slope of the growth
  between the smallest and the largest N against the slope of the expected
  terms.

glibc keeps freed memory of many mid-sized allocations for reuse, so peak
RSS also holds memory that is free; each table is run with the default
allocator and with the settings of
``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`` (made by
``mallopt`` in the child), which return freed blocks at once and so separate
allocator caching from retained data. Run from the repository root (about 5 minutes on 2 cores):

    python benchmarks/memory.py [--mode inference|fit|both] [--allocator default|trim|both] \
        [--plot docs/images/fit_memory.png]

``--quick`` is a smoke test of a few seconds: small N, the default allocator
only, the default ``memory_budget`` only, no warm-up fit. Linux only (reads
/proc/self/status and resets the peak through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing
import os
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # measure the checkout this script is in, not an installed copy
SIZES = (500, 2000, 8000)
FIT_SIZES = (1000, 4000, 16000)
FIT_IMAGE = 24  # px, the files' size and the fit's image_size
FIT = dict(image_size=FIT_IMAGE, prototypes_per_class=10, prototype_dim=32, warm_epochs=1,
           joint_epochs=1, batch_size=64, random_state=0)
FIT_CLASSES = 2
ALLOCATORS = {"default glibc malloc": False,
              "MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0": True}
# Children are forked from a server process that has imported the package
# and done nothing else: a fresh process each time, without paying the
# imports (several seconds) per measurement.
CONTEXT = multiprocessing.get_context("forkserver")


def status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak() -> float:
    """Reset the peak (VmHWM) to the current RSS (Linux); return that RSS in MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_mib("VmRSS")


def measure(kind: str, args: dict, trim: bool, conn) -> None:
    """The child: warm up, reset the peak, run the measured call, send the figures."""
    try:
        import torch

        if trim:  # what the MALLOC_*_ variables set, for this process
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
            libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD
        torch.set_num_threads(1)
        from sklearn_protopnet import ProtoPNetClassifier

        with open(args["listing"]) as f:
            paths = f.read().split("\n")[: args["n"]]
        if kind == "inference":
            clf = ProtoPNetClassifier.load(args["model"])
            clf.predict_proba(paths[:64])  # warm-up: allocator pools, lazy imports
            before = reset_peak()
            S = clf.transform(paths)
            P = clf.predict_proba(paths)
            result = {"outputs": (S.nbytes + P.nbytes) / 2**20}
        else:
            from sklearn_protopnet.backbones import SmallCNN

            labels = np.arange(len(paths)) % FIT_CLASSES

            def make(**extra):
                torch.manual_seed(0)
                return ProtoPNetClassifier(backbone=SmallCNN(width=8), **FIT, **extra)

            if args["warm_up"]:  # lazy imports, allocator pools, the cell geometry
                make().fit(paths[:128], labels[:128])
            budget = args["memory_budget"]
            before = reset_peak()
            clf = make(**({} if budget is None else {"memory_budget": budget}))
            clf.fit(paths, labels)
            result = {"m": clf.n_prototypes_, "map": list(clf.feature_map_shape_)}
        conn.send({"before": before, "peak": status_mib("VmHWM"), **result})
    except BaseException as exc:  # noqa: BLE001 -- reported by the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def write_pngs(folder: str, n: int, size: int) -> str:
    """``n`` random RGB PNGs of ``size`` px; returns the file listing their paths."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"{i:05d}.png")
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    listing = os.path.join(folder, "paths.txt")
    with open(listing, "w") as f:
        f.write("\n".join(paths))
    return listing


def run_child(kind: str, args: dict, trim: bool) -> dict:
    """One measurement in a fresh process forked from the fork server."""
    receive, send = CONTEXT.Pipe(duplex=False)
    child = CONTEXT.Process(target=measure, args=(kind, args, trim, send))
    child.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = {"error": "no result"}
    child.join()
    if "error" in result or child.exitcode != 0:
        raise RuntimeError(f"the measuring process failed (exit {child.exitcode}): "
                           f"{result.get('error')}")
    return result


def inference(work: str, sizes, allocators) -> None:
    from sklearn_protopnet import ProtoPNetClassifier
    from sklearn_protopnet.backbones import SmallCNN

    folder = os.path.join(work, "inference")
    os.makedirs(folder)
    listing = write_pngs(folder, max(sizes), 64)
    with open(listing) as f:
        paths = f.read().split("\n")
    clf = ProtoPNetClassifier(backbone=SmallCNN(width=16), image_size=64,
                              prototypes_per_class=10, prototype_dim=32, warm_epochs=1,
                              joint_epochs=0, batch_size=64, random_state=0)
    model = os.path.join(folder, "model.protopnet")
    clf.fit(paths[:40], np.arange(40) % 2).save(model)
    print("## inference: transform + predict_proba")
    for name, trim in allocators.items():
        print(f"\n{name}\n")
        print("| images | RSS before (MiB) | peak RSS (MiB) | growth (MiB) | outputs (MiB) |")
        print("|---|---|---|---|---|")
        for n in sizes:
            r = run_child("inference", {"model": model, "listing": listing, "n": n}, trim)
            print(f"| {n} | {r['before']:.0f} | {r['peak']:.0f} | "
                  f"{r['peak'] - r['before']:.1f} | {r['outputs']:.2f} |", flush=True)


def expected_mib(n: int, m: int, map_shape, latents: bool) -> dict:
    """The sizes that may grow with n, in MiB."""
    h, w = map_shape
    out = {"cache": n * 3 * FIT_IMAGE * FIT_IMAGE / 2**20, "similarities": n * m * 8 / 2**20,
           "latents": n * FIT["prototype_dim"] * h * w * 4 / 2**20 if latents else 0.0}
    out["sum"] = sum(out.values())
    return out


def fit(work: str, sizes, allocators, warm_up: bool = True, both_budgets: bool = True
        ) -> list[dict]:
    folder = os.path.join(work, "fit")
    os.makedirs(folder)
    listing = write_pngs(folder, max(sizes), FIT_IMAGE)
    budgets = {"default": None, "= cache": "cache"} if both_budgets else {"default": None}
    rows = []
    print("\n## fit: peak RSS growth against the sizes that may grow")
    for name, trim in allocators.items():
        print(f"\n{name}\n")
        print("| images | memory_budget | RSS before (MiB) | peak RSS (MiB) | growth (MiB) | "
              "cache (MiB) | similarities (MiB) | latents kept (MiB) | expected sum (MiB) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n in sizes:
            for budget_name, budget in budgets.items():
                cache_bytes = n * 3 * FIT_IMAGE * FIT_IMAGE
                r = run_child("fit", {"listing": listing, "n": n, "warm_up": warm_up,
                                      "memory_budget": cache_bytes if budget else None}, trim)
                e = expected_mib(n, r["m"], r["map"], latents=budget is None)
                row = {"allocator": name, "images": n, "budget": budget_name,
                       "growth": r["peak"] - r["before"], **r, **e}
                rows.append(row)
                print(f"| {n} | {budget_name} | {r['before']:.0f} | {r['peak']:.0f} | "
                      f"{row['growth']:.1f} | {e['cache']:.1f} | {e['similarities']:.1f} | "
                      f"{e['latents']:.1f} | {e['sum']:.1f} |", flush=True)
        print("\nslope, smallest to largest N (bytes per image):\n")
        print("| memory_budget | measured growth | expected sum | measured / expected |")
        print("|---|---|---|---|")
        for budget_name in budgets:
            mine = [r for r in rows if r["allocator"] == name and r["budget"] == budget_name]
            lo, hi = mine[0], mine[-1]
            dn = hi["images"] - lo["images"]
            measured = (hi["growth"] - lo["growth"]) * 2**20 / dn
            expected = (hi["sum"] - lo["sum"]) * 2**20 / dn
            print(f"| {budget_name} | {measured:.0f} | {expected:.0f} | "
                  f"{measured / expected:.2f} |")
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    allocators = list(dict.fromkeys(r["allocator"] for r in rows))
    fig, axes = plt.subplots(1, len(allocators), figsize=(5.2 * len(allocators), 4),
                             squeeze=False, sharey=True)
    for ax, name in zip(axes[0], allocators):
        for budget, colour in (("default", "C0"), ("= cache", "C1")):
            mine = [r for r in rows if r["allocator"] == name and r["budget"] == budget]
            if not mine:
                continue
            n = [r["images"] for r in mine]
            ax.plot(n, [r["growth"] for r in mine], "o-", color=colour,
                    label=f"measured, memory_budget {budget}")
            offset = mine[0]["growth"] - mine[0]["sum"]  # the constant part, at the smallest N
            ax.plot(n, [r["sum"] + offset for r in mine], "--", color=colour,
                    label="expected: cache + similarities"
                          + (" + latents" if budget == "default" else "")
                          + " (+ constant)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(sorted({r["images"] for r in rows}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel(f"training images ({FIT_IMAGE} px)")
        ax.set_title(name if len(name) < 30 else "MALLOC_MMAP_THRESHOLD_=65536,\n"
                     "MALLOC_TRIM_THRESHOLD_=0", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fit's peak RSS growth (MiB)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("inference", "fit", "both"), default="both")
    parser.add_argument("--plot", metavar="PNG", help="draw the fit's growth into this file")
    parser.add_argument("--allocator", choices=("default", "trim", "both"), default="both",
                        help="glibc's default settings, the trimming ones, or both")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes, fit_sizes = SIZES, FIT_SIZES
    allocators = {name: trim for name, trim in ALLOCATORS.items()
                  if args.allocator == "both" or trim == (args.allocator == "trim")}
    if args.quick:
        sizes, fit_sizes = (32, 64), (64, 128)
        allocators = {"default glibc malloc": False}
    CONTEXT.set_forkserver_preload(["torch", "torchvision.transforms.v2", "skorch",
                                    "sklearn_protopnet"])
    with tempfile.TemporaryDirectory(prefix="protopnet-memory-") as work:
        if args.mode in ("inference", "both"):
            inference(work, sizes, allocators)
        if args.mode in ("fit", "both"):
            rows = fit(work, fit_sizes, allocators, warm_up=not args.quick,
                       both_budgets=not args.quick)
            if args.plot:
                plot(rows, args.plot)


if __name__ == "__main__":
    main()
