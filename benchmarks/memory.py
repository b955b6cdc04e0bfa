"""Peak memory of transform / predict_proba against the number of images.

Writes N random 64 px RGB images as PNG files, fits a tiny model once on 40
of them and saves it, then for each N starts a fresh process that loads the
model, records its resident memory (RSS) and resets the peak, runs ``transform`` and
``predict_proba`` on the N paths and records the peak RSS. If inference
streams, the growth (peak - before) stays flat in N apart from the outputs
(n x m similarities and n x K probabilities). Run from the repository root:

    python benchmarks/memory.py

Linux only (reads /proc/self/status and resets the peak through
/proc/self/clear_refs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # measure the checkout this script is in, not an installed copy
SIZES = (500, 2000, 8000)

CHILD = """
import sys, numpy as np, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from sklearn_protopnet import ProtoPNetClassifier
def status_mib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
clf = ProtoPNetClassifier.load(sys.argv[1])
paths = open(sys.argv[2]).read().split("\\n")[: int(sys.argv[3])]
clf.predict_proba(paths[:64])  # warm-up: allocator pools, lazy imports
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS (Linux)
before = status_mib("VmRSS")
S = clf.transform(paths)
P = clf.predict_proba(paths)
peak = status_mib("VmHWM")
print(before, peak, (S.nbytes + P.nbytes) / 2**20)
"""


def main() -> None:
    from sklearn_protopnet import ProtoPNetClassifier
    from sklearn_protopnet.backbones import SmallCNN

    work = tempfile.mkdtemp(prefix="protopnet-memory-")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(max(SIZES)):
        path = os.path.join(work, f"{i:05d}.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    with open(os.path.join(work, "paths.txt"), "w") as f:
        f.write("\n".join(paths))
    labels = np.arange(40) % 2
    clf = ProtoPNetClassifier(backbone=SmallCNN(width=16), image_size=64,
                              prototypes_per_class=10, prototype_dim=32, warm_epochs=1,
                              joint_epochs=0, batch_size=64, random_state=0)
    clf.fit(paths[:40], labels).save(os.path.join(work, "model.protopnet"))

    code = CHILD.format(root=ROOT)
    # glibc keeps freed memory of many mid-sized allocations (decoded images,
    # batches) for reuse; with a fixed mmap threshold and no trim threshold it
    # returns it at once, which separates allocator caching from retained data.
    allocators = {"default glibc malloc": {},
                  "MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0":
                      {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}}
    for name, extra_env in allocators.items():
        print(f"\n{name}\n")
        print("| images | RSS before (MiB) | peak RSS (MiB) | growth (MiB) | outputs (MiB) |")
        print("|---|---|---|---|---|")
        for n in SIZES:
            out = subprocess.run([sys.executable, "-c", code,
                                  os.path.join(work, "model.protopnet"),
                                  os.path.join(work, "paths.txt"), str(n)],
                                 capture_output=True, text=True, check=True, cwd=ROOT,
                                 env={**os.environ, **extra_env})
            before, peak, outputs = (float(v) for v in out.stdout.split())
            print(f"| {n} | {before:.0f} | {peak:.0f} | {peak - before:.1f} | "
                  f"{outputs:.2f} |", flush=True)

if __name__ == "__main__":
    main()
