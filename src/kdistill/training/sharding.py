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
def full_params(*params) -> Iterator[tuple]:
    """Yield ``params`` (None allowed) as full tensors for the duration of the block.

    ZeRO-3 parameters are gathered with ``deepspeed.zero.GatheredParameters`` (read-only:
    ``modifier_rank=None``; gradients still reach them through autograd, and DeepSpeed's
    hooks reduce them); FSDP2 ``DTensor`` parameters through ``full_tensor()`` (an
    all-gather whose backward reduce-scatters the gradient into the shard); anything else as
    it is."""
    zero3 = [p for p in params if is_zero3(p)]
    with _zero3_gather(zero3) if zero3 else nullcontext():
        yield tuple(p.full_tensor() if _is_dtensor(p) else p for p in params)


@contextmanager
def gathered_for_step(*params) -> Iterator[None]:
    """ZeRO-3 parameters gathered for a whole training step (forward, loss and backward), so
    a gradient made outside their module's forward lands on a whole parameter; a no-op for
    anything else (FSDP2's ``full_tensor`` carries its gradient back itself)."""
    zero3 = [p for p in params if is_zero3(p)]
    with _zero3_gather(zero3) if zero3 else nullcontext():
        yield


def _zero3_gather(params: list):
    """DeepSpeed's own gather context (read-only)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
