"""Small image classifiers (teacher CNN, student MLP), saved as safetensors + JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kdistill.errors import InputError, MissingFileError


def _drop(p: float) -> list[nn.Module]:
    """A dropout layer, or nothing at p = 0 (the layout, and saved weights' names, of a
    model built without dropout stay as they were)."""
    return [nn.Dropout(p)] if p > 0 else []


class CNNClassifier(nn.Module):
    def __init__(self, channels: list[int] = (32, 64), n_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        layers, c_in = [], 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = 28 // (2 ** len(channels))
        self.head = nn.Sequential(
            nn.Flatten(),
            *_drop(dropout),
            nn.Linear(c_in * side * side, 128),
            nn.ReLU(),
            *_drop(dropout),
            nn.Linear(128, n_classes),
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> logits (B, n_classes)."""
        return self.head(self.features(pixel_values))


class MLPClassifier(nn.Module):
    def __init__(self, hidden: list[int] = (256,), n_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        dims, layers = [28 * 28, *hidden], [nn.Flatten()]
        for a, b in zip(dims, dims[1:]):  # noqa: RUF007
            layers += [nn.Linear(a, b), nn.ReLU(), *_drop(dropout)]
        layers.append(nn.Linear(dims[-1], n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> logits (B, n_classes)."""
        return self.net(pixel_values)


ARCHS = {"cnn": CNNClassifier, "mlp": MLPClassifier}


class EnsembleClassifier(nn.Module):
    """Several trained classifiers as one teacher (Hinton et al. 2015 distilled an ensemble):
    the mean of their log-probabilities (a normalised geometric mean of their predictions)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logp = [m(pixel_values).float().log_softmax(-1) for m in self.members]
        return torch.stack(logp).mean(0).log_softmax(-1)


def build_classifier(
    arch: str, *, channels=None, hidden=None, n_classes: int = 10, dropout: float = 0.0
):
    if arch == "cnn":
        return CNNClassifier(list(channels or [32, 64]), n_classes, dropout)
    if arch == "mlp":
        return MLPClassifier(list(hidden or [256]), n_classes, dropout)
    raise InputError(f"unknown classifier {arch!r}: use cnn, mlp, or a trained model folder")


def save_classifier(model: nn.Module, spec: dict, folder: Path) -> Path:
    """Atomically write ``folder`` with model.safetensors + classifier.json (+ done marker)."""
    from kdistill.models.storage import write_folder_atomically

    def fill(tmp: Path) -> None:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "classifier.json").write_text(json.dumps(spec))

    return write_folder_atomically(folder, fill, "kdistill-done")


def is_classifier_folder(path: str | Path) -> bool:
    folder = Path(path)
    return (folder / "classifier.json").is_file() or (folder / "model/classifier.json").is_file()


def classifier_folder(path: str | Path) -> Path:
    """The folder holding classifier.json: ``path`` itself or a run folder's ``model/``."""
    folder = Path(path)
    if (folder / "model" / "classifier.json").is_file():
        folder = folder / "model"
    if not (folder / "classifier.json").is_file():
        raise MissingFileError(
            f"{path}: not a trained classifier folder (no classifier.json); train one with "
            "kdistill train-teacher"
        )
    return folder


def load_classifier(path: str | Path) -> tuple[nn.Module, dict]:
    folder = classifier_folder(path)
    try:
        spec = json.loads((folder / "classifier.json").read_text())
        model = build_classifier(
            spec["arch"],
            channels=spec.get("channels"),
            hidden=spec.get("hidden"),
            n_classes=spec.get("n_classes", 10),
            dropout=spec.get("dropout", 0.0),
        )
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        if isinstance(exc, InputError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]
        raise InputError(
            f"{folder}: not a loadable classifier ({first}); train it again with kdistill "
            "train-teacher"
        ) from exc
    return model, spec


def classifier_from_spec(
    model: str, channels, hidden, dropout: float = 0.0
) -> tuple[nn.Module, dict]:
    """A fresh ``cnn``/``mlp`` or a trained folder."""
    if model in ARCHS:
        spec = {"arch": model, "channels": list(channels), "hidden": list(hidden), "n_classes": 10}
        if dropout > 0:
            spec["dropout"] = dropout
        built = build_classifier(model, channels=channels, hidden=hidden, dropout=dropout)
        return built, spec
    return load_classifier(model)
