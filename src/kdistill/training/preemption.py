"""Preemption (spot instances, SLURM): SIGTERM or SIGUSR1 saves a complete checkpoint, then
stops.

The handler only records the signal; at the end of the current optimizer step the callback
asks Trainer to save and stop, so the checkpoint is a whole one (model, optimizer, scheduler,
RNG, trainer state) and :class:`~kdistill.training.checkpoint.CompleteMarker` marks it. The
pipeline then raises :class:`Preempted`; re-running the same command resumes from it.
"""

from __future__ import annotations

import signal
import threading

from transformers import TrainerCallback

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionCallback(TrainerCallback):
    """Install with :meth:`armed` around ``trainer.train()``."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def armed(self):
        return _Armed(self)

    def on_step_end(self, args, state, control, **kwargs):
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


class _Armed:
    def __init__(self, cb: PreemptionCallback):
        self.cb = cb

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self.cb._old[s] = signal.signal(s, self.cb._handle)
        return self.cb

    def __exit__(self, *exc):
        for s, old in self.cb._old.items():
            signal.signal(s, old)
        self.cb._old.clear()
