"""Jobs: one configured piece of work end to end, data in and files out.

The seam between the pure core and the outside world, shared by the command line and the Python
API: ``distill``, ``train_zoo``, ``test_phase`` and ``evaluate``.
"""
from .distill import RunResult, distill
from .evaluate import evaluate
from .test_phase import test_phase
from .zoo import train_zoo

__all__ = ["RunResult", "distill", "evaluate", "test_phase", "train_zoo"]
