"""What a model costs to run: size on disk, percentiles, peak memory of a forward.

Timing lives in :mod:`kdistill.eval.speed` (every model timed in turn, over rounds).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

PEAK_MEMORY_METHOD_CPU = (
    "parameter + buffer bytes, plus the peak of torch's CPU allocations during one forward "
    "of the latency input (torch.profiler memory events)"
)
PEAK_MEMORY_METHOD_CUDA = "torch.cuda.max_memory_allocated during one forward of the latency input"


def dir_size(path: Path | None, pattern: str = "*.safetensors") -> int | None:
    """Bytes of the weight files under ``path`` (None when there is no folder)."""
    if path is None or not Path(path).exists():
        return None
    return sum(f.stat().st_size for f in Path(path).rglob(pattern))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already-sorted values (q in [0, 1])."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if hasattr(t, "qdata") and hasattr(t, "scale"):  # a torchao int8 weight: its parts
            if id(t) not in seen:
                seen.add(id(t))
                total += sum(x.numel() * x.element_size() for x in (t.qdata, t.scale))
            continue
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


@contextlib.contextmanager
def _without_profiler_chatter():
    """Kineto prints "USDT: ... profiler_start/stop" to fd 2 on every profile and no setting
    turns it off; hold fd 2 in a file while profiling and pass on every other line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith("USDT:"):
                    sys.stderr.write(line)


def _peak_cpu_allocations(call: Callable[[], object]) -> int:
    """Peak bytes of torch CPU allocations made (and not yet freed) while ``call`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with (
        _without_profiler_chatter(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        call()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    mem = [
        e
        for e in events
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0
    ]
    mem.sort(key=lambda e: (e["ts"], e["args"].get("Ev Idx", 0)))
    live = peak = 0
    for e in mem:
        live += int(e["args"]["Bytes"])
        peak = max(peak, live)
    return peak


@torch.no_grad()
def peak_forward_memory(model: torch.nn.Module, call: Callable[[], object]) -> dict:
    """Peak memory of holding ``model`` and running ``call()`` once (a forward).

    On CUDA: the allocator's own peak. On CPU: weights plus the peak of the allocations the
    forward makes, read from the profiler's memory events (RSS is useless here: the
    allocator keeps freed pages, so the second model evaluated would read as free).
    """
    call()  # warm-up: lazy initialisation is not the model's steady-state cost
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
            "peak_memory_method": PEAK_MEMORY_METHOD_CUDA,
        }
    weights = weight_bytes(model)
    activations = _peak_cpu_allocations(call)
    return {
        "peak_memory_bytes": weights + activations,
        "weight_bytes": weights,
        "peak_forward_alloc_bytes": activations,
        "peak_memory_method": PEAK_MEMORY_METHOD_CPU,
    }
