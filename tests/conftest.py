import os
from pathlib import Path

import pytest
import torch

import datadistill.allocator
import datadistill.runtime

from datadistill.data import Dataset, Split

REPO = Path(__file__).resolve().parents[1]
SLOW_MARKERS = ("slow", "mnist")  # real MNIST runs take minutes: slow too


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true",
                     help="also run tests marked slow or mnist (as does DATADISTILL_SLOW=1)")


def pytest_collection_modifyitems(config, items):
    """Slow tests (subprocesses, process groups, real MNIST, long runs) are skipped, with a reason,
    unless --runslow or DATADISTILL_SLOW=1 asks for them; CI runs them in a second pass
    (``DATADISTILL_SLOW=1 python -m pytest -m "slow or mnist"``)."""
    if config.getoption("--runslow") or os.environ.get("DATADISTILL_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or DATADISTILL_SLOW=1")
    for item in items:
        if any(item.get_closest_marker(name) for name in SLOW_MARKERS):
            item.add_marker(skip)


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


@pytest.fixture
def switches(monkeypatch) -> list[str]:
    """Calls of the process-wide switches (the allocator), recorded instead of made: the test
    process keeps its own allocator either way."""
    calls = []
    monkeypatch.setattr(datadistill.runtime, "apply_process_switches", lambda: calls.append("apply") or True)
    monkeypatch.setattr(datadistill.runtime, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(datadistill.allocator, "keep_freed_memory", lambda: calls.append("keep") or True)
    return calls


@pytest.fixture
def f64():
    """float64 as the default dtype for one test (finite-difference checks), restored after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
