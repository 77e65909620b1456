"""LoRA students through ``peft``: the student's base weights frozen, low-rank adapters
trained (the teacher is untouched). The run saves the merged student (``model/``, what every
kdistill command loads) and the adapter alone (``adapter/``, peft's format)."""

from __future__ import annotations

from pathlib import Path

from kdistill.errors import InputError

INSTALL = "pip install 'kdistill[lora]' (peft)"


def check_peft() -> None:
    """One line naming the fix when peft is missing (before any model is loaded)."""
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise InputError(f"student.lora needs peft: {INSTALL}") from exc


def apply_lora(model, *, r: int, alpha: float, dropout: float, target_modules):
    """``model`` wrapped by peft with LoRA adapters on ``target_modules`` (``all-linear``: every
    linear layer but the output head); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules not found in the model
        first = (str(exc).strip().splitlines() or ["?"])[0][:160]
        raise InputError(f"student.lora: {first}") from exc
    return wrapped


def is_lora(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def base_of(model):
    """The transformers model under a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if is_lora(model) else model


def trainable_share(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "all_params": total}


def save_adapter_and_merge(model, folder: Path, marker: str):
    """Write the adapter to ``folder`` (peft's files), then return the merged model (the
    adapters folded into the base weights, peft's wrapper removed)."""
    from kdistill.models.storage import write_folder_atomically

    write_folder_atomically(Path(folder), lambda tmp: model.save_pretrained(tmp), marker)
    return model.merge_and_unload()
