"""Push: every prototype becomes its nearest latent patch of its own class."""

import numpy as np
import torch

from sklearn_protopnet._images import ImageDataset, ImageSource
from sklearn_protopnet._init import discriminative_patches
from sklearn_protopnet._network import ProtoPNet
from sklearn_protopnet._push import push_prototypes
from sklearn_protopnet.backbones import SmallCNN

from .conftest import make_bar_images


def test_push_picks_the_nearest_own_class_patch():
    images, labels = make_bar_images(6, size=16, seed=4)
    rgb = np.repeat(images[..., None], 3, axis=3)
    proto_class = torch.tensor([0, 0, 1, 1, 1])
    net = ProtoPNet(SmallCNN(width=4), 16, proto_class, 2, prototype_dim=5).eval()
    dataset = ImageDataset(ImageSource(array=rgb), (16, 16), y=labels)
    with torch.no_grad():
        z = net.latent(torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous())
        before = net.prototypes.detach().clone()
    # brute force: for each prototype, the closest patch among images of its class
    expected = []
    for j, k in enumerate(proto_class.tolist()):
        best = None
        for i in np.flatnonzero(labels == k):
            for r in range(z.shape[2]):
                for c in range(z.shape[3]):
                    d = float(((z[i, :, r, c] - before[j]) ** 2).sum())
                    if best is None or d < best[0]:
                        best = (d, i, r, c)
        expected.append(best)

    result = push_prototypes(net, dataset, labels, batch_size=5, device="cpu")

    for j, (d, i, r, c) in enumerate(expected):
        assert result.source_index[j] == i
        assert tuple(result.location[j]) == (r, c)
        assert labels[result.source_index[j]] == proto_class[j].item()
        torch.testing.assert_close(net.prototypes[j], z[i, :, r, c])
        assert abs(result.distance[j] - d) < 1e-4


def test_pushed_prototype_is_at_distance_zero_from_its_patch():
    images, labels = make_bar_images(4, size=16, seed=5)
    rgb = np.repeat(images[..., None], 3, axis=3)
    net = ProtoPNet(SmallCNN(width=4), 16, torch.tensor([0, 1]), 2, prototype_dim=5).eval()
    dataset = ImageDataset(ImageSource(array=rgb), (16, 16), y=labels)
    result = push_prototypes(net, dataset, labels, batch_size=3, device="cpu")
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        d = net.distance_map(net.latent(x))
    for j in range(2):
        i, (r, c) = result.source_index[j], result.location[j]
        assert d[i, j, r, c].item() < 1e-5


def _square_images(n_per_class, size=16, seed=0):
    """Dark noisy RGB images; class 0 holds a red 4x4 square, class 1 a blue one,
    both classes a grey square: (images, labels, top-left corners of the coloured one)."""
    rng = np.random.default_rng(seed)
    images, labels, corners = [], [], []
    for label, colour in enumerate(((255, 0, 0), (0, 0, 255))):
        for _ in range(n_per_class):
            img = rng.integers(0, 20, size=(size, size, 3)).astype(np.uint8)
            r, c = rng.integers(0, size - 4, size=2)
            img[r : r + 4, c : c + 4] = 128
            r, c = rng.integers(0, size - 4, size=2)
            img[r : r + 4, c : c + 4] = colour
            images.append(img)
            labels.append(label)
            corners.append((r, c))
    return np.stack(images), np.array(labels), np.array(corners)


def test_discriminative_init_picks_real_own_class_patches_on_the_class_motif():
    images, labels, corners = _square_images(12)
    torch.manual_seed(0)
    proto_class = torch.tensor([0, 0, 1, 1])
    net = ProtoPNet(SmallCNN(width=4), 16, proto_class, 2, prototype_dim=6).eval()
    dataset = ImageDataset(ImageSource(array=images), (16, 16), y=labels)
    result = discriminative_patches(net, dataset, labels, batch_size=5, device="cpu",
                                    generator=torch.Generator().manual_seed(0))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        z = net.latent(x)
    for j, (i, (r, c)) in enumerate(zip(result.source_index, result.location)):
        # a real latent patch of a training image of the prototype's class ...
        assert labels[i] == proto_class[j].item()
        torch.testing.assert_close(net.prototypes[j], z[i, :, r, c])
        # ... whose cell (stride 4) overlaps that image's coloured square, not the
        # grey square or the background both classes share
        top, left = corners[i]
        assert top - 4 < 4 * r + 4 and 4 * r < top + 4, (j, r, top)
        assert left - 4 < 4 * c + 4 and 4 * c < left + 4, (j, c, left)
    # two prototypes of one class come from two different images
    assert result.source_index[0] != result.source_index[1]
    assert result.source_index[2] != result.source_index[3]
    # the margin (separation minus cluster distance) it maximised is positive
    assert (result.margin > 0).all()
