"""Reading a sharded parameter outside its module's forward.

The chunked loss reads the output head's weight directly (it never runs ``lm_head`` over all
positions). Under DeepSpeed ZeRO-3 a parameter outside a gather context is an empty
placeholder, and under FSDP2 a sharded parameter is a ``DTensor`` holding this rank's rows:
both must be gathered before the read. ``full_params`` does it for the engine that owns the
parameter (DeepSpeed's ``GatheredParameters``; a differentiable ``DTensor.full_tensor()``) and
hands plain parameters through untouched. The loss computes its gradients inside the block,
so nothing it keeps outlives the gather.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch


def is_zero3(param) -> bool:
    """A DeepSpeed ZeRO-3 partitioned parameter (it carries a ``ds_id``)."""
    return param is not None and hasattr(param, "ds_id")


def _partitioned(param) -> bool:
    """A ZeRO-3 parameter whose data is not here now (an empty placeholder). One already
    gathered is left alone: DeepSpeed's gather context re-partitions everything it was given
    on exit, so gathering it again would free it under an outer gather."""
    return is_zero3(param) and param.numel() == 0


def full_shape(param) -> torch.Size:
    """A parameter's whole shape, also when ZeRO-3 has partitioned it away (``ds_shape``)."""
    return torch.Size(getattr(param, "ds_shape", param.shape))


def _is_dtensor(param) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(param, DTensor)


@contextmanager
def full_params(*params, held: frozenset[int] = frozenset()) -> Iterator[tuple]:
    """Yield ``params`` (None allowed) as full tensors for the duration of the block.

    ZeRO-3 parameters are gathered with ``deepspeed.zero.GatheredParameters`` (read-only:
    ``modifier_rank=None``; gradients still reach them through autograd, and DeepSpeed's
    hooks reduce them); FSDP2 ``DTensor`` parameters through ``full_tensor()`` (an
    all-gather whose backward reduce-scatters the gradient into the shard); anything else as
    it is. ``held``: the ids :func:`gathered_for_step` yielded, when inside it."""
    zero3 = [p for p in params if _partitioned(p)]
    # DeepSpeed releases a parameter after the forward of a module that owns it (a tied head
    # with the embedding) even inside the step's gather, and refuses a nested gather of it:
    # fetch those again, the step's gather partitions them when it ends
    again = [p for p in zero3 if id(p) in held]
    if again:
        again[0].all_gather(param_list=again)
    fresh = [p for p in zero3 if id(p) not in held]
    with _zero3_gather(fresh) if fresh else nullcontext():
        yield tuple(p.full_tensor() if _is_dtensor(p) else p for p in params)


@contextmanager
def gathered_for_step(*params) -> Iterator[frozenset[int]]:
    """ZeRO-3 parameters gathered for a whole training step (forward, loss and backward), so
    a gradient made outside their module's forward lands on a whole parameter; a no-op for
    anything else (FSDP2's ``full_tensor`` carries its gradient back itself). Yields the ids
    it holds, for :func:`full_params` (``held``) inside the step."""
    zero3 = [p for p in params if _partitioned(p)]
    with _zero3_gather(zero3) if zero3 else nullcontext():
        yield frozenset(id(p) for p in zero3)


def _zero3_gather(params: list):
    """DeepSpeed's own gather context (read-only)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def shard_model(
    model: torch.nn.Module, *, keep_ends: bool = True, device_type: str | None = None
) -> torch.nn.Module:
    """``model`` sharded with FSDP2 (torch's ``fully_shard``) over every process of the run:
    each decoder layer its own group (gathered for its forward, freed after), the embedding,
    final norm and output head one group (a tied embedding and head share one weight, which
    FSDP2 needs in a single group), then the root. ``keep_ends``: that last group stays whole
    after the forward (one all-gather per step; the student's loss reads the head next), else
    it is freed too (a teacher: the loss then gathers the head through ``full_params``).
    Marked the way transformers marks a model
    it distributed itself, so the Trainer adds no DDP wrapper and leaves placement and
    gradient reduction to FSDP. A single process is left as it is."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world < 2:
        return model
    device = device_type or torch._C._get_accelerator().type
    mesh = init_device_mesh(device, (world,), mesh_dim_names=("fsdp",))
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    inner = getattr(model, "model", None)
    ends = [getattr(inner, "embed_tokens", None), getattr(inner, "norm", None)]
    ends.append(model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None)
    ends = [
        m for m in dict.fromkeys(ends) if m is not None and next(m.parameters(), None) is not None
    ]
    if ends:
        fully_shard(ends, mesh=mesh, reshard_after_forward=not keep_ends)
    fully_shard(model, mesh=mesh)
    model._is_distributed_loading_by_transformers = True
    return model


def is_sharded(model) -> bool:
    """A model :func:`shard_model` sharded (transformers' own mark for a model it distributed
    itself, which the Trainer reads too)."""
    return bool(getattr(model, "_is_distributed_loading_by_transformers", False))


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers causal LM (``model.model.layers``), or []."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    return list(layers) if layers is not None else []


def full_state_dict(model: torch.nn.Module) -> dict:
    """The whole model's weights on every process (an all-gather of each sharded parameter);
    call it on all ranks, save on one."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    whole = get_model_state_dict(model, options=opts)
    # a tied head is the embedding: saved once, as an unsharded model saves it
    for key, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        if key in whole and source in whole:
            del whole[key]
    return whole
