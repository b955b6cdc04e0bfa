"""Training and inference speed, in plain epochs, against the reference's way.

All ratios are measured in one run, on the same PNG files, the same backbone
(ResNet-18 from random weights) and the same image size:

- the *plain epoch*: one training epoch of a plain torchvision ResNet-18
  classifier (Adam, cross-entropy) over a ``datasets.ImageFolder`` loader of
  the same files, decoding and resizing every epoch, num_workers=0, timed
  after one warm-up batch;
- *ours*: ``ProtoPNetClassifier.fit`` (1 warm-up + 1 joint epoch, then the
  final push and the convex last layer), its wall time and its phases from
  ``history_``;
- *the reference's last layer*, written here from its description: after our
  fit, the fitted network's last layer is reset to +1 / -0.5, everything else
  is frozen, and 20 epochs of Adam (lr 1e-4) over the decoded training images
  minimise mean cross-entropy + 1e-4 * L1 of the off-class weights, with a
  forward pass through the frozen network on every batch. The whole schedule
  the reference's way is approximated as our fit time minus our last layer's
  time plus the reference last layer's time;
- the push's throughput against ``predict_proba``'s, and ``explain`` of 16
  images against ``predict_proba`` of the same 16.

Data: 480 RGB 64 px images of 4 classes (a coloured shape per class, on
noise; seed fixed), written as ``folder/class/i.png``, trained at 128 px;
10 prototypes per class, prototype_dim=128, batch 80.

Run (``--runs 3``: about 5-10 minutes on 2 cores; ``--quick`` is a smoke test
of a few seconds: 16 images at 32 px, batch 8, 2 reference epochs, one run):

    python benchmarks/speed.py [--runs 3] [--quick]

``--fit-only`` runs our fit once and prints its phases, with the warm-up and
joint epochs inside functions named ``warm_epoch`` and ``joint_epoch``, for a
sampling profiler to tell them apart:

    py-spy record -r 25 --format raw -o fit.txt -- python benchmarks/speed.py --fit-only

On a GPU, ``--device cuda`` runs the plain epoch, our fit, the reference's
last layer and inference there (``--mixed-precision``: our SGD stages under
float16 autocast); the timings synchronise the device before each clock read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet._batches import similarities
from sklearn_protopnet._images import ImageDataset, check_images, decode_all
from sklearn_protopnet._last_layer import objective

N_CLASSES = 4
REFERENCE_EPOCHS = 20
REFERENCE_LR = 1e-4
REFERENCE_L1 = 1e-4
DEFAULT_L2 = 1e-4  # the estimator's last_layer_l2 default


# ----------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------
def shape_image(rng, label: int, size: int) -> np.ndarray:
    """A coloured shape of class ``label`` on noise, (size, size, 3) uint8."""
    img = rng.integers(0, 90, size=(size, size, 3)).astype(np.float64)
    colours = [(230, 40, 40), (40, 200, 60), (50, 80, 230), (230, 210, 40)]
    r = rng.uniform(0.18, 0.3) * size
    cy, cx = rng.uniform(r, size - r, size=2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    if label == 0:  # disc
        mask = dy**2 + dx**2 <= r**2
    elif label == 1:  # square
        mask = (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    elif label == 2:  # triangle
        mask = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    else:  # cross
        mask = ((np.abs(dy) <= r * 0.3) | (np.abs(dx) <= r * 0.3)) & \
               (np.abs(dy) <= r) & (np.abs(dx) <= r)
    img[mask] = np.asarray(colours[label]) + rng.normal(0, 15, size=(int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(root: Path, n: int, size: int, seed: int = 0):
    """``n`` PNG files as root/class_k/i.png; return (paths, labels)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % N_CLASSES
    paths = []
    for i, label in enumerate(labels):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i}.png"
        Image.fromarray(shape_image(rng, int(label), size)).save(path)
        paths.append(str(path))
    return paths, labels


