import pytest
import torch

from datadistill import attack, inner, models
from datadistill.adapt import FIXED_LR_GRID, best_fixed_lr
from datadistill.attack import attack_figures, attack_report, confusion, format_attack_table
from datadistill.cli import main
from datadistill.config import NetsConfig, OuterConfig, RunConfig, SyntheticConfig
from datadistill.data import Split
from datadistill.distill import Distillation
from datadistill.errors import ConfigError
from datadistill.objectives import wanted_labels
from datadistill.zoo import train_networks


def test_attack_objective_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = models.build_model("MLP", 1, 8, 3).double()
    params = {k: v.double() for k, v in models.init_params(model, "xavier", 1.0, 3).items()}
    images = torch.randn(1, 3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(3)[None]
    lrs = torch.full((2,), 0.1, dtype=torch.float64, requires_grad=True)
    x, y = torch.randn(12, 1, 8, 8, dtype=torch.float64), torch.arange(3).repeat(4)
    wanted = wanted_labels(y, 0, 2)
    assert wanted.tolist() == [2, 1, 2] * 4

    def loss(imgs, rates):
        return inner.unrolled_loss(model, params, imgs, labels, rates, x, wanted)

    g_img, g_lr = torch.autograd.grad(loss(images, lrs), (images, lrs))
    direction = torch.randn_like(images)
    eps = 1e-6
    with torch.no_grad():
        fd = (loss(images + eps * direction, lrs) - loss(images - eps * direction, lrs)) / (2 * eps)
        fd_lr = (loss(images, lrs + eps * torch.tensor([1.0, 0.0], dtype=torch.float64))
                 - loss(images, lrs - eps * torch.tensor([1.0, 0.0], dtype=torch.float64))) / (2 * eps)
    torch.testing.assert_close((g_img * direction).sum(), fd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g_lr[0], fd_lr, rtol=1e-6, atol=1e-9)


def test_confusion_counts_add_up_and_give_the_figures():
    model = models.build_model("MLP", 1, 8, 3)
    nets = models.stack_params([models.init_params(model, "xavier", 1.0, s) for s in range(4)])
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(30, 1, 8, 8, generator=g), torch.tensor([0] * 5 + [1] * 10 + [2] * 15))
    conf = confusion(model, nets, split, 3)
    assert conf.shape == (4, 3, 3)
    assert conf.sum((0, 2)).tolist() == [20, 40, 60]  # every test image counted once per network
    pred = inner.batched_logits(model, nets, split.x).argmax(-1)
    fig = attack_figures(conf, 0, 1)
    success = ((pred[:, :5] == 1).float().mean(1)).mean()
    others = (pred[:, 5:] == split.y[5:]).float().mean(1).mean()
    assert fig["attack_success"] == pytest.approx(float(success))
    assert fig["other_classes_accuracy"] == pytest.approx(float(others))
    assert len(fig["per_class_accuracy"]) == 3


def _overlapping_blobs():
    """Four classes of noisy 8x8 blobs that overlap enough that moving one class moves others."""
    from datadistill.data import Dataset
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(4, 1, 8, 8, generator=g)

    def split(n):
        y = torch.arange(4).repeat(n)
        return Split(centres[y] + 0.8 * torch.randn(len(y), 1, 8, 8, generator=g), y)
    return Dataset("blobs4", split(60), split(60), 4, (0.0,), (1.0,))


def _correct_after_fixed_steps(model, candidate, nets, split, lr):
    """Images of ``split`` that ``nets`` classify as labelled after ``candidate``'s GD steps, all
    of step size ``lr``, counted over all the networks (an integer, so that ties are exact)."""
    trained = inner.batched_train(model, nets, candidate.images, candidate.labels,
                                  torch.full(candidate.lrs.shape, float(lr)))
    return int((inner.batched_logits(model, trained, split.x).argmax(-1) == split.y).sum())


