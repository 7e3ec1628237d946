import importlib
import json

import pytest
import torch
import torch.nn.functional as F

from datadistill import attack, inner, models, weights
from datadistill.adapt import FIXED_LR_GRID, best_fixed_lr
from datadistill.attack import attack_figures, attack_report, confusion, format_attack_table, wanted_labels
from datadistill.commands import main
from datadistill.config import build_config
from datadistill.data import Dataset, Split
from datadistill.methods.wang2018 import Relabel, Wang2018
from datadistill.runtime import Runtime
from datadistill.synthetic import LearnableSet
from datadistill.zoo import train_networks

from guards import GuardedSplit
from zoo_runs import distil_against_zoo


def test_attack_objective_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = models.build_model("MLP", 1, 8, 3).double()
    params = {k: v.double() for k, v in weights.init_params(model, "xavier", 1.0, 3).items()}
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


def test_the_methods_weighted_attack_loss_and_its_gradient_are_the_objectives():
    # wang2018's two-phase surrogate, against autograd of the weighted mean unrolled loss itself
    model = models.build_model("MLP", 1, 8, 3).double()
    nets = weights.stack_params([weights.init_params(model, "xavier", 1.0, s) for s in range(2)])
    nets = {k: v.double() for k, v in nets.items()}
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 1, 8, 8, generator=g, dtype=torch.float64)
    x, y = torch.randn(12, 1, 8, 8, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2] * 4)
    relabel = Relabel(0, 2, attack_weight=3.0)
    with Runtime("cpu") as runtime:
        method = Wang2018(model, build_config({}).synthetic, relabel, "attack", runtime)
        learned = LearnableSet(images, torch.arange(3).repeat(2, 1), torch.tensor([0.1, 0.2, 0.05, 0.3]), 3,
                               (0.0,), (1.0,))
        out = method.loss(learned, nets, x, y, total_nets=2)
        got = torch.autograd.grad(out.objective, learned.tensors())
    leaves = [t.detach().clone().requires_grad_() for t in learned.tensors()]
    trained = inner.batched_unroll(model, nets, leaves[0], learned.labels, leaves[1].exp())
    w = torch.where(y == 0, 3.0, 1.0).double()
    per_net = [(F.cross_entropy(torch.func.functional_call(model, {k: v[i] for k, v in trained.items()}, (x,)),
                                wanted_labels(y, 0, 2), reduction="none") * w).sum() / w.sum() for i in range(2)]
    want = sum(per_net) / 2
    torch.testing.assert_close(out.value, want.detach())
    for a, b in zip(got, torch.autograd.grad(want, leaves)):
        torch.testing.assert_close(a, b)


def test_confusion_counts_add_up_and_give_the_figures():
    model = models.build_model("MLP", 1, 8, 3)
    nets = weights.stack_params([weights.init_params(model, "xavier", 1.0, s) for s in range(4)])
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


def test_relabel_gives_the_wanted_labels_and_weights():
    y = torch.tensor([0, 1, 2, 0, 2])
    attack = Relabel(0, 2, attack_weight=3.0)
    assert attack.labels(y).tolist() == [2, 1, 2, 2, 2]
    assert attack.weights(y).tolist() == [3.0, 1.0, 1.0, 3.0, 1.0]
    assert Relabel(0, 2).weights(y) is None  # the paper's objective: every image weighs 1
    assert Relabel().labels(y) is y and Relabel().weights(y) is None  # basic and adapt


