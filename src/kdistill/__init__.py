"""kdistill: knowledge distillation for LLMs and classifiers.

The top-level import is light (torch only); model, data and training code load on demand.
"""

from kdistill.losses.objective import kd_loss
from kdistill.schedules import Schedule
from kdistill.signals import DenseSignal, SparseSignal

__version__ = "0.1.0"

__all__ = ["DenseSignal", "Schedule", "SparseSignal", "__version__", "kd_loss"]
