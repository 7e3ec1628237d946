"""The test phase of a distill mode (``--phase test``): score a set, or baselines of its shape.

A candidate set is the distilled one or a baseline built from training images with the same
number of images per class and per step (``baselines``). It is scored with its learned step
sizes (repeated or truncated to ``distill_epochs`` passes), with one fixed step size, or as the
memory of a k-nearest-neighbour classifier. For the stochastic baselines ``test_optimize`` draws
many candidates and keeps the best as scored on *validation* batches by *training* networks; it
is never given the test split, which only the final scoring reads.

Pure: no files, no printing. Networks come in as stacked weights or callables that make them, so
the caller (``jobs.test_phase``) decides between zoo networks and fresh ones.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .augment import augmenter
from .baselines import average_train, fixed_lrs, herding_train, kmeans_train, knn_accuracy, random_train
from .config import EvalConfig, TestPhaseConfig
from .data import Dataset, Split, shuffled_batches
from .errors import ConfigError
from .evaluate import EvalResult, evaluate_synthetic, score_set
from .models import Params
from .synthetic import SyntheticSet

SOURCES = {"random_train": random_train, "average_train": average_train, "kmeans_train": kmeans_train,
           "herding_train": herding_train}
CANDIDATE_SEED_OFFSET = 7_000_003  # candidate draws have seeds of their own, per run seed


def candidate_seed(run_seed: int, index: int) -> int:
    """Seed of candidate ``index``: the same candidate set on every rerun with ``run_seed``."""
    return CANDIDATE_SEED_OFFSET * (run_seed + 1) + index


def repeat_schedule(lrs: torch.Tensor, steps: int, epochs: int) -> torch.Tensor:
    """A (E * steps,) step-size schedule stretched or cut to ``epochs`` passes: pass e takes the
    step sizes of pass ``e mod E``, so more passes cycle through the learned ones."""
    if lrs.ndim != 1 or lrs.shape[0] % steps:
        raise ConfigError(f"step sizes of shape {tuple(lrs.shape)} do not fill whole passes of {steps} steps")
    passes = lrs.reshape(-1, steps)  # (E, steps)
    index = torch.arange(epochs, device=lrs.device) % passes.shape[0]
    return passes[index].reshape(-1)  # (epochs * steps,)


def step_sizes(test: TestPhaseConfig, steps: int, epochs: int, loaded: SyntheticSet | None
               ) -> torch.Tensor | None:
    """The (steps * epochs,) step sizes every candidate is trained with; None for nearest_neighbor."""
    if test.lrs == "nearest_neighbor":
        return None
    if test.lrs == "fix":
        return fixed_lrs(steps * epochs, test.fixed_lr)
    if loaded is None:
        raise ConfigError("--test_distilled_lrs loaded needs a distilled set")
    return repeat_schedule(loaded.lrs.detach(), steps, epochs)


def make_candidate(images: str, train: Split, steps: int, per_class: int, num_classes: int,
                   lrs: torch.Tensor, mean, std, loaded: SyntheticSet | None,
                   generator: torch.Generator) -> SyntheticSet:
    """One candidate set (S, N, C, H, W) with step sizes ``lrs``: the loaded images, or a
    baseline drawn from ``train`` with ``generator``."""
    if images == "loaded":
        if loaded is None:
            raise ConfigError("--test_distilled_images loaded needs a distilled set")
        return SyntheticSet(loaded.images.detach(), loaded.labels, lrs, loaded.mean, loaded.std,
                            loaded.num_classes)
    return SOURCES[images](train, steps, per_class, num_classes, lrs, mean, std, generator)


def selection_batches(val: Split, batch_size: int, n: int, generator: torch.Generator) -> list[Split]:
    """``n`` random validation batches (the first of ``n`` shuffles), shared by all candidates so
    that they are compared on the same data."""
    return [Split(*next(shuffled_batches(val, batch_size, generator))) for _ in range(n)]


def score(model: nn.Module | None, candidate: SyntheticSet, test: TestPhaseConfig,
          nets: Params | None, split: Split, scratch: EvalConfig | None = None, seed: int = 0,
          compiled: bool = False) -> torch.Tensor:
    """Accuracies on ``split``: one per network after training on ``candidate`` (its steps, or
    from scratch when ``scratch.protocol`` says so; ``seed`` seeds its batch order and
    augmentation; ``compiled``: its loss through ``torch.compile``), or (nearest neighbour) the
    single accuracy of the candidate's images as
    memory, shape (n,)."""
    if test.lrs == "nearest_neighbor":
        memory_x = candidate.images.flatten(0, 1)  # (S * N, C, H, W): every step's images
        memory_y = candidate.hard_labels.flatten()
        acc = knn_accuracy(memory_x, memory_y, split.x, split.y, test.knn_k, test.knn_p)
        return torch.tensor([acc], dtype=torch.float64)
    if scratch is not None and scratch.protocol == "from_scratch":
        result = score_set(model, candidate, nets, split, "from_scratch",
                           (scratch.scratch_epochs, scratch.scratch_lr, scratch.scratch_batch_size), seed,
                           augmenter(scratch.augment or "none", siamese=False), compiled)
    else:
        result = evaluate_synthetic(model, candidate, nets, split)
    return torch.tensor(result.accuracies, dtype=torch.float64)


@dataclass
class Selection:
    """What ``test_optimize`` kept: candidate indices (best first) and every candidate's score."""

    kept: list[int]
    scores: list[float]


