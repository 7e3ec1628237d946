"""The only module that writes files: atomic writes, distilled sets, checkpoints, metrics, plots.

Every file is written to a temporary name in its destination folder and renamed into place, so a
killed run leaves either the previous version or the new one, never half a file.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import secrets
import warnings
from pathlib import Path
from typing import Callable

import torch

from .errors import ArtifactError
from .synthetic import SyntheticSet

DISTILLED = "distilled.pt"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CHECKPOINT_FORMAT = "datadistill.checkpoint/2"


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``.

    The result has the mode any new file gets (``0o666`` less the umask, so 0644 under umask 022),
    not ``mkstemp``'s 0600: the temporary file is created with mode ``0o666`` and the kernel
    applies the umask, which avoids reading the umask (``os.umask`` sets it process-wide).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty file ``.NAME.RANDOM.tmp`` beside ``path``, opened for writing; an exclusive
    create under a random name, retried on the rare clash, as ``mkstemp`` does."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_json(path, obj) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def _torch_save(path, obj) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def _torch_load(path, what: str, hint: str):
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{what} {path} is a directory; {hint}")
    if not path.exists():
        raise ArtifactError(f"{what} {path} does not exist; {hint}")
    if not path.is_file():
        raise ArtifactError(f"{what} {path} is not a regular file; {hint}")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ArtifactError(f"cannot read {what} {path}: {e.strerror or type(e).__name__}; {hint}") from None
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign pickles
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a corrupt or foreign file, with long advice
        raise ArtifactError(f"cannot read {what} {path}: not a PyTorch file of plain tensors, or a damaged one "
                            f"({_unreadable_reason(head, e)}); {hint}") from None


def _unreadable_reason(head: bytes, error: Exception) -> str:
    """A few words on why torch could not load a file starting with ``head``; torch's own words are
    paragraphs, or as bare as "101"."""
    if not head:
        return "the file is empty"
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        return "it is not the zip archive torch.save writes"
    if isinstance(error, pickle.UnpicklingError):
        return "it holds objects other than tensors and plain values"
    return "a truncated or damaged archive"


def save_distilled(path, synthetic: SyntheticSet) -> Path:
    return _torch_save(path, synthetic.to_dict())


def load_distilled(path) -> SyntheticSet:
    """Read a ``distilled.pt``; ``ArtifactError`` if missing or not a distilled set."""
    d = _torch_load(path, "distilled file", "expected a distilled.pt written by datadistill")
    try:
        return SyntheticSet.from_dict(d)
    except ArtifactError as e:
        raise ArtifactError(f"cannot read distilled file {path}: {e}") from None


def save_zoo(path, zoo) -> Path:
    """Write a ``zoo.Zoo`` (or one part of it) as a plain dict."""
    return _torch_save(path, zoo.to_dict())


def load_zoo(path, hint: str = "train one with datadistill train-zoo (and --phase test for the test zoo), or "
                               "pass --zoo_dir"):
    """Read a zoo file; ``ArtifactError`` if missing or not a zoo, ending with ``hint`` (what to do)."""
    from .zoo import Zoo

    d = _torch_load(path, "model zoo", hint)
    try:
        return Zoo.from_dict(d)
    except (ArtifactError, KeyError) as e:
        raise ArtifactError(f"cannot read model zoo {path}: {e}; {hint}") from None


def save_checkpoint(path, state: dict) -> Path:
    return _torch_save(path, {"format": CHECKPOINT_FORMAT, **state})


def load_checkpoint(path) -> dict:
    hint = "expected a checkpoint.pt written by datadistill; run without --resume to start afresh"
    state = _torch_load(path, "checkpoint", hint)
    if isinstance(state, dict) and state.get("format") == "datadistill.checkpoint/1":
        raise ArtifactError(f"checkpoint {path} was written by datadistill 0.1, whose runs this version "
                            f"does not continue; run without --resume to start afresh")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"cannot read checkpoint {path}: not a datadistill checkpoint; {hint}")
    return state


# -- pictures -----------------------------------------------------------------------------------
def _png_bytes(save: Callable[[io.BytesIO], None]) -> bytes:
    buf = io.BytesIO()
    save(buf)
    return buf.getvalue()


def save_image_grids(folder, synthetic: SyntheticSet, class_names: list[str] | None = None) -> list[Path]:
    """One PNG per step: that step's images in pixel space, a row per class; for a set in
    multi-formation (``meta["stored_images"]``), also ``stored.png``: the stored images whose tiles
    the steps' images are."""
    images = synthetic.denormalised()  # (S, N, C, H, W)
    paths = [atomic_write(Path(folder) / f"step{s:03d}.png", _grid_writer(images[s], synthetic.num_classes))
             for s in range(synthetic.steps)]
    stored = synthetic.meta.get("stored_images")
    if stored is not None:
        pixels = synthetic.pixels(stored)
        paths.append(atomic_write(Path(folder) / "stored.png", _grid_writer(pixels[0], synthetic.num_classes)))
    return paths


