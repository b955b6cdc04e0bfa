"""How precise is the BatchNorm calibration on a sample of the images?

``fit`` gives the never-trained BatchNorm layers of a randomly initialised
backbone the data's running statistics in one pass over at most
``_init.CALIBRATION_IMAGES`` training images, evenly spread over the data
set. This compares, layer by layer and channel by channel, the statistics
from n images with those from all of them (a cumulative average, as the
calibration computes), for a torchvision ResNet-18 from random weights on
the speed benchmark's 480 images at 128 px: the worst channel's mean error
in units of its standard deviation, the worst variance ratio, and the
median channel of the last layer.

Run (about a minute on 2 cores; ``--quick``: 48 images at 64 px):

    python benchmarks/calibration.py
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torchvision
from speed import shape_image


@torch.no_grad()
def running_statistics(model, images, batch_size=80):
    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average, as _init.calibrate_batchnorm
    model.train()
    for i in range(0, len(images), batch_size):
        model(images[i : i + batch_size])
    return [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=480)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.size, args.samples = 48, 64, [16, 32]
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    pixels = np.stack([shape_image(rng, i % 4, 64) for i in range(args.n)])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=args.size, mode="bilinear")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x - mean) / std
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    model.fc = torch.nn.Identity()
    full = running_statistics(model, x)
    print(f"ResNet-18 from random weights, {args.n} images at {args.size} px, "
          f"{len(full)} BatchNorm layers; statistics of n evenly spread images against all")
    print("| images | worst channel: mean error / sd | worst channel: variance ratio - 1 | "
          "last layer, median channel: variance ratio - 1 |")
    print("|---|---|---|---|")
    for n in args.samples:
        idx = np.linspace(0, args.n - 1, n).round().astype(int)
        sample = running_statistics(model, x[idx])
        mean_err = max(((m - fm).abs() / fv.sqrt()).max().item()
                       for (fm, fv), (m, _) in zip(full, sample))
        var_err = max(((v / fv) - 1).abs().max().item() for (_, fv), (_, v) in zip(full, sample))
        last = ((sample[-1][1] / full[-1][1]) - 1).abs().median().item()
        print(f"| {n} | {mean_err:.3f} | {var_err:.3f} | {last:.3f} |")


if __name__ == "__main__":
    main()
