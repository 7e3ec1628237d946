"""Test doubles that catch a read of the test split where none may happen."""
from datadistill.data import Split


class GuardedSplit:
    """A split whose tensors raise while ``locked`` and count reads otherwise: a test split that
    must not be read while a choice (a step size, a candidate) is being made."""

    def __init__(self, split: Split):
        self._split, self.locked, self.reads = split, False, 0

    def _get(self, name):
        if self.locked:
            raise AssertionError(f"the test split's {name} was read while a choice was being made")
        self.reads += 1
        return getattr(self._split, name)

    x = property(lambda self: self._get("x"))
    y = property(lambda self: self._get("y"))

    def __len__(self):
        return len(self._split)