def test_optimize(model: nn.Module | None, candidates: Callable[[int], SyntheticSet], n_candidates: int,
                  keep: int, test: TestPhaseConfig, nets: list[Params | None], batches: list[Split],
                  scratch: EvalConfig | None = None, compiled: bool = False) -> Selection:
    """Score ``n_candidates`` candidates on validation ``batches`` (batch i with networks
    ``nets[i]``), keep the ``keep`` best; ties go to the earlier draw.

    There is no test split among the arguments: the selection cannot read it.
    """
    scores = []
    for i in range(n_candidates):
        candidate = candidates(i)
        per_batch = [score(model, candidate, test, n, b, scratch, compiled=compiled).mean()
                     for n, b in zip(nets, batches)]
        scores.append(float(torch.stack(per_batch).mean()))
    order = sorted(range(n_candidates), key=lambda i: (-scores[i], i))
    return Selection(order[:keep], scores)


test_optimize.__test__ = False  # a library function, not a pytest test


@dataclass
class TestPhaseInputs:
    """What a test phase scores, and with which networks.

    ``data``: train builds the baselines, val selects among candidates, test scores the kept ones;
    ``epochs``: passes of GD on each set (the step-size schedule's length / ``steps``);
    ``test_nets(run)``: the (n_nets, ...) networks scoring run ``run``; ``optimize_nets``: one stack
    of training networks per selection batch; both unused for nearest_neighbor.
    """

    __test__ = False  # not a pytest class, whatever its name

    model: nn.Module | None
    data: Dataset
    steps: int
    per_class: int
    epochs: int
    loaded: SyntheticSet | None
    test_nets: Callable[[int], Params] | None
    optimize_nets: list[Params | None] | None
    seed: int
    batch_size: int
    scratch: EvalConfig | None = None  # protocol "from_scratch": SGD on the pooled images instead of steps
    progress: Callable[[str], None] = lambda what: None  # told before each long part
    # --label_mode teacher: each candidate's labels replaced (by the teachers') before it is scored
    relabel: Callable[[SyntheticSet], SyntheticSet] | None = None
    compiled: bool = False  # from-scratch training's loss through torch.compile (--compile)


