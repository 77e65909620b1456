"""Where a model runs and how its inputs get there: one path for every runner (training's
teacher, evaluation, the offline cache, local generation, inspect).

``device`` settings: ``auto`` (the first CUDA GPU, else Apple's MPS, else the CPU), ``cpu``,
``cuda``, ``cuda:N`` or ``mps``. A device this machine lacks is one line naming it."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from kdistill.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """The ``torch.device`` a ``device`` setting names, checked against this machine."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise InputError(
            f"device={name!r}: not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise InputError(
                f"device={name!r}: this machine has {n} CUDA device(s); use device=auto or cpu"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"device={name!r}: MPS is not available here; use device=auto or cpu")
    elif dev.type != "cpu":
        raise InputError(f"device={name!r}: not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


def device_of(model) -> torch.device:
    """The device of a model's first parameter (or buffer); the CPU for one with neither
    (or for any callable that is not a module)."""
    params, buffers = getattr(model, "parameters", None), getattr(model, "buffers", None)
    if callable(params):
        for tensor in params():
            return tensor.device
    if callable(buffers):
        for tensor in buffers():
            return tensor.device
    return torch.device("cpu")


def on_device(batch, device: torch.device | str):
    """``batch`` (a tensor, or a mapping / list / tuple of them, nested) with every tensor on
    ``device``; anything else is handed back as it is."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == torch.device(device) else batch.to(device)
    if isinstance(batch, Mapping):  # a dict, or a tokenizer's BatchEncoding: a plain dict back
        return {k: on_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(on_device(v, device) for v in batch)
    return batch


def on_model(batch, model):
    """``batch`` moved to where ``model`` runs."""
    return on_device(batch, device_of(model))


def place(model, device: torch.device | str):
    """``model`` moved to ``device`` (a no-op when it is there)."""
    return model if device_of(model) == torch.device(device) else model.to(device)
