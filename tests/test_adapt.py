import pytest
import torch

from datadistill import adapt, inner, models, weights
from datadistill.adapt import SELECTION_IMAGES, adaptation_report, best_fixed_lr, format_table, selection_split
from datadistill.config import DataConfig, NetsConfig, RunConfig, build_config
from datadistill.data import Dataset, Split, to_shape
from datadistill.errors import ConfigError
from datadistill.methods.wang2018 import Wang2018
from datadistill.runtime import Runtime
from datadistill.zoo import train_networks

from guards import GuardedSplit
from zoo_runs import distil_against_zoo


def _domains():
    """Three classes of 8x8 blobs; the target domain moves every class centre and flips the image.
    The target holds a validation split; its test split is guarded."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 1, 8, 8, generator=g) * 2
    moved = centres.flip(-1) + torch.randn(3, 1, 8, 8, generator=g)

    def dataset(c, n_train, n_test, n_val):
        def split(n):
            y = torch.arange(3).repeat(n)
            return Split(c[y] + 0.7 * torch.randn(len(y), 1, 8, 8, generator=g), y)
        train, test, val = split(n_train), split(n_test), split(n_val) if n_val else None
        return Dataset("blobs", train, GuardedSplit(test), 3, (0.0,), (1.0,), val)

    return dataset(centres, 60, 20, 0), dataset(moved, 60, 40, 20)


def _recording(calls, target):
    """``best_fixed_lr`` that records what it chose from, (candidate, nets, split, grid), and
    checks that it was handed the validation split and could not read the test split."""
    def chooser(model, candidate, nets, split, grid=adapt.FIXED_LR_GRID):
        assert split is not target.test and split is target.val
        calls.append((candidate, {k: v.clone() for k, v in nets.items()}, split, tuple(grid)))
        target.test.locked = True
        try:
            return best_fixed_lr(model, candidate, nets, split, grid)
        finally:
            target.test.locked = False
    return chooser


def _grid_scores(model, candidate, nets, split, grid):
    """For each step size in ``grid`` (one fixed size for every step): the images of ``split``
    that ``nets`` classify right after ``candidate``'s GD steps, counted over all the networks
    (an integer, so that ties are exact; the networks' mean accuracy times their number of tests)."""
    scores = []
    for lr in grid:
        trained = inner.batched_train(model, nets, candidate.images, candidate.labels,
                                      torch.full(candidate.lrs.shape, float(lr)))
        scores.append(int((inner.batched_logits(model, trained, split.x).argmax(-1) == split.y).sum()))
    return scores


def test_distilled_steps_adapt_source_networks_to_the_target(monkeypatch):
    source, target = _domains()
    model = models.build_model("MLP", 1, 8, 3)
    def zoo(first_seed, n):
        init = weights.stack_params([weights.init_params(model, "xavier", 1.0, first_seed + i) for i in range(n)])
        return train_networks(model, init, source.train,
                              build_config({"outer.epochs": 30, "outer.lr": 1e-2, "outer.batch_size": 30}).outer,
                              torch.Generator().manual_seed(first_seed))
    train_zoo, test_zoo = zoo(0, 8), zoo(100, 6)
    # the zoo preset's images start as noise: whatever adapts the networks was learned
    cfg = build_config({"mode": "distill_adapt", "data.dataset": "blobs", "data.source_dataset": "blobs",
                        "nets.train_nets_type": "loaded", "nets.n_nets": 8, "nets.test_nets_type": "loaded",
                        "nets.test_n_nets": 6, "nets.sample_n_nets": 4, "synthetic.steps": 1, "synthetic.epochs": 2,
                        "outer.epochs": 40, "outer.lr": 0.05,
                        "outer.step_size_lr": 0.05, "outer.batch_size": 60})
    assert cfg.synthetic.image_init == "noise"
    run, setup = distil_against_zoo(cfg, model, target, train_zoo)
    assert target.test.reads == 0  # the optimisation never touches the test split
    chooser_calls = []
    monkeypatch.setattr(adapt, "best_fixed_lr", _recording(chooser_calls, target))
    rows = adaptation_report(model, run.current(), train_zoo, test_zoo, target, torch.Generator().manual_seed(0),
                             finetune_steps=40, finetune_lr=1e-2, finetune_batch=30)
    before = rows["no adaptation"]["mean"]
    after = rows["distilled (learned step sizes)"]["mean"]
    assert after > before + 0.2, format_table(rows)
    assert target.test.reads > 0  # ... which scores the rows
    # the baseline's step size is the grid point whose steps score best on the selection data
    # (the target's *validation* split, *train* zoo networks), recomputed here one grid point at a time
    (candidate, nets, selection, grid), = chooser_calls
    assert grid == (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    assert all(torch.equal(nets[k], train_zoo[k][:len(nets[k])]) for k in train_zoo)
    assert torch.equal(selection.x, target.val.x) and torch.equal(selection.y, target.val.y)
    scores = _grid_scores(model, candidate, nets, selection, grid)
    chosen = rows["random real (best fixed step size)"]["lr"]
    assert scores[grid.index(chosen)] == max(scores), (chosen, dict(zip(grid, scores)))
    assert len(set(scores)) > 1, "a grid whose every point scores alike chooses nothing"
    assert all(r["n"] == 6 for r in rows.values())
    # 40 steps at 6 batches an epoch: 7 whole epochs, and the bound does adapt
    assert rows["full fine-tune (7 epochs, bound)"]["mean"] > before + 0.2, format_table(rows)
    # the distill job reaches the report through the method, which must hand it the run's
    # validation split too (the fine-tune bound is not under test here: skipped)
    chooser_calls.clear()
    monkeypatch.setattr(adapt, "train_networks", lambda model, nets, *rest: nets)
    with Runtime("cpu") as runtime:
        metrics = Wang2018.from_config(cfg, model, runtime).report(run.current(), setup, target.test, train_zoo,
                                                                   test_zoo, lambda what: None)
    (_, _, via_method, _), = chooser_calls  # the recording chooser checked it is target.val
    assert via_method is target.val
    assert metrics["adaptation"]["distilled (learned step sizes)"] == rows["distilled (learned step sizes)"]


def test_the_step_size_is_chosen_on_validation_else_on_training_images():
    g = torch.Generator().manual_seed(0)
    train = Split(torch.randn(SELECTION_IMAGES + 7, 1, 2, 2, generator=g), torch.arange(SELECTION_IMAGES + 7) % 3)
    val = Split(torch.randn(9, 1, 2, 2, generator=g), torch.arange(9) % 3)
    assert selection_split(train, val) is val
    fallback = selection_split(train, None)  # --val_size 0: the first training images, never the test split
    assert torch.equal(fallback.x, train.x[:SELECTION_IMAGES]) and torch.equal(fallback.y, train.y[:SELECTION_IMAGES])


def test_best_fixed_lr_picks_the_grid_point_that_trains_best():
    source, _ = _domains()
    model = models.build_model("MLP", 1, 8, 3)
    nets = weights.stack_params([weights.init_params(model, "xavier", 1.0, s) for s in range(3)])
    from datadistill.baselines import random_train
    real = random_train(source.train, 1, 5, 3, torch.ones(3), (0.0,), (1.0,), torch.Generator().manual_seed(0))
    assert best_fixed_lr(model, real, nets, source.train, grid=(1e-6, 0.1)) == 0.1
    assert best_fixed_lr(model, real, nets, source.train, grid=(0.1, 1e-6)) == 0.1


def test_to_shape_maps_digit_domains_deterministically():
    rgb = torch.rand(4, 3, 32, 32)
    gray = to_shape(rgb, (1, 28, 28))
    assert gray.shape == (4, 1, 28, 28) and torch.equal(gray, to_shape(rgb, (1, 28, 28)))
    flat = torch.full((2, 3, 32, 32), 0.25)
    torch.testing.assert_close(to_shape(flat, (1, 16, 16)), torch.full((2, 1, 16, 16), 0.25), atol=1e-4, rtol=0)  # luma weights sum to 0.9999
    assert to_shape(torch.rand(2, 1, 16, 16), (3, 28, 28)).shape == (2, 3, 28, 28)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(to_shape(x, (1, 28, 28)), x)
    with pytest.raises(ConfigError, match="accepted: 1 <-> 3"):
        to_shape(torch.rand(1, 2, 8, 8), (3, 8, 8))


def test_adapt_needs_a_source_and_loaded_nets():
    with pytest.raises(ConfigError, match="needs --source_dataset"):
        RunConfig(mode="distill_adapt", nets=NetsConfig("loaded", 2))
    with pytest.raises(ConfigError, match="needs --train_nets_type loaded"):
        RunConfig(mode="distill_adapt", data=DataConfig("USPS", source_dataset="MNIST"))
    with pytest.raises(ConfigError, match="give --test_nets_type loaded .* or same_as_train"):
        RunConfig(mode="distill_adapt", data=DataConfig("USPS", source_dataset="MNIST"), nets=NetsConfig("loaded", 2))


def test_adapting_a_dataset_to_itself_is_refused_in_one_line(tmp_path, capsys):
    from datadistill.commands import main

    code = main(["distill", "--mode", "distill_adapt", "--dataset", "digits", "--source_dataset", "digits",
                 "--train_nets_type", "loaded", "--test_nets_type", "loaded", "--results_dir", str(tmp_path / "r"),
                 "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--source_dataset digits is the --dataset itself" in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()