def run_test_phase(test: TestPhaseConfig, inputs: TestPhaseInputs) -> dict:
    """Build the candidates, select among them if asked, score the kept ones on the test split
    (or, with ``test.score_on == "val"``, on the validation split: for choices such as a baseline's
    step size).

    Returns one result row: images, lrs, mean, std, n, runs, nets, accuracies (run-major),
    run_seeds, and with a selection ``selection_scores``.
    """
    model, data, steps, per_class = inputs.model, inputs.data, inputs.steps, inputs.per_class
    if test.score_on == "val" and data.val is None:
        raise ConfigError("--score_on val scores on the validation split, and this run holds none out; "
                          "give --val_size > 0")
    train, num_classes, run_seed, loaded = data.train, data.num_classes, inputs.seed, inputs.loaded
    device = train.x.device
    from_scratch = inputs.scratch is not None and inputs.scratch.protocol == "from_scratch"
    # from scratch, step sizes play no part: the candidates carry a placeholder schedule
    lrs = fixed_lrs(steps * inputs.epochs, 1.0) if from_scratch else step_sizes(test, steps, inputs.epochs, loaded)
    build_lrs = lrs if lrs is not None else fixed_lrs(steps, 1.0)  # baselines want a schedule
    build_lrs = build_lrs.to(device)

    def candidate(i: int) -> SyntheticSet:
        generator = torch.Generator().manual_seed(candidate_seed(run_seed, i))
        s = make_candidate(test.images, train, steps, per_class, num_classes, build_lrs, data.mean,
                           data.std, loaded, generator)
        s = SyntheticSet(s.images.to(device), s.labels.to(device), build_lrs, s.mean, s.std, s.num_classes)
        return s if inputs.relabel is None else inputs.relabel(s)

    selection = None
    kept = list(range(test.n_runs))
    if test.optimize_n_runs is not None:
        generator = torch.Generator().manual_seed(candidate_seed(run_seed, -1))
        if data.val is None:
            raise ConfigError("--test_optimize_n_runs selects on the validation split; give --val_size > 0")
        batches = selection_batches(data.val, inputs.batch_size, test.niter, generator)
        nets = inputs.optimize_nets if inputs.optimize_nets is not None else [None] * test.niter
        inputs.progress(f"choosing {test.n_runs} of {test.optimize_n_runs} candidates on the validation split")
        selection = test_optimize(model, candidate, test.optimize_n_runs, test.n_runs, test, nets, batches,
                                  inputs.scratch, inputs.compiled)
        kept = selection.kept
    per_run = []
    for run, index in enumerate(kept):
        inputs.progress(f"scoring {test.images} run {run + 1} of {len(kept)}")
        nets = None if test.lrs == "nearest_neighbor" else inputs.test_nets(run)
        split = data.test if test.score_on == "test" else data.val
        per_run.append(score(model, candidate(index), test, nets, split, inputs.scratch, run_seed,
                             inputs.compiled))
    accs = torch.stack(per_run)  # (runs, nets)
    result = EvalResult(tuple(accs.flatten().tolist()))
    knn = test.lrs == "nearest_neighbor"  # a memory, whatever the protocol: no training to name
    row = {"images": test.images, "lrs": "from scratch" if from_scratch and not knn else test.lrs_label,
           "mean": result.mean, "std": result.std,
           "n": result.n, "runs": accs.shape[0], "nets": accs.shape[1], "accuracies": list(result.accuracies),
           "run_seeds": [candidate_seed(run_seed, i) for i in kept]}
    if selection is not None:
        row["selection_scores"] = selection.scores
    return row


# -- the results table (results.md) -----------------------------------------------------------------
TABLE_HEADER = "| images | step sizes | accuracy (%) | std (%) | runs x nets |"


def format_table(rows: list[dict]) -> str:
    """Rows as a markdown table, accuracies in percent with two decimals."""
    lines = [TABLE_HEADER, "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['images']} | {r['lrs']} | {100 * r['mean']:.2f} | {100 * r['std']:.2f} | "
                     f"{r['runs']} x {r['nets']} |")
    return "\n".join(lines)


_ROW = re.compile(r"^\| (\S+) \| ([^|]+?) \| ([\d.]+) \| ([\d.]+) \| (\d+) x (\d+) \|$")


def parse_table(text: str) -> list[dict]:
    """The rows of a ``format_table`` table found in ``text`` (images, lrs, mean, std, runs, nets;
    mean and std as fractions, to the table's precision)."""
    rows = []
    for line in text.splitlines():
        m = _ROW.match(line.strip())
        if m:
            images, lrs, mean, std, runs, nets = m.groups()
            rows.append({"images": images, "lrs": lrs, "mean": float(mean) / 100, "std": float(std) / 100,
                         "runs": int(runs), "nets": int(nets)})
    return rows


SPLIT_NAMES = {"test": "test split", "val": "validation split"}


def _labels_note(labels) -> str:
    if labels == "own":
        return ""
    t = labels["teacher"]
    return f"; labels: the mean softmax(logits / {t['temperature']:g}) of {t['networks']} teacher networks"


def format_markdown(results: dict) -> str:
    """The whole results.md: what was scored, the command, the table."""
    return (f"# Test phase: {results['dataset']}, {results['arch']}\n\n"
            f"Command: `{results['command']}`\n\n"
            f"Mean +- std of accuracy on the {SPLIT_NAMES[results['split']]} over runs x networks; "
            f"networks: {results['test_nets']}{_labels_note(results.get('labels', 'own'))}.\n\n"
            f"{format_table(results['rows'])}\n")
