"""A fit over more images than ``memory_budget`` holds streams them from
their files with flat memory.

One child process (its own allocator, nothing left over from other tests)
fits N and then 4N images at 96 px, whose decoded pixels would take 27 KiB
each, under a budget of a few bytes, and reports the peak resident memory
(VmHWM, reset before each fit) above the memory at the start of each fit.
What may grow with n is the n x m similarities of the last layer (and the
labels and paths): bytes per image, against the 27 KiB of a decoded image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import make_bar_images, write_pngs

SIDE = 96  # image_size: decoded, an image is 3 x 96 x 96 bytes
N = 150

CHILD = """
import json, sys, numpy as np, torch
torch.set_num_threads(1)
from sklearn_protopnet import ProtoPNetClassifier

def status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) becomes the current RSS
    return status_kib("VmRSS")

paths = sys.argv[1].split("\\n")
budget = int(sys.argv[2])
labels = np.arange(len(paths)) % 2

def make():
    with torch.random.fork_rng():
        torch.manual_seed(0)  # a cheap backbone: 8 x 8 patches, a 12 x 12 map
        backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 8, stride=8), torch.nn.ReLU())
    return ProtoPNetClassifier(backbone=backbone, image_size={side}, prototypes_per_class=2,
                               prototype_dim=8, prototype_init="uniform", warm_epochs=1,
                               joint_epochs=0, batch_size=32, augment=False,
                               random_state=0, memory_budget=budget)

make().fit(paths[:64], labels[:64])  # warm-up: lazy imports, allocator pools
growth = {{}}
for n in sys.argv[3:]:
    n = int(n)
    before = reset_peak()
    clf = make().fit(paths[:n], labels[:n])
    growth[n] = (status_kib("VmHWM") - before) * 1024
print(json.dumps(growth))
"""


def peak_growth(paths, budget, sizes) -> dict:
    """Bytes of peak RSS above the start of a fit, for fits of each size."""
    env = {**os.environ,
           # every large block is its own mapping, returned when freed: RSS then
           # shows what the fit holds, not what glibc kept of earlier blocks
           "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(side=SIDE), "\n".join(paths), str(budget),
         *map(str, sizes)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {int(k): v for k, v in json.loads(done.stdout.splitlines()[-1]).items()}


@pytest.mark.slow
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
def test_a_fit_over_4x_more_images_than_the_budget_streams_with_flat_memory(tmp_path):
    images, _ = make_bar_images(2 * N, size=16)  # small files, upscaled to 96 px
    paths = write_pngs(str(tmp_path), images)
    order = np.random.default_rng(0).permutation(len(paths))
    paths = [paths[i] for i in order] * 2  # 4N paths, both classes throughout
    decoded = 3 * SIDE * SIDE  # bytes of one decoded image

    growth = peak_growth(paths, budget=decoded, sizes=(N, 4 * N))
    extra = growth[4 * N] - growth[N]
    # 3N more images would take 3N x 27 KiB decoded (12 MiB): the fit keeps
    # well under a quarter of that more, which is bytes per image
    assert extra < 0.25 * 3 * N * decoded, (growth, 3 * N * decoded)
