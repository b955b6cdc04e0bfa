"""How often the top evidence box holds a planted discriminative motif.

Synthetic RGB images of two classes: a class-specific 8 px motif (a red plus
or a blue ring) at a random place among distractors shared by both classes
(light squares, a grey bar) on dark noise. A model is fitted on the training
images; for each test image the box of the top evidence item (largest
contribution to the predicted class) should hold the motif's centre while
covering at most a quarter of the image. Reports, per seed, that hit rate,
the largest box area and the test accuracy, next to the accuracy of a plain
CNN (the same backbone, global max pooling, a linear layer) on the same data,
for each ``prototype_init``.

    python benchmarks/planted_motif.py --seeds 3 --per-class 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet._synthetic import make_motif_images
from sklearn_protopnet.backbones import SmallCNN


def plain_cnn_accuracy(X, y, X_test, y_test, seed: int, epochs: int) -> float:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(SmallCNN(width=8), torch.nn.AdaptiveMaxPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def prep(a):
        return (torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255 - 0.45) / 0.225

    Xf, yf = prep(X), torch.from_numpy(y)
    for _ in range(epochs):
        perm = torch.randperm(len(yf))
        for i in range(0, len(yf), 16):
            idx = perm[i : i + 16]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(Xf[idx]), yf[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return float((net(prep(X_test)).argmax(1).numpy() == y_test).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--joint-epochs", type=int, default=20)
    parser.add_argument("--init", nargs="+", default=["patches", "discriminative"])
    args = parser.parse_args()
    print("| prototype_init | seed | top box holds motif | largest box / image | "
          "ProtoPNet acc | plain CNN acc | fit time |")
    print("|---|---|---|---|---|---|---|")
    for init, seed in [(i, s) for i in args.init for s in range(args.seeds)]:
        X, y, _ = make_motif_images(args.per_class, seed=seed)
        X_test, y_test, centres = make_motif_images(20, seed=100 + seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            backbone = SmallCNN(width=8)
        clf = ProtoPNetClassifier(
            backbone=backbone, image_size=32, prototypes_per_class=2, prototype_dim=16,
            warm_epochs=2, joint_epochs=args.joint_epochs, push_start=100, batch_size=16,
            augment=False, prototype_init=init, random_state=seed,
        )
        t0 = time.perf_counter()
        clf.fit(X, y)
        dur = time.perf_counter() - t0
        hits, areas = [], []
        for e, (cx, cy) in zip(clf.explain(X_test, top_k=1), centres):
            x0, y0, x1, y1 = e.evidence[0].box
            areas.append((x1 - x0) * (y1 - y0) / 32**2)
            hits.append(x0 <= cx < x1 and y0 <= cy < y1 and areas[-1] <= 0.25)
        cnn = plain_cnn_accuracy(X, y, X_test, y_test, seed, args.joint_epochs)
        print(f"| {init} | {seed} | {np.mean(hits):.2f} | {max(areas):.2f} | "
              f"{clf.score(X_test, y_test):.3f} | {cnn:.3f} | {dur:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