def _overlapping_blobs():
    """Four classes of noisy 8x8 blobs that overlap enough that moving one class moves others;
    a validation split, and a guarded test split."""
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(4, 1, 8, 8, generator=g)

    def split(n):
        y = torch.arange(4).repeat(n)
        return Split(centres[y] + 0.8 * torch.randn(len(y), 1, 8, 8, generator=g), y)
    train, test, val = split(60), split(60), split(30)
    return Dataset("blobs4", train, GuardedSplit(test), 4, (0.0,), (1.0,), val)


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
        init = weights.stack_params([weights.init_params(model, "xavier", 1.0, seed + i) for i in range(n)])
        return train_networks(model, init, blobs.train,
                              build_config({"outer.epochs": 3, "outer.lr": 1e-2, "outer.batch_size": 30}).outer,
                              torch.Generator().manual_seed(seed))
    train_zoo, test_zoo = zoo(0, 6), zoo(100, 4)
    # the paper's attack (the preset's defaults: noise images, fixed labels, every image weighing 1),
    # so that the attack is learned, not inherited from images that start as the baseline
    cfg = build_config({"mode": "distill_attack", "attack_class": 0, "target_class": 1,
                        "synthetic.steps": 1, "synthetic.epochs": 1, "synthetic.init_lr": 0.1,
                        "outer.epochs": 100, "outer.lr": 0.05, "outer.step_size_lr": 0.05, "outer.batch_size": 80,
                        "nets.train_nets_type": "loaded", "nets.n_nets": 6, "nets.test_nets_type": "loaded",
                        "nets.test_n_nets": 4, "nets.sample_n_nets": 3})
    run, setup = distil_against_zoo(cfg, model, blobs, train_zoo)
    assert blobs.test.reads == 0  # the optimisation never touches the test split
    chooser_calls = []

    def chooser(model, candidate, nets, split, grid=FIXED_LR_GRID):
        # best_fixed_lr, recording its inputs; handed validation images, unable to read the test split
        assert split is not blobs.test
        chooser_calls.append((candidate, {k: v.clone() for k, v in nets.items()}, split, tuple(grid)))
        blobs.test.locked = True
        try:
            return best_fixed_lr(model, candidate, nets, split, grid)
        finally:
            blobs.test.locked = False
    monkeypatch.setattr(attack, "best_fixed_lr", chooser)
    report = attack_report(model, run.current(), train_zoo, test_zoo, blobs.train, blobs.val, blobs.test, 0, 1,
                           torch.Generator().manual_seed(0))
    assert blobs.test.reads > 0  # ... which scores the report
    assert (cfg.synthetic.image_init, cfg.synthetic.learn_labels, cfg.attack_weight) == ("noise", False, 1.0)
    assert report["before"]["attack_success"] < 0.1
    # measured 40% success with 90% on the other classes after 300 iterations; on this toy task
    # the real-image baseline (100% / 99%) is not yet beaten (issue 5 stays open on that)
    assert report["distilled"]["attack_success"] > report["before"]["attack_success"] + 0.25, \
        format_attack_table(report)
    assert report["distilled"]["other_classes_accuracy"] > 0.8
    # the baseline's step size is the grid point that best serves the attack objective (validation
    # images with the attacked class relabelled, train-zoo networks), recomputed point by point
    (candidate, nets, selection, grid), = chooser_calls
    assert grid == (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    assert all(torch.equal(nets[k], train_zoo[k][:len(nets[k])]) for k in train_zoo)
    assert torch.equal(selection.x, blobs.val.x)
    assert torch.equal(selection.y, wanted_labels(blobs.val.y, 0, 1))
    assert (candidate.labels == 1).all()  # real class-0 images labelled as the target class
    assert (blobs.train.x[blobs.train.y == 0].flatten(1)[:, None] == candidate.images.flatten(0, 1).flatten(1)[None]
            ).all(-1).any(0).all()  # ... taken from the training split
    scores = [_correct_after_fixed_steps(model, candidate, nets, selection, lr) for lr in grid]
    chosen = report["baseline"]["lr"]
    assert scores[grid.index(chosen)] == max(scores), (chosen, dict(zip(grid, scores)))
    assert len(set(scores)) > 1, "a grid whose every point scores alike chooses nothing"
    assert run.history.losses[-1]["loss"] < 0.5 * run.history.losses[0]["loss"]
    # the distill job reaches the report through the method, which must hand it the run's
    # validation split too
    chooser_calls.clear()
    with Runtime("cpu") as runtime:
        metrics = Wang2018.from_config(cfg, model, runtime).report(run.current(), setup, blobs.test, train_zoo,
                                                                   test_zoo, lambda what: None)
    (_, _, via_method, _), = chooser_calls
    assert torch.equal(via_method.x, blobs.val.x) and torch.equal(via_method.y, wanted_labels(blobs.val.y, 0, 1))
    assert metrics["attack"]["distilled"] == report["distilled"]


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
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags", [["--attack_class", "0"], ["--target_class", "1"], ["--attack_weight", "2"]])
def test_attack_flags_outside_an_attack_are_refused(tmp_path, capsys, flags):
    code = main(["--dataset", "digits", "--results_dir", str(tmp_path / "r"), "--no_progress", *flags])
    err = capsys.readouterr().err
    assert code == 2 and f"{flags[0]} applies to --mode distill_attack only, not distill_basic" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_an_attack_is_validated_by_its_own_objective(monkeypatch, tmp_path):
    # the distill job validates against what the outer loss asks for: attack_class images count as
    # right when taken for target_class (the criterion its baseline's step size is chosen by)
    from datadistill.evaluate import score_set
    job = importlib.import_module("datadistill.jobs.distill")  # the module (the package exports the function)

    seen = {}

    def recording(model, synthetic, nets, split, *args):
        seen.setdefault(mode, []).append(split)
        return score_set(model, synthetic, nets, split, *args)
    monkeypatch.setattr(job, "score_set", recording)
    for mode, extra in (("distill_basic", {}), ("distill_attack", {"attack_class": 3, "target_class": 5})):
        config = build_config({"mode": mode, **extra, "data.dataset": "digits", "outer.epochs": 1,
                               "synthetic.steps": 2, "skip_test": True, "results_dir": str(tmp_path / mode)})
        result = job.distill(config)
        assert len(seen[mode]) == 2 and result.metrics["validation"]["n"] == config.nets.test_n_nets
    val = seen["distill_basic"][0]  # the validation split itself, with its own labels
    wanted = wanted_labels(val.y, 3, 5)
    assert not torch.equal(wanted, val.y)
    for split in seen["distill_attack"]:  # at the start and at the end
        assert torch.equal(split.x, val.x) and torch.equal(split.y, wanted)


def test_an_attack_on_fresh_networks_reports_and_its_test_phase_keeps_its_classes(tmp_path, capsys):
    # fresh networks hold no weights to choose the baseline's step size on: networks of their own do
    out = tmp_path / "r"
    assert main(["--mode", "distill_attack", "--dataset", "digits", "--attack_class", "0", "--target_class", "1",
                 "--distill_steps", "1", "--distill_epochs", "1", "--epochs", "1", "--test_n_nets", "1",
                 "--results_dir", str(out), "--no_progress"]) == 0
    report = json.loads((out / "metrics.json").read_text())["attack"]
    assert (report["attack_class"], report["target_class"]) == (0, 1) and report["baseline"]["lr"] in FIXED_LR_GRID
    capsys.readouterr()
    test = ["test", "--mode", "distill_attack", "--dataset", "digits", "--distilled", str(out / "distilled.pt"),
            "--test_n_nets", "1", "--results_dir", str(tmp_path / "t"), "--no_progress"]
    assert main([*test, "--attack_class", "3", "--target_class", "1"]) == 2
    assert capsys.readouterr().err == (f"datadistill: error: --attack_class 3 disagrees with {out / 'distilled.pt'}, "
                                       f"distilled with attack_class 0; the test phase scores the set as it was "
                                       f"distilled\n")
    assert not (tmp_path / "t").exists()
    assert main([*test, "--attack_class", "0", "--target_class", "1"]) == 0  # the paper's flags, as distilled
