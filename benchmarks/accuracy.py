"""ProtoPNet against its black-box twin, on real images given as file paths.

Writes real data sets as PNG files and, in one process, fits on their paths

- ``ProtoPNetClassifier`` with a user-defined backbone (a plain
  ``nn.Sequential`` defined here, not one of the package's, the way a user
  brings their own CNN), and
- its black-box twin: the same backbone (same initial weights) with a global
  max-pool and a linear head (the fair twin of max-pooled similarities),
  Adam at 1e-3 for the same total number of epochs, on the same images
  through the same decoding, normalisation, augmentation and batch size.
  ``--twin-augment false`` trains the twin without the warps, the fair twin
  of a setting with ``augment=false``.

Data sets: scikit-learn's digits (1,797 8x8 images, upscaled to 32 px), 75/25
split; Fashion-MNIST (28 px; Debian package ``dataset-fashion-mnist``) with
``--fashion-train`` training and 2,000 test images, or the full 60,000 /
10,000 with ``--full``.

Run (digits: about 1 minute per fit on a 2-core CPU; Fashion-MNIST 6k: 2-4):

    python benchmarks/accuracy.py --seeds 3 --out /tmp/protopnet-accuracy
    python benchmarks/accuracy.py --data fashion --full --seeds 1
    python benchmarks/accuracy.py --settings defaults reference --seeds 3
    python benchmarks/accuracy.py --quick            # a smoke test: seconds

``--settings`` names entries of :data:`SETTINGS` (keyword arguments of the
estimator on top of the defaults); ``--set key=value`` adds one of your own.
Rows are printed as Markdown and appended as JSON lines to
``<out>/results.jsonl``; the summary gives mean and standard deviation over
seeds, and each fit's wall time and CPU time against its twin's (medians
over seeds; the training only, decoding of the training images included,
scoring the test images not). With ``--threads 1`` the CPU time is the
work of the fit whatever else the machine runs, so its ratio holds on a
busy machine where the wall times do not.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import time

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch import nn

from sklearn_protopnet import REFERENCE_SETTINGS, ProtoPNetClassifier, _training
from sklearn_protopnet._augment import BatchWarp
from sklearn_protopnet._backbones import resolve_normalize
from sklearn_protopnet._demo import write_digits
from sklearn_protopnet._images import ImageDataset, check_images, decode_all

FASHION = "/usr/share/datasets/fashion-mnist"


def bn_cnn() -> nn.Module:
    """A user's small CNN with BatchNorm (about 60K parameters): feature map
    1/4 of the image, 64 channels."""
    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                         *block(32, 64), *block(64, 64))


def plain_cnn() -> nn.Module:
    """Another user's CNN: no BatchNorm, a 5x5 first layer, feature map 1/4,
    96 channels (about 120K parameters)."""
    return nn.Sequential(
        nn.Conv2d(3, 24, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(24, 48, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(48, 96, 3, padding=1), nn.ReLU(),
        nn.Conv2d(96, 96, 3, padding=1), nn.ReLU(),
    )


BACKBONES = {"bn-cnn": bn_cnn, "plain-cnn": plain_cnn}

#: Estimator settings on top of the defaults. "reference" is the reference
#: code's schedule (docs: the reference preset).
SETTINGS = {
    "defaults": {},
    "reference": dict(REFERENCE_SETTINGS),
}


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_pngs(root, split, images, labels):
    paths = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        folder = os.path.join(root, split, str(lab))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:05d}.png")
        if not os.path.exists(path):
            Image.fromarray(img, "L").save(path)
        paths.append(path)
    return paths, np.asarray(labels)


def fashion(out: str, n_train: int | None, n_test: int | None):
    """Fashion-MNIST as PNG files: a random subset, or all (None)."""
    images = read_idx(os.path.join(FASHION, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(FASHION, "train-labels-idx1-ubyte.gz"))
    test_images = read_idx(os.path.join(FASHION, "t10k-images-idx3-ubyte.gz"))
    test_labels = read_idx(os.path.join(FASHION, "t10k-labels-idx1-ubyte.gz"))
    rng = np.random.default_rng(0)
    tr = np.arange(len(images)) if n_train is None else rng.choice(len(images), n_train,
                                                                   replace=False)
    te = np.arange(len(test_images)) if n_test is None else rng.choice(len(test_images),
                                                                       n_test, replace=False)
    root = os.path.join(out, "fashion" if n_train is None else f"fashion-{n_train}")
    return (write_pngs(root, "train", images[tr], labels[tr]),
            write_pngs(root, "test", test_images[te], test_labels[te]))


# ----------------------------------------------------------------------------
# the black-box twin
# ----------------------------------------------------------------------------
class Twin(nn.Module):
    """Backbone, global max-pool, linear head; uint8 images in."""

    def __init__(self, backbone, n_classes, mean, std):
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            channels = backbone(torch.zeros(2, 3, 32, 32)).shape[1]
        self.head = nn.Linear(channels, n_classes)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x  # uint8, or warped in [0, 1]
        x = (x - self.mean) / self.std
        return self.head(torch.amax(self.backbone(x), dim=(2, 3)))


def _train_twin(model, opt, loader, warp, epochs):
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            if warp is not None:
                xb = warp(xb)
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), torch.as_tensor(yb).long()).backward()
            opt.step()


def fit_twin(backbone, X_train, y_train, X_test, y_test, image_size, epochs, seed,
             batch_size=32, augment=True):
    """Train the twin with Adam 1e-3; return (test accuracy, wall time, CPU time)
    of the training (decoding the training images included, as in ``fit``)."""
    t0, c0 = time.perf_counter(), time.process_time()
    classes, y_enc = np.unique(y_train, return_inverse=True)
    size = (image_size, image_size)
    source = check_images(list(X_train))
    cache = decode_all(source, size)
    warp = BatchWarp() if augment else None  # ProtoPNet's default augmentation
    data = ImageDataset(source, size, y=y_enc, cache=cache)
    mean, std = resolve_normalize("auto")
    g = torch.Generator().manual_seed(seed)
    # the head's initial weights and the warps draw from the global stream: seed it
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Twin(backbone, len(classes), mean, std)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                             generator=g)
        _train_twin(model, opt, loader, warp, epochs)
    dur, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    test_source = check_images(list(X_test))
    test_cache = decode_all(test_source, size)
    with torch.no_grad():
        pred = torch.cat([model(test_cache[i : i + 256]).argmax(1)
                          for i in range(0, len(test_cache), 256)]).numpy()
    return float((classes[pred] == np.asarray(y_test)).mean()), dur, cpu


def pretrain(out: str, arch: str, epochs: int = 5, seed: int = 0) -> str:
    """A pretrained-style start: the twin trained on the Fashion-MNIST subset
    (6,000 images), its backbone's state_dict written to a file."""
    path = os.path.join(out, f"pretrained-{arch}-fashion-{epochs}ep.pt")
    if os.path.exists(path):
        return path
    (Xtr, ytr), (Xte, yte) = fashion(out, 6000, 2000)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = BACKBONES[arch]()
    acc, dur, _ = fit_twin(backbone, Xtr, ytr, Xte, yte, 28, epochs, seed)
    torch.save(backbone.state_dict(), path)
    print(f"pretrained {arch} on Fashion-MNIST 6,000 for {epochs} epochs: test accuracy "
          f"{acc:.3f} ({dur:.0f} s), {path}", flush=True)
    return path


