"""Shared bits of the benchmark scripts: where real MNIST and the reference code live."""
import contextlib
import os
import tempfile
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = Path(os.environ.get("DATADISTILL_DATA", SHARED / "data"))
TIME_ORIGINAL = SHARED / "reference" / "time-original"


def require_mnist() -> str:
    if not (DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        sys.exit(f"real MNIST not found under {DATA}; set DATADISTILL_DATA to a folder holding MNIST/raw")
    return str(DATA)


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``cmd``; return (wall seconds, completed process). Fails loudly on a non-zero exit."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds, proc


def datadistill(*args: str) -> list[str]:
    return [sys.executable, "-m", "datadistill", *args]


@contextlib.contextmanager
def results_dir(argv: list[str]):
    """``--keep DIR`` taken out of ``argv``: yields (DIR, the other arguments); without it a
    temporary folder, removed afterwards."""
    if "--keep" not in argv:
        with tempfile.TemporaryDirectory() as tmp:
            yield tmp, argv
        return
    i = argv.index("--keep")
    if i + 1 == len(argv):
        sys.exit("--keep needs a folder: --keep DIR")
    yield argv[i + 1], argv[:i] + argv[i + 2:]
