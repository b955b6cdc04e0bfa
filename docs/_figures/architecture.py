"""The architecture figure of docs/method.md, drawn with matplotlib.

Run at docs build time by matplotlib's plot directive; also runs alone:
``python docs/_figures/architecture.py`` shows the figure.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c"]  # three classes, two prototypes each


def box(ax, x, y, w, h, text, colour="#f2f2f2", size=9):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=colour, edgecolor="#444", linewidth=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(ax, x0, y0, x1, y1):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12,
                                 color="#444", linewidth=1.2))


def grid(ax, x, y, n, cell, colour="#dfe8f5", highlight=None, hcolour="#d62728"):
    for i in range(n):
        for j in range(n):
            face = hcolour if highlight == (i, j) else colour
            ax.add_patch(Rectangle((x + j * cell, y + (n - 1 - i) * cell), cell, cell,
                                   facecolor=face, edgecolor="#666", linewidth=0.6))


fig, ax = plt.subplots(figsize=(11, 4.6))
ax.set_xlim(0, 22)
ax.set_ylim(0, 9.2)
ax.axis("off")

# the input image: a little bird-like drawing on a 5 x 5 grid of pixels
rng = np.random.default_rng(3)
image = rng.uniform(0.75, 0.95, (20, 20, 3))
yy, xx = np.mgrid[:20, :20]
image[(yy - 11) ** 2 + (xx - 9) ** 2 < 30] = (0.55, 0.35, 0.2)   # body
image[(yy - 6) ** 2 + (xx - 13) ** 2 < 7] = (0.85, 0.1, 0.1)     # red head
ax.imshow(image, extent=(0.2, 3.2, 3.1, 6.1), interpolation="nearest")
ax.text(1.7, 2.6, "image\n(3, H, W)", ha="center", va="top", fontsize=9)

arrow(ax, 3.4, 4.6, 4.2, 4.6)
box(ax, 4.3, 3.6, 2.2, 2.0, "backbone\n(any CNN,\ncut at its last\nfeature map)")
arrow(ax, 6.6, 4.6, 7.3, 4.6)
box(ax, 7.4, 3.6, 2.0, 2.0, "add-on\n1x1 convs\n+ sigmoid")
arrow(ax, 9.5, 4.6, 10.1, 4.6)

# the latent map z: a 4 x 4 grid of cells, one of them the closest to a prototype
grid(ax, 10.2, 3.2, 4, 0.7, highlight=(0, 3))
ax.text(11.6, 2.6, "z: D x h x w\n(one vector per cell,\na patch of the image)",
        ha="center", va="top", fontsize=9)

# prototypes, two per class, drawn as small squares coloured by class
ax.text(11.6, 8.9, "prototypes p_j (m = K x prototypes_per_class)", ha="center",
        va="top", fontsize=9)
for j in range(6):
    ax.add_patch(Rectangle((9.9 + j * 0.6, 7.4), 0.45, 0.45,
                           facecolor=CLASS_COLOURS[j // 2], edgecolor="#333"))
    ax.text(10.12 + j * 0.6, 7.2, f"p{j}", ha="center", va="top", fontsize=7)
arrow(ax, 11.6, 7.0, 11.6, 6.2)
ax.text(11.75, 6.55, "squared distance of every cell\nto every prototype", fontsize=8,
        va="center")

arrow(ax, 13.1, 4.6, 13.8, 4.6)
box(ax, 13.9, 3.6, 2.4, 2.0, "min over cells,\nthen similarity\nlog((d+1)/(d+1e-4))", size=8)
arrow(ax, 16.4, 4.6, 16.9, 4.6)

# the similarity vector s
for j in range(6):
    value = [0.9, 0.2, 0.1, 0.3, 0.05, 0.15][j]
    ax.add_patch(Rectangle((17.0, 6.2 - j * 0.55), 0.5, 0.5, facecolor=plt.cm.Reds(value),
                           edgecolor=CLASS_COLOURS[j // 2], linewidth=2))
ax.text(17.25, 2.6, "s: m\nsimilarities\n(transform)", ha="center", va="top", fontsize=9)
arrow(ax, 17.7, 4.6, 18.3, 4.6)
box(ax, 18.4, 3.6, 1.6, 2.0, "last layer\nW (K x m)\nno bias")
arrow(ax, 20.1, 4.6, 20.6, 4.6)
for k in range(3):
    ax.add_patch(Rectangle((20.7, 5.4 - k * 0.7), 0.6, 0.6, facecolor=CLASS_COLOURS[k],
                           edgecolor="#333", alpha=0.85))
ax.text(21.0, 2.6, "logits\nK values", ha="center", va="top", fontsize=9)

ax.text(11, 0.9, "logit of class k  =  sum over prototypes j of  similarity s_j  x  weight "
        "W[k, j]:  the explanation is the computation", ha="center", fontsize=10,
        style="italic")
ax.text(11, 0.25, "after each push every prototype equals one real patch (cell) of a "
        "training image of its class: \"that\"", ha="center", fontsize=9, color="#444")
fig.tight_layout()

if __name__ == "__main__":
    plt.show()
