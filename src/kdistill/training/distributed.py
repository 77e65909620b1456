"""Leaving a multi-process run cleanly."""

from __future__ import annotations

import torch


def end_distributed() -> None:
    """When this process is one rank of several: wait for every rank, then destroy the
    process group. Without it the ranks exit whenever each finishes (rank 0 last, as it
    writes the final model); a peer whose gloo pairs are still open when the other rank's
    sockets close can have its gloo thread throw "Connection closed by peer", which aborts
    the process (SIGABRT, no Python traceback; cf. horovod/horovod#2907). torch also warns
    when a program exits without ``destroy_process_group()``."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()
