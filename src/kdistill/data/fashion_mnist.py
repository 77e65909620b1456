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


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


def collate_images(items: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "labels": torch.stack([it["labels"] for it in items]),
    }