def _grid_writer(images: torch.Tensor, num_classes: int) -> Callable[[io.BufferedWriter], None]:
    """Writes images (N, C, H, W) in [0, 1], class-major, as a PNG grid with a row per class."""
    from torchvision.utils import make_grid, save_image

    per_class = images.shape[0] // num_classes
    grid = make_grid(images, nrow=per_class if per_class > 1 else num_classes, padding=2, pad_value=1.0)
    if grid.shape[-1] < 256:  # small digits are unreadable at native size
        scale = max(1, 256 // grid.shape[-1])
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    data = _png_bytes(lambda b: save_image(grid, b, format="png"))
    return lambda f: f.write(data)


def _figure_png(draw: Callable) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        return _png_bytes(lambda b: fig.savefig(b, format="png"))
    finally:
        plt.close(fig)


def plot_step_sizes(path, lrs: torch.Tensor, steps: int) -> Path:
    values = lrs.detach().cpu().tolist()

    def draw(ax):
        ax.plot(range(1, len(values) + 1), values, marker="o")
        for e in range(steps, len(values), steps):
            ax.axvline(e + 0.5, color="grey", lw=0.5, ls="--")
        ax.set_xlabel("GD step (dashed: next pass over the steps)")
        ax.set_ylabel("learned step size")
        ax.set_yscale("log")
        ax.set_title("Learned step sizes")

    data = _figure_png(draw)
    return atomic_write(path, lambda f: f.write(data))


def plot_accuracy(path, evaluations: list[dict]) -> Path:
    def draw(ax):
        xs = [e["iteration"] for e in evaluations]
        means = [100 * e["mean"] for e in evaluations]
        stds = [100 * e["std"] for e in evaluations]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3)
        ax.set_xlabel("outer iteration")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title("Accuracy of networks trained on the distilled set")
        ax.grid(alpha=0.3)

    data = _figure_png(draw)
    return atomic_write(path, lambda f: f.write(data))


def plot_per_class(path, attack: dict) -> Path:
    """Bars of per-class test accuracy before the attack, after it, and after the baseline."""
    cols = ("before", "distilled", "baseline")

    def draw(ax):
        n = len(attack["before"]["per_class_accuracy"])
        width = 0.8 / len(cols)
        for i, col in enumerate(cols):
            values = [100 * v for v in attack[col]["per_class_accuracy"]]
            ax.bar([k + (i - 1) * width for k in range(n)], values, width, label=col)
        ax.set_xticks(range(n))
        ax.set_xlabel(f"class (attack: {attack['attack_class']} -> {attack['target_class']})")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Per-class accuracy of the test networks")
        ax.legend(fontsize=8)

    data = _figure_png(draw)
    return atomic_write(path, lambda f: f.write(data))
