import os
from pathlib import Path

import pytest
import torch

from datadistill.data import Dataset, Split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_root() -> str:
    """Real MNIST in torchvision's layout: $DATADISTILL_DATA or ../shared/data. Skipped when absent
    (a user's fresh clone), but a failure under CI, which always has it."""
    root = Path(os.environ.get("DATADISTILL_DATA", REPO.parent / "shared" / "data"))
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        msg = f"real MNIST not found under {root} (set DATADISTILL_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return str(root)


@pytest.fixture
def blobs() -> Dataset:
    """Three linearly separable classes of 8x8 single-channel images."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 1, 8, 8, generator=g) * 2

    def split(n):
        y = torch.arange(3).repeat(n)
        return Split(centres[y] + 0.5 * torch.randn(len(y), 1, 8, 8, generator=g), y)

    return Dataset("blobs", split(40), split(20), 3, (0.0,), (1.0,))