# ----------------------------------------------------------------------------
# the plain epoch
# ----------------------------------------------------------------------------
def sync(device) -> None:
    """Wait for the device's queued work, so that a clock read after it is true."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def plain_epoch(root: Path, image_size: int, batch_size: int, device="cpu") -> float:
    """Seconds of one epoch of a plain ResNet-18 classifier over ImageFolder."""
    from torchvision import datasets, models, transforms

    transform = transforms.Compose([
        transforms.Resize((image_size, image_size)),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    data = datasets.ImageFolder(str(root), transform=transform)
    cuda = torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                         num_workers=0, pin_memory=cuda)
    model = models.resnet18(weights=None, num_classes=N_CLASSES).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    x, y = next(iter(loader))  # warm-up batch
    step(x, y)
    sync(device)
    t0 = time.perf_counter()
    for x, y in loader:
        step(x, y)
    sync(device)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------
# ours
# ----------------------------------------------------------------------------
def fit_ours(paths, labels, image_size: int, batch_size: int, device="cpu",
             mixed_precision=False):
    clf = ProtoPNetClassifier(backbone="resnet18", weights=None, image_size=image_size,
                              prototypes_per_class=10, prototype_dim=128,
                              batch_size=batch_size, warm_epochs=1, joint_epochs=1,
                              push_start=1000, random_state=0, device=device,
                              mixed_precision=mixed_precision)
    t0 = time.perf_counter()
    clf.fit(paths, labels)
    return clf, time.perf_counter() - t0


def phases(clf, wall: float) -> dict:
    """Seconds per phase from ``history_``; what is not recorded is the rest."""
    out = {}
    for record in clf.history_:
        stage = record.get("stage")
        if stage == "last_layer":
            out["last layer: features"] = record["features_dur"]
            out["last layer: solve"] = record["dur"] - record["features_dur"]
            out["last layer (total)"] = record["dur"]
        elif "dur" in record:
            name = {"warm": "warm-up epoch", "joint": "joint epoch", "push": "push",
                    "batchnorm_calibration": "BatchNorm calibration"}.get(stage, stage)
            out[name] = record["dur"]
    recorded = sum(v for k, v in out.items()
                   if k not in ("last layer: features", "last layer: solve"))
    out["not recorded (build, decode, prototype init, parts)"] = wall - recorded
    out["whole fit (wall)"] = wall
    return out


# ----------------------------------------------------------------------------
# the reference's last layer
# ----------------------------------------------------------------------------
def reference_last_layer(module, images: torch.Tensor, y: np.ndarray, batch_size: int,
                         epochs: int = REFERENCE_EPOCHS, device="cpu"):
    """``epochs`` (20) epochs of Adam on the last layer through the frozen network
    (moved to ``device`` and back); seconds."""
    module.to(device)
    module.set_trainable(backbone=False, add_on=False, prototypes=False)
    module.eval()
    module.reset_last_layer()
    weight = module.last_layer.weight
    weight.requires_grad_(True)
    off = (~module.own_class_mask()).to(weight.dtype)
    opt = torch.optim.Adam([weight], lr=REFERENCE_LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    data = torch.utils.data.TensorDataset(images, torch.as_tensor(y, dtype=torch.int64))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, target in loader:
            x, target = x.to(device, non_blocking=True), target.to(device, non_blocking=True)
            logits, _ = module(x)
            loss = loss_fn(logits, target) + REFERENCE_L1 * (weight * off).abs().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    sync(device)
    dur = time.perf_counter() - t0
    weight.requires_grad_(False)
    module.cpu()
    return dur


def fit_only(paths, labels, image_size, batch, device, mixed_precision) -> None:
    """One fit of ours, its epochs marked for a profiler; print its phases."""
    from sklearn_protopnet import _training

    real = _training._Loop._sgd_epoch

    def warm_epoch(loop, dataset, epoch):
        return real(loop, dataset, epoch)

    def joint_epoch(loop, dataset, epoch):
        return real(loop, dataset, epoch)

    def marked(loop, dataset, epoch):
        epoch_fn = warm_epoch if epoch <= loop.hp.warm_epochs else joint_epoch
        return epoch_fn(loop, dataset, epoch)

    _training._Loop._sgd_epoch = marked
    try:
        clf, wall = fit_ours(paths, labels, image_size, batch, device, mixed_precision)
    finally:
        _training._Loop._sgd_epoch = real
    print("| phase | seconds |\n|---|---|")
    for name, value in phases(clf, wall).items():
        print(f"| {name} | {value:.2f} |")


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", help="e.g. cuda: everything runs there")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="our SGD stages under float16 autocast (CUDA only)")
    parser.add_argument("--fit-only", action="store_true",
                        help="one fit of ours, its epochs marked for a profiler")
    args = parser.parse_args()
    n, size, image_size, batch = 480, 64, 128, 80
    reference_epochs = REFERENCE_EPOCHS
    if args.quick:
        n, size, image_size, batch = 16, 32, 32, 8
        args.runs, reference_epochs = 1, 2
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        paths, labels = write_images(root, n, size)
        if args.fit_only:
            fit_only(paths, labels, image_size, batch, args.device, args.mixed_precision)
            return

        plain_times, fits = [], []
        for _ in range(args.runs):
            plain_times.append(plain_epoch(root, image_size, batch, args.device))
            clf, wall = fit_ours(paths, labels, image_size, batch, args.device,
                                 args.mixed_precision)
            fits.append(phases(clf, wall))
        plain = statistics.median(plain_times)
        ours = {k: statistics.median(f[k] for f in fits) for k in fits[0]}

        # decoding alone, as the fit does it (the fit does not record it)
        source = check_images(paths)
        t0 = time.perf_counter()
        images = decode_all(source, (image_size, image_size))
        decode_dur = time.perf_counter() - t0

        # inference on the last fit's model, before its last layer is touched
        module = clf.module_
        clf.predict_proba(paths[:16])  # warm-up
        predict_dur = median_time(lambda: clf.predict_proba(paths), args.runs)
        predict16 = median_time(lambda: clf.predict_proba(paths[:16]), args.runs)
        explain16 = median_time(lambda: clf.explain(paths[:16]), args.runs)

        # the objectives, on the similarities of our inference pass
        own = module.own_class_mask().numpy()
        dataset = ImageDataset(source, (image_size, image_size), cache=images)
        _, S = similarities(module, dataset, batch, "cpu")  # the fitted module's device
        y = np.asarray(clf.classes_.searchsorted(labels))
        W_ours = module.last_layer.weight.detach().double().numpy().copy()
        ref_dur = reference_last_layer(module, images, y, batch, reference_epochs,
                                       args.device)
        W_ref = module.last_layer.weight.detach().double().numpy().copy()
        with torch.no_grad():  # our solution back in place
            module.last_layer.weight.copy_(torch.from_numpy(W_ours))
        obj = {(who, l2): objective(W, S, y, own, REFERENCE_L1, l2)
               for who, W in (("ours", W_ours), ("ref", W_ref)) for l2 in (0.0, DEFAULT_L2)}
    ours_ll = ours["last layer (total)"]
    fit_wall = ours["whole fit (wall)"]
    ref_schedule = fit_wall - ours_ll + ref_dur
    push_ips = n / ours["push"]
    predict_ips = n / predict_dur

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {n} images "
          f"({size} px PNG) at {image_size} px, batch {batch}, ResNet-18 from random "
          f"weights; device {args.device}"
          f"{', mixed precision' if args.mixed_precision else ''}; medians of {args.runs} "
          f"runs (fit, plain epoch); plain epoch {plain:.2f} s")
    print()
    print("| phase | seconds | plain epochs |")
    print("|---|---|---|")
    print(f"| plain epoch (ImageFolder, ResNet-18) | {plain:.2f} | 1.00 |")
    for name, value in ours.items():
        print(f"| ours: {name} | {value:.2f} | {value / plain:.2f} |")
    print(f"| decode_all alone (timed apart; inside 'not recorded') | {decode_dur:.2f} | "
          f"{decode_dur / plain:.2f} |")
    print(f"| reference last layer ({reference_epochs} Adam epochs) | {ref_dur:.2f} | "
          f"{ref_dur / plain:.2f} |")
    print(f"| reference schedule (fit - our last layer + reference's) | {ref_schedule:.2f} | "
          f"{ref_schedule / plain:.2f} |")
    print(f"| predict_proba of {n} paths | {predict_dur:.2f} | {predict_dur / plain:.2f} |")
    print(f"| predict_proba of 16 paths | {predict16:.3f} | {predict16 / plain:.3f} |")
    print(f"| explain of 16 paths | {explain16:.3f} | {explain16 / plain:.3f} |")
    print()
    print("| ratio | measured | target | met |")
    print("|---|---|---|---|")

    def row(name, value, target, ok, fmt="{:.2f}"):
        print(f"| {name} | {fmt.format(value)} | {target} | {'yes' if ok else 'no'} |")

    row("whole fit / plain epoch", fit_wall / plain, "<= 1.7", fit_wall / plain <= 1.7)
    row("reference schedule / ours", ref_schedule / fit_wall, ">= 5",
        ref_schedule / fit_wall >= 5)
    joint = ours["joint epoch"] / plain
    row("joint epoch / plain epoch", joint, "<= 0.7", joint <= 0.7)
    speedup = ref_dur / ours_ll
    no_worse = obj[("ours", 0.0)] <= obj[("ref", 0.0)] and \
        obj[("ours", DEFAULT_L2)] <= obj[("ref", DEFAULT_L2)]
    row("reference last layer / ours (time)", speedup, ">= 20", speedup >= 20, "{:.1f}")
    for l2 in (0.0, DEFAULT_L2):
        print(f"| last-layer objective, l1=1e-4, l2={l2:g}: ours / reference | "
              f"{obj[('ours', l2)]:.5f} / {obj[('ref', l2)]:.5f} | ours <= reference | "
              f"{'yes' if obj[('ours', l2)] <= obj[('ref', l2)] else 'no'} |")
    row(f"push throughput / predict ({push_ips:.0f} / {predict_ips:.0f} img/s)",
        push_ips / predict_ips, ">= 0.8", push_ips / predict_ips >= 0.8)
    row("explain 16 / predict 16", explain16 / predict16, "<= 2", explain16 / predict16 <= 2)
    if not no_worse:
        print("\n(our objective is worse than the reference's at one l2 at least)")


if __name__ == "__main__":
    main()
