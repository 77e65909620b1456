"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (gzip IDX files)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from kdistill.errors import InputError, MissingFileError

ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (magic 0x0000 08 NDIM, big-endian dims, uint8 data)."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise InputError(f"{path.name}: not a uint8 IDX file")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def check_available(root: Path = ROOT) -> None:
    """The Debian package's files are there (checked before a run claims its folder)."""
    for prefix in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            if not (root / f"{prefix}-{kind}-ubyte.gz").is_file():
                raise MissingFileError(
                    f"Fashion-MNIST not found in {root}; install it with "
                    "`apt-get install dataset-fashion-mnist`"
                )


def load_split(split: str, root: Path = ROOT, limit: int | None = None, seed: int = 0):
    """(images float (N,1,28,28) in [0,1], labels int64 (N,)) for ``train`` or ``test``."""
    prefix = {"train": "train", "test": "t10k"}[split]
    img_path = root / f"{prefix}-images-idx3-ubyte.gz"
    if not img_path.is_file():
        raise MissingFileError(
            f"Fashion-MNIST not found in {root}; install it with "
            "`apt-get install dataset-fashion-mnist`"
        )
    raw = torch.from_numpy(read_idx(img_path).copy())  # uint8 (N, 28, 28)
    labels = torch.from_numpy(read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").copy()).long()
    if len(raw) != len(labels):
        raise InputError(f"{root}: {len(raw)} {prefix} images but {len(labels)} labels")
    if limit is not None and limit < len(labels):
        idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:limit]
        raw, labels = raw[idx], labels[idx]
    return raw.float().div_(255).unsqueeze(1), labels


VALIDATION_SEED = 20_151_503  # the validation images are the same whatever the run's seed


def split_train(
    n_validation: int, limit: int | None, seed: int, root: Path = ROOT
) -> tuple[ImageDataset, ImageDataset]:
    """(train, validation) datasets from the ``train`` split: ``n_validation`` images set
    aside by a fixed permutation (every seed and arm sees the same ones), then at most
    ``limit`` of the rest (a ``seed``-ed subset) for training. Each example keeps its index in
    the full split (``example_index``)."""
    images, labels = load_split("train", root=root)
    if n_validation >= len(labels):
        raise InputError(
            f"data.validation_examples={n_validation} leaves no training image "
            f"(the split has {len(labels)}); use fewer"
        )
    if n_validation:
        gen = torch.Generator().manual_seed(VALIDATION_SEED)
        order = torch.randperm(len(labels), generator=gen)
        val, rest = order[:n_validation], order[n_validation:]
    else:  # the training subset is then exactly load_split's (``limit``, ``seed``)
        val, rest = torch.zeros(0, dtype=torch.long), torch.arange(len(labels))
    if limit is not None and limit < len(rest):
        pick = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))
        rest = rest[pick[:limit]]
    return (
        ImageDataset(images[rest], labels[rest], rest),
        ImageDataset(images[val], labels[val], val),
    )


class ImageDataset(torch.utils.data.Dataset):
    """Images with labels; ``source_index``: each image's index in its full split (default
    its position), what a teacher with precomputed logits looks it up by."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, source_index=None):
        self.images, self.labels = images, labels
        self.source_index = (
            torch.arange(len(labels)) if source_index is None else torch.as_tensor(source_index)
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {
            "pixel_values": self.images[i],
            "labels": self.labels[i],
            "example_index": int(self.source_index[i]),
        }


def jitter_images(images: torch.Tensor, pixels: int, generator=None) -> torch.Tensor:
    """Each image of ``(B, 1, H, W)`` shifted by its own random (dy, dx) in
    ``[-pixels, pixels]``, the uncovered border filled with 0 (the background)."""
    if pixels <= 0:
        return images
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pixels, pixels, pixels, pixels))
    shifts = torch.randint(0, 2 * pixels + 1, (b, 2), generator=generator)
    out = torch.empty_like(images)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


def flip_images(images: torch.Tensor, generator=None) -> torch.Tensor:
    """Each image of ``(B, 1, H, W)`` mirrored left-right with probability 1/2."""
    pick = torch.rand(len(images), generator=generator) < 0.5
    out = images.clone()
    out[pick] = images[pick].flip(-1)
    return out


def mixup_images(images: torch.Tensor, alpha: float, generator=None) -> torch.Tensor:
    """The batch blended with a shuffled copy of itself: ``lam * x + (1 - lam) * x[perm]``,
    one ``lam ~ Beta(alpha, alpha)`` per batch (Zhang et al. 2018). The labels are left as
    they are: a blended image is labelled by the teacher (function matching)."""
    if alpha <= 0 or len(images) < 2:
        return images
    from scipy.stats import beta

    # torch's Beta takes no generator: the share from the generator's uniform stream
    lam = float(beta.ppf(float(torch.rand((), generator=generator)), alpha, alpha))
    perm = torch.randperm(len(images), generator=generator)
    return lam * images + (1.0 - lam) * images[perm]


class ImageCollator:
    """Stack a batch (with each example's index, for teachers that look targets up by it),
    augmenting the training images: ``jitter`` (shift by up to that many pixels), ``flip``
    (left-right, half of them), ``mixup`` (blend the batch, Beta(a, a)). The teacher and the
    student see the same augmented batch."""

    def __init__(self, jitter: int = 0, flip: bool = False, mixup: float = 0.0):
        self.jitter, self.flip, self.mixup = jitter, flip, mixup

    @property
    def augments(self) -> bool:
        return bool(self.jitter or self.flip or self.mixup)

    def __call__(self, items: list[dict]) -> dict:
        pixels = torch.stack([it["pixel_values"] for it in items])
        pixels = jitter_images(pixels, self.jitter)
        if self.flip:
            pixels = flip_images(pixels)
        pixels = mixup_images(pixels, self.mixup)
        return {
            "pixel_values": pixels,
            "labels": torch.stack([it["labels"] for it in items]),
            "example_index": torch.tensor([it["example_index"] for it in items]),
        }


collate_images = ImageCollator()