def fit_protopnet(backbone, X_train, y_train, X_test, y_test, image_size, warm, joint,
                  seed, **settings):
    clf = ProtoPNetClassifier(backbone=backbone, image_size=image_size, warm_epochs=warm,
                              joint_epochs=joint, random_state=seed, **settings)
    t0, c0 = time.perf_counter(), time.process_time()
    clf.fit(X_train, y_train)
    dur, cpu = time.perf_counter() - t0, time.process_time() - c0
    return clf.score(X_test, y_test), dur, cpu


def _median(rows, key):
    return np.median([r[key] for r in rows])


def parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="protopnet-accuracy")
    parser.add_argument("--data", nargs="+", default=["digits", "fashion"],
                        choices=["digits", "fashion"])
    parser.add_argument("--fashion-train", type=int, default=6000)
    parser.add_argument("--full", action="store_true",
                        help="the full Fashion-MNIST (60,000 / 10,000)")
    parser.add_argument("--backbone", default="bn-cnn", choices=sorted(BACKBONES))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--warm", type=int, default=2)
    parser.add_argument("--joint", type=int, default=10)
    parser.add_argument("--settings", nargs="+", default=["defaults"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an estimator parameter for a setting named 'custom'")
    parser.add_argument("--warp", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the default augmentation (BatchWarp: scale, ratio, "
                             "flip, degrees, shear) for both models, e.g. flip=0")
    parser.add_argument("--weights", default=None,
                        help="a state_dict file for the backbone (pretrained-style start)")
    parser.add_argument("--pretrained", action="store_true",
                        help="start from the backbone pretrained on the Fashion-MNIST subset "
                             "(made once and kept in --out); use with --data digits")
    parser.add_argument("--no-twin", action="store_true")
    parser.add_argument("--twin-augment", choices=["true", "false"], default="true",
                        help="whether the twin trains with ProtoPNet's default warps (as "
                             "augment=True does)")
    parser.add_argument("--twin-only", action="store_true",
                        help="fit the twin alone (no ProtoPNet setting)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 300 digits, 1 + 1 epochs, one seed")
    args = parser.parse_args(argv)
    settings = {name: SETTINGS[name] for name in args.settings if name in SETTINGS}
    if args.set:
        settings["custom"] = dict(
            (k, parse_value(v)) for k, v in (item.split("=", 1) for item in args.set))
    unknown = set(args.settings) - set(SETTINGS) - {"custom"}
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; known: {sorted(SETTINGS)}")
    if args.quick:
        args.data, args.seeds, args.warm, args.joint = ["digits"], 1, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    warp = dict((k, parse_value(v)) for k, v in (item.split("=", 1) for item in args.warp))
    if warp:  # both models' default augmentation, changed for this run
        global BatchWarp
        BatchWarp = functools.partial(BatchWarp, **warp)
        _training.BatchWarp = BatchWarp

    os.makedirs(args.out, exist_ok=True)
    if args.pretrained:
        args.weights = pretrain(args.out, args.backbone)
    sets = []
    if "digits" in args.data:
        paths, labels = write_digits(args.out)
        if args.quick:
            paths, labels = paths[:300], labels[:300]
        Xtr, Xte, ytr, yte = train_test_split(paths, labels, test_size=0.25, stratify=labels,
                                              random_state=0)
        sets.append(("digits (32 px)", Xtr, ytr, Xte, yte, 32))
    if ("fashion" in args.data or args.pretrained) and not os.path.isdir(FASHION):
        parser.error(f"Fashion-MNIST is not in {FASHION}: apt-get install "
                     "dataset-fashion-mnist, or pass --data digits without --pretrained")
    if "fashion" in args.data:
        n_train, n_test = (None, None) if args.full else (args.fashion_train, 2000)
        (Xtr, ytr), (Xte, yte) = fashion(args.out, n_train, n_test)
        sets.append((f"Fashion-MNIST {len(Xtr)}/{len(Xte)} (28 px)", Xtr, ytr, Xte, yte, 28))

    def backbone(seed):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = BACKBONES[args.backbone]()
        if args.weights:
            module.load_state_dict(torch.load(args.weights, weights_only=True))
        return module

    extra = {"weights": args.weights} if args.weights else {}
    results = []
    log = open(os.path.join(args.out, "results.jsonl"), "a")
    print("| data | model | seed | test accuracy | fit time | CPU time |")
    print("|---|---|---|---|---|---|")
    for name, Xtr, ytr, Xte, yte, size in sets:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            runs = [] if args.no_twin else [("twin", None)]
            runs += [] if args.twin_only else list(settings.items())
            for label, kw in runs:
                if kw is None:
                    augment = args.twin_augment == "true"
                    acc, dur, cpu = fit_twin(backbone(seed), Xtr, ytr, Xte, yte, size,
                                             args.warm + args.joint, seed, augment=augment)
                else:
                    # the estimator loads `weights` itself into a fresh copy
                    acc, dur, cpu = fit_protopnet(
                        backbone(seed) if not args.weights else BACKBONES[args.backbone](),
                        Xtr, ytr, Xte, yte, size, args.warm, args.joint, seed, **(extra | kw))
                row = dict(data=name, model=label,
                           settings=dict(augment=augment) if kw is None else kw,
                           warp=warp, seed=seed, acc=acc,
                           dur=dur, cpu=cpu,
                           backbone=args.backbone, epochs=[args.warm, args.joint],
                           weights=args.weights)
                results.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                shown = label if kw is not None else f"twin (warps {'on' if augment else 'off'})"
                print(f"| {name} | {shown} | {seed} | {acc:.3f} | {dur:.0f} s | {cpu:.0f} s |",
                      flush=True)
    log.close()

    print("\n| data | model | test accuracy (mean ± sd) | vs twin | wall time vs twin | "
          "CPU time vs twin |")
    print("|---|---|---|---|---|---|")
    for name, *_ in sets:
        twin = [r for r in results if r["data"] == name and r["model"] == "twin"]
        for label in (["twin"] if twin else []) + ([] if args.twin_only else list(settings)):
            rows = [r for r in results if r["data"] == name and r["model"] == label]
            acc = np.array([r["acc"] for r in rows])
            gap = wall = cpu = "-"  # the twin's own row
            if twin and label != "twin":
                gap = f"{100 * (acc.mean() - np.mean([r['acc'] for r in twin])):+.1f} pts"
                wall, cpu = (f"{_median(rows, k) / _median(twin, k):.2f}x"
                             for k in ("dur", "cpu"))
            print(f"| {name} | {label} | {acc.mean():.3f} ± {acc.std():.3f} | {gap} | "
                  f"{wall} | {cpu} |")


if __name__ == "__main__":
    main()