def test_distilled_attack_moves_the_attacked_class_and_reports_a_baseline(monkeypatch):
    blobs = _overlapping_blobs()
    model = models.build_model("MLP", 1, 8, 4)
    def zoo(seed, n):  # a few epochs: accurate, but not so saturated that one step cannot move them
        init = models.stack_params([models.init_params(model, "xavier", 1.0, seed + i) for i in range(n)])
        return train_networks(model, init, blobs.train, OuterConfig(epochs=3, lr=1e-2, batch_size=30),
                              torch.Generator().manual_seed(seed))
    train_zoo, test_zoo = zoo(0, 6), zoo(100, 4)
    cfg = RunConfig(mode="distill_attack", attack_class=0, target_class=1,
                    synthetic=SyntheticConfig(steps=1, epochs=1, init_lr=0.1),
                    outer=OuterConfig(epochs=100, lr=0.05, batch_size=80),
                    nets=NetsConfig("loaded", 6, "loaded", 4, sample_n_nets=3))
    run = Distillation(cfg, model, blobs.train, blobs.test, 4, blobs.mean, blobs.std,
                       loaded_train=train_zoo, loaded_test=test_zoo)
    run.run()
    chooser_calls = []

    def chooser(model, candidate, nets, split, grid=FIXED_LR_GRID):  # best_fixed_lr, recording its inputs
        chooser_calls.append((candidate, {k: v.clone() for k, v in nets.items()}, split, tuple(grid)))
        return best_fixed_lr(model, candidate, nets, split, grid)
    monkeypatch.setattr(attack, "best_fixed_lr", chooser)
    report = attack_report(model, run.current(), train_zoo, test_zoo, blobs.train, blobs.test, 0, 1,
                           torch.Generator().manual_seed(0))
    assert report["before"]["attack_success"] < 0.1
    # measured 40% success with 90% on the other classes after 300 iterations; on this toy task
    # the real-image baseline (100% / 99%) is not yet beaten (issue 5 stays open on that)
    assert report["distilled"]["attack_success"] > report["before"]["attack_success"] + 0.25, \
        format_attack_table(report)
    assert report["distilled"]["other_classes_accuracy"] > 0.8
    # the baseline's step size is the grid point that best serves the attack objective (training
    # images with the attacked class relabelled, train-zoo networks), recomputed point by point
    (candidate, nets, selection, grid), = chooser_calls
    assert grid == (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    assert all(torch.equal(nets[k], train_zoo[k][:len(nets[k])]) for k in train_zoo)
    assert torch.equal(selection.x, blobs.train.x[:len(selection)])
    assert torch.equal(selection.y, wanted_labels(blobs.train.y[:len(selection)], 0, 1))
    assert (candidate.labels == 1).all()  # real class-0 images labelled as the target class
    scores = [_correct_after_fixed_steps(model, candidate, nets, selection, lr) for lr in grid]
    chosen = report["baseline"]["lr"]
    assert scores[grid.index(chosen)] == max(scores), (chosen, dict(zip(grid, scores)))
    assert len(set(scores)) > 1, "a grid whose every point scores alike chooses nothing"
    assert run.history.losses[-1]["loss"] < 0.5 * run.history.losses[0]["loss"]


@pytest.mark.parametrize("flags,message", [
    (["--attack_class", "0", "--target_class", "0"], "both 0; an attack needs two different classes"),
    (["--attack_class", "0"], "needs --attack_class and --target_class"),
    (["--attack_class", "0", "--target_class", "12", "--train_nets_type", "unknown_init"],
     "--target_class 12 is not a class of digits; accepted: 0..9"),
    (["--attack_class", "0", "--target_class", "1", "--train_nets_type", "loaded"], "zoo.pt does not exist"),
    (["--attack_class", "0", "--target_class", "1", "--attack_weight", "0"], "--attack_weight must be positive"),
])
def test_attack_refusals(tmp_path, capsys, flags, message):
    code = main(["--mode", "distill_attack", "--dataset", "digits", "--results_dir", str(tmp_path / "r"),
                 "--no_progress", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
