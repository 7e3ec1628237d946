import importlib
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from datadistill import artifacts
from datadistill.baselines import fixed_lrs, random_train
from datadistill.commands import main
from datadistill.config import INITS
from datadistill.data import load_dataset
from datadistill.evaluate import (CHUNK_NETS, EvalResult, accuracy, evaluate_from_scratch, scratch_chunk,
                                 train_from_scratch)
from datadistill.nets import eval_seeds, fresh_nets
from datadistill.models import build_model
from datadistill.weights import unstack_params
from datadistill.synthetic import SyntheticSet


def _blobs_set(blobs, steps=2, per_class=2, seed=0):
    return random_train(blobs.train, steps, per_class, blobs.num_classes, fixed_lrs(steps, 0.1),
                        blobs.mean, blobs.std, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch_size", [None, 5])
@pytest.mark.parametrize("learned_labels", [False, True])
def test_from_scratch_equals_torch_optim_sgd(blobs, batch_size, learned_labels):
    model = build_model("MLP", 1, 8, 3).double()
    nets = fresh_nets(model, "xavier", 1.0, [1, 2], "cpu")
    nets = {k: v.double() for k, v in nets.items()}
    synthetic = _blobs_set(blobs)  # 12 images: batches of 5, 5, 2
    synthetic.images = synthetic.images.double()
    if learned_labels:  # probability vectors, as --learn_labels writes them
        synthetic.labels = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(3),
                                       dtype=torch.float64).softmax(-1)
    got = train_from_scratch(model, nets, synthetic, epochs=3, lr=0.05, batch_size=batch_size,
                             generator=torch.Generator().manual_seed(7))
    x, y = synthetic.images.flatten(0, 1), synthetic.labels.flatten(0, 1)
    for i, init in enumerate(unstack_params(nets)):
        model.load_state_dict(init)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(7)
        for epoch in range(3):
            if epoch == 1:  # at half of the epochs (3 // 2) a new optimiser at a tenth of the rate
                opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=5e-4)
            order = torch.arange(12) if batch_size is None else torch.randperm(12, generator=g)
            for idx in order.split(batch_size or 12):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        for k, v in model.named_parameters():
            torch.testing.assert_close(got[k][i], v.detach(), rtol=1e-10, atol=1e-12)


def test_from_scratch_on_a_separable_set_beats_chance(blobs):
    model = build_model("MLP", 1, 8, 3)
    nets = fresh_nets(model, "xavier", 1.0, [0, 1, 2], "cpu")
    before = {k: v.clone() for k, v in nets.items()}
    result = evaluate_from_scratch(model, _blobs_set(blobs), nets, blobs.test, epochs=30, lr=0.01,
                                   batch_size=4, generator=torch.Generator().manual_seed(0))
    assert result.n == 3 and min(result.accuracies) > 0.9  # chance is 1/3
    assert all(torch.equal(before[k], v) for k, v in nets.items()), "the initial weights are left alone"


def test_from_scratch_networks_that_diverge_are_an_error_not_chance(blobs):
    model = build_model("MLP", 1, 8, 3)
    nets = fresh_nets(model, "xavier", 1.0, [0, 1], "cpu")
    with pytest.raises(FloatingPointError, match="diverged .* at rate inf; try a smaller --scratch_lr"):
        evaluate_from_scratch(model, _blobs_set(blobs), nets, blobs.test, epochs=2, lr=float("inf"), batch_size=4,
                              generator=torch.Generator().manual_seed(0))


def test_from_scratch_on_a_cpu_trains_one_network_after_another(blobs):
    """On a CPU each network is its own chunk: network i trains on the batches that follow network
    i - 1's draws from the one generator, exactly as separate ``train_from_scratch`` calls would."""
    assert scratch_chunk("cpu") == 1 and scratch_chunk("cuda") == CHUNK_NETS > 1
    model = build_model("MLP", 1, 8, 3)
    nets = fresh_nets(model, "xavier", 1.0, [0, 1, 2], "cpu")
    synthetic = _blobs_set(blobs)
    got = evaluate_from_scratch(model, synthetic, nets, blobs.test, epochs=3, lr=0.05, batch_size=5,
                                generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    want = [float(accuracy(model, train_from_scratch(model, {k: v[i:i + 1] for k, v in nets.items()}, synthetic,
                                                     3, 0.05, 5, generator=g), blobs.test))
            for i in range(3)]
    assert list(got.accuracies) == want
    together = evaluate_from_scratch(model, synthetic, nets, blobs.test, epochs=3, lr=0.05, batch_size=5,
                                     generator=torch.Generator().manual_seed(7), chunk_nets=3)
    # the first network draws the same batches either way; vmap's rounding may flip one argmax
    assert together.accuracies[0] == pytest.approx(want[0], abs=1.5 / len(blobs.test))


@pytest.fixture(scope="module")
def digits_set():
    """A random-real-image set of the bundled digits at 28 px, 2 steps x 1 per class."""
    d = load_dataset("digits", image_size=28)
    s = random_train(d.train, 2, 1, d.num_classes, fixed_lrs(4, 0.02), d.mean, d.std,
                     torch.Generator().manual_seed(0))
    s.meta.update(dataset="digits", arch="LeNet")
    return s


@pytest.fixture
def saved(tmp_path, digits_set):
    return str(artifacts.save_distilled(tmp_path / "distilled.pt", digits_set))


def _plain_torch_accuracies(path, protocol, seed, n_nets):
    """Test accuracy on digits of MLPs trained on the file at ``path`` with nn.Module and plain
    autograd, one network at a time (the protocols of ``evaluate``, the settings of the test below)."""
    d = torch.load(path, weights_only=True)
    x, y, lrs = d["images"], d["labels"], d["lrs"]
    test = load_dataset("digits", image_size=28).test
    model = build_model("MLP", 1, 28, 10)
    accs = []
    g = torch.Generator().manual_seed(seed)  # from scratch on a CPU: each network continues its draws
    for init in unstack_params(fresh_nets(model, "xavier", 1.0, eval_seeds(seed, n_nets), "cpu")):
        model.load_state_dict(init)
        if protocol == "unrolled":  # step t: GD on batch t % steps with the saved step size t
            for t, lr in enumerate(lrs.tolist()):
                model.zero_grad()
                F.cross_entropy(model(x[t % x.shape[0]]), y[t % x.shape[0]]).backward()
                with torch.no_grad():
                    for p in model.parameters():
                        p -= lr * p.grad
        else:  # 5 epochs of SGD over the pooled images, batches of 10, the order seeded by --seed,
            # from epoch 5 // 2 on a new optimiser at a tenth of the rate
            flat_x, flat_y = x.flatten(0, 1), y.flatten(0, 1)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            for epoch in range(5):
                if epoch == 2:
                    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
                for idx in torch.randperm(len(flat_y), generator=g).split(10):
                    opt.zero_grad()
                    F.cross_entropy(model(flat_x[idx]), flat_y[idx]).backward()
                    opt.step()
        with torch.no_grad():
            accs.append(float((model(test.x).argmax(-1) == test.y).float().mean()))
    return accs


@pytest.mark.parametrize("protocol,extra", [
    ("unrolled", []),
    ("from_scratch", ["--scratch_epochs", "5", "--scratch_lr", "0.01", "--scratch_batch_size", "10"]),
])
def test_evaluate_round_trips_a_saved_set(tmp_path, capsys, saved, protocol, extra):
    out = tmp_path / "eval"
    argv = ["evaluate", saved, "--dataset", "digits", "--arch", "MLP", "--test_n_nets", "3",
            "--protocol", protocol, "--seed", "4", "--results_dir", str(out), *extra]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"({protocol}, MLP on digits, fresh nets)" in printed and "over 3 nets" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith(f"datadistill evaluate {saved} --dataset digits")
    assert (results["arch"], results["init"], results["nets"]) == ("MLP", "xavier", "fresh")
    assert results["settings"]["protocol"] == protocol and results["settings"]["seed"] == 4
    r = results["result"]
    assert r["n"] == 3 and len(r["accuracies"]) == 3 and all(0 <= a <= 1 for a in r["accuracies"])
    # re-evaluate the saved file in plain torch: the fresh networks of --seed 4, trained one by one
    want = _plain_torch_accuracies(saved, protocol, seed=4, n_nets=3)
    test_size = len(load_dataset("digits", image_size=28).test)
    assert r["accuracies"] == pytest.approx(want, abs=1.5 / test_size)  # an argmax tie may flip one image
    assert r["mean"] == pytest.approx(sum(want) / 3, abs=1.5 / test_size)
    assert f"{100 * r['mean']:.2f}% +- {100 * r['std']:.2f} over 3 nets" in printed
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # no temporary left behind


def test_evaluate_defaults_to_the_files_dataset_and_arch_and_is_deterministic(capsys, saved):
    assert main(["evaluate", saved, "--test_n_nets", "2"]) == 0
    first = capsys.readouterr().out
    assert "(unrolled, LeNet on digits, fresh nets)" in first
    assert main(["evaluate", saved, "--test_n_nets", "2"]) == 0
    assert capsys.readouterr().out == first


def _run(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors
        return e.code


@pytest.mark.parametrize("case,message", [
    ("missing", "distilled file {tmp}/nope.pt does not exist"),
    ("garbage", "cannot read distilled file"),
    ("foreign", "not a distilled set"),
    ("directory", "distilled file {tmp} is a directory; expected a distilled.pt"),
    ("labels", "labels is an int64 tensor of shape (2, 7); expected class indices"),
    ("n_nets", "--test_n_nets must be positive, got 0"),
    ("epochs", "--scratch_epochs must be positive, got 0"),
    ("protocol", "unknown --protocol 'bogus'; accepted: unrolled, from_scratch"),
    ("shape", "distilled images are (3, 28, 28) (C, H, W), digits images are (1, 28, 28)"),
    # said before the dataset is loaded at the arch's own size
    ("size", "LeNet takes 28, 32-pixel images, {tmp}/small.pt's images have 16"),
    ("arch", "unknown arch 'ResNet'"),
    ("flag", "--bogus does not apply to `datadistill evaluate`"),
    ("fixed", "holds no fixed networks (init_params); use --nets fresh"),
    ("nets", "unknown --nets 'bogus'; accepted: fixed, fresh"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, saved, case, message):
    path = saved
    flags = ["--dataset", "digits"]
    if case == "missing":
        path = str(tmp_path / "nope.pt")
    elif case == "garbage":
        path = str(tmp_path / "garbage.pt")
        (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    elif case == "foreign":
        path = str(tmp_path / "foreign.pt")
        torch.save({"weights": torch.zeros(3)}, path)
    elif case == "directory":
        path = str(tmp_path)
    elif case == "labels":  # fewer labels than images: refused on reading, before any network trains
        path = str(tmp_path / "labels.pt")
        d = torch.load(saved, weights_only=True)
        torch.save({**d, "labels": d["labels"][:, :7]}, path)
    elif case == "shape":
        s = SyntheticSet(torch.zeros(1, 10, 3, 28, 28), torch.arange(10)[None], fixed_lrs(1, 0.1),
                         (0.5,) * 3, (0.2,) * 3, 10)
        path = str(artifacts.save_distilled(tmp_path / "rgb.pt", s))
    elif case == "size":
        s = SyntheticSet(torch.zeros(1, 10, 1, 16, 16), torch.arange(10)[None], fixed_lrs(1, 0.1), (0.5,), (0.2,), 10)
        path = str(artifacts.save_distilled(tmp_path / "small.pt", s))
    else:
        flags += {"n_nets": ["--test_n_nets", "0"], "epochs": ["--scratch_epochs", "0"],
                  "protocol": ["--protocol", "bogus"], "arch": ["--arch", "ResNet"],
                  "flag": ["--bogus"], "fixed": ["--nets", "fixed"], "nets": ["--nets", "bogus"]}[case]
    out = tmp_path / "eval"
    assert _run(["evaluate", path, *flags, "--results_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("datadistill: error: ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path) in err
    assert not out.exists()


def test_the_distill_command_is_unchanged_by_the_subcommand(capsys):
    assert _run(["--mode", "bogus"]) == 2
    assert "unknown mode 'bogus'" in capsys.readouterr().err


# -- a known_init run: its fixed networks travel in distilled.pt (init_params) -----------------------

KNOWN_INIT = ["distill", "--dataset", "digits", "--train_nets_type", "known_init", "--n_nets", "2",
              "--test_nets_type", "same_as_train", "--distill_steps", "2", "--epochs", "1", "--learn_labels",
              "--no_progress"]


@pytest.fixture(scope="module")
def known_init_run(tmp_path_factory):
    """A tiny known_init run on digits, scored at the end on its own two fixed networks:
    (distilled.pt, metrics.json as a dict)."""
    folder = tmp_path_factory.mktemp("known_init")
    assert main([*KNOWN_INIT, "--results_dir", str(folder)]) == 0
    return folder / "distilled.pt", json.loads((folder / "metrics.json").read_text())


def test_evaluate_reproduces_a_known_init_run_on_its_fixed_networks(tmp_path, capsys, known_init_run):
    path, metrics = known_init_run
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["evaluate", str(path), "--results_dir", str(out)]) == 0  # arch, init, nets: the file's
    printed = capsys.readouterr().out
    assert "(unrolled, LeNet on digits, fixed nets)" in printed
    results = json.loads((out / "results.json").read_text())
    assert (results["arch"], results["init"], results["nets"]) == ("LeNet", "xavier", "fixed")
    # the same two networks trained on the same set, scored on the same test split: the same figures
    assert results["result"]["n"] == 2 and metrics["final_accuracy"]["n"] == 2
    assert results["result"]["accuracies"] == metrics["final_accuracy"]["accuracies"]
    assert results["result"]["mean"] == metrics["final_accuracy"]["mean"]
    # --nets fresh: other networks, as many as asked for
    assert main(["evaluate", str(path), "--nets", "fresh", "--test_n_nets", "3"]) == 0
    assert "(unrolled, LeNet on digits, fresh nets)" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--nets", "fixed", "--arch", "MLP"], ["--nets", "fixed", "--init", "kaiming"]])
def test_fixed_networks_of_another_arch_or_init_are_refused(tmp_path, capsys, known_init_run, flags):
    path, _ = known_init_run
    capsys.readouterr()
    out = tmp_path / "eval"
    assert _run(["evaluate", str(path), *flags, "--results_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("datadistill: error: the file's fixed networks are LeNet with xavier init")
    assert err.count("\n") == 1 and "use --nets fresh" in err, err
    assert not out.exists()


def test_a_files_seed_out_of_range_asks_for_a_seed_rather_than_blaming_the_flag(tmp_path, capsys, saved):
    d = torch.load(saved, weights_only=True)
    path = tmp_path / "old.pt"
    torch.save({**d, "config": {**d.get("config", {}), "seed": -1}}, path)  # as written before seeds were checked
    assert _run(["evaluate", str(path), "--dataset", "digits"]) == 2
    assert capsys.readouterr().err == (f"datadistill: error: {path} was distilled with seed -1, outside "
                                       f"0..4294967295 (written before seeds were checked); pass --seed\n")
    assert _run(["evaluate", str(path), "--dataset", "digits", "--test_n_nets", "1", "--seed", "3"]) == 0


def test_the_test_phase_scores_a_known_init_set_on_the_files_fixed_networks(tmp_path, capsys, known_init_run):
    path, metrics = known_init_run
    base = ["test", "--dataset", "digits", "--distilled", str(path), "--train_nets_type", "known_init",
            "--test_nets_type", "same_as_train", "--no_progress"]
    capsys.readouterr()
    assert main([*base, "--results_dir", str(tmp_path / "t")]) == 0
    row, = json.loads((tmp_path / "t" / "results.json").read_text())["rows"]
    # the run's own two networks, trained on the set as the run scored them: its very figures
    assert (row["runs"], row["nets"]) == (1, 2)
    assert row["accuracies"] == metrics["final_accuracy"]["accuracies"]
    # without --dataset, the file's own (digits), not the default MNIST: the same figures
    assert main([*base[:1], *base[3:], "--results_dir", str(tmp_path / "own")]) == 0
    own = json.loads((tmp_path / "own" / "results.json").read_text())
    assert own["config"]["data"]["dataset"] == "digits" and own["rows"][0]["accuracies"] == row["accuracies"]
    # the file fixes the shape: a step count that disagrees with it is refused, not ignored
    assert _run([*base, "--distill_steps", "3", "--results_dir", str(tmp_path / "steps")]) == 2
    assert capsys.readouterr().err == (f"datadistill: error: --distill_steps 3 disagrees with {path}, which holds 2; "
                                       f"a loaded set is scored in its own shape\n")
    out = tmp_path / "mlp"
    assert _run([*base, "--arch", "MLP", "--results_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == ("datadistill: error: the file's fixed networks are LeNet with xavier init; --arch/--init/--width "
                   "ask for MLP with xavier init; give the file's, or --test_nets_type unknown_init\n")
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--test_n_nets", "5"], ["--init_param", "2"], ["--seed", "5"],
                                   ["--nets", "fixed", "--test_n_nets", "3"]])
def test_flags_that_would_draw_or_count_fresh_networks_are_refused_with_fixed_ones(tmp_path, capsys, known_init_run,
                                                                                   flags):
    path, _ = known_init_run
    capsys.readouterr()
    out = tmp_path / "eval"
    assert _run(["evaluate", str(path), *flags, "--results_dir", str(out)]) == 2
    err = capsys.readouterr().err
    flag = flags[-2]
    assert err == (f"datadistill: error: {flag} has nothing to change here: the file's 2 fixed networks are scored "
                   f"as they are (--nets fresh for new ones)\n")
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--width", "64"], ["--arch", "LeNet", "--width", "64"],
                                   ["--arch", "LeNet,AlexCifarNet", "--width", "64"]])
def test_a_width_no_scored_arch_takes_is_refused(tmp_path, capsys, known_init_run, flags):
    path, _ = known_init_run  # LeNet
    capsys.readouterr()
    out = tmp_path / "eval"
    assert _run(["evaluate", str(path), *flags, "--results_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("datadistill: error: --width applies to ConvNet, MLP, not LeNet") and err.count("\n") == 1
    assert not out.exists()


class PlainLeNet(nn.Module):
    """LeNet as datadistill's models.py defines it for 28-pixel images, written out here in plain
    PyTorch (in the textbook order, ReLU then pooling) so that the replay below shares no code with it."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def test_a_plain_pytorch_replay_of_a_known_init_file_gives_the_runs_accuracy(known_init_run):
    path, metrics = known_init_run
    d = torch.load(path, weights_only=True)  # plain tensors and values: no datadistill class inside
    images, labels, lrs, fixed = d["images"], d["labels"], d["lrs"], d["init_params"]
    steps = images.shape[0]
    assert labels.is_floating_point() and labels.shape == (*images.shape[:2], 10)  # learned: probabilities
    torch.testing.assert_close(labels.sum(-1), torch.ones(images.shape[:2]))
    assert lrs.shape == (steps * d["epochs"],)
    # the test split normalised as the run normalised it (with its training split's statistics)
    data = load_dataset("digits", image_size=28, val_size=metrics["config"]["data"]["val_size"])
    assert list(data.mean) == d["mean"] and list(data.std) == d["std"]
    accuracies = []
    for i in range(next(iter(fixed.values())).shape[0]):
        net = PlainLeNet()
        assert set(net.state_dict()) == set(fixed)
        net.load_state_dict({k: v[i] for k, v in fixed.items()})
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        for t in range(lrs.shape[0]):  # step t: batch t % S, step size t
            for group in opt.param_groups:
                group["lr"] = float(lrs[t])
            opt.zero_grad()
            F.cross_entropy(net(images[t % steps]), labels[t % steps]).backward()
            opt.step()
        with torch.no_grad():
            accuracies.append(float((net(data.test.x).argmax(-1) == data.test.y).double().mean()))
    assert len(accuracies) == metrics["final_accuracy"]["n"] == 2
    assert sum(accuracies) / len(accuracies) == pytest.approx(metrics["final_accuracy"]["mean"], abs=1e-4)


def test_evaluate_scores_on_the_test_split_the_run_scored_on(monkeypatch, known_init_run):
    # the set's images live in the run's normalised space (the statistics of its training split,
    # the validation images held out); evaluate must put the test images into that same space
    evaluate_job = importlib.import_module("datadistill.jobs.evaluate")  # jobs.evaluate is also a function
    path, metrics = known_init_run
    scored = []

    def recording(model, synthetic, nets, split):
        scored.append(split)
        return EvalResult((0.0,))
    monkeypatch.setattr(evaluate_job, "evaluate_synthetic", recording)
    evaluate_job.evaluate_file(evaluate_job.EvaluateConfig(str(path)))
    run_data = load_dataset("digits", image_size=28, val_size=metrics["config"]["data"]["val_size"])
    (split,) = scored
    assert torch.equal(split.y, run_data.test.y)
    gap = float((split.x - run_data.test.x).abs().max())
    assert gap == 0, f"the test images are normalised unlike the run's (up to {gap:.2g} apart)"


def test_evaluate_reads_the_dataset_from_where_the_run_read_it(monkeypatch, tmp_path, known_init_run):
    evaluate_job = importlib.import_module("datadistill.jobs.evaluate")
    d = torch.load(known_init_run[0], weights_only=True)
    d["config"]["data"]["root"] = "where-the-run-read"  # digits are bundled: any root loads them
    path = tmp_path / "distilled.pt"
    torch.save(d, path)
    roots = []
    real_load = evaluate_job.load_dataset

    def recording(name, root, *args, **kwargs):
        roots.append(root)
        return real_load(name, root, *args, **kwargs)
    monkeypatch.setattr(evaluate_job, "load_dataset", recording)
    evaluate_job.evaluate_file(evaluate_job.EvaluateConfig(str(path)))
    # a typed root wins over the run's; digits refuse one (test below), so that check steps aside here
    monkeypatch.setattr(evaluate_job, "check_source_flags", lambda *a: None)
    evaluate_job.evaluate_file(evaluate_job.EvaluateConfig(str(path), dataset_root="elsewhere"))
    assert roots == ["where-the-run-read", "elsewhere"]


@pytest.mark.parametrize("command", ["evaluate", "test", "distill", "train-zoo"])
@pytest.mark.parametrize("flag", [["--dataset_root", "somewhere"], ["--download"]])
def test_digits_refuse_a_dataset_root_and_download(tmp_path, capsys, known_init_run, command, flag):
    # the bundled digits read neither: each command says so before reading anything or writing a file
    out = tmp_path / "out"
    argv = {"evaluate": [str(known_init_run[0])], "test": ["--distilled", str(known_init_run[0])],
            "distill": ["--dataset", "digits"], "train-zoo": ["--dataset", "digits"]}[command]
    assert main([command, *argv, *flag, "--results_dir", str(out), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"datadistill: error: {flag[0]} does not apply to digits: "
                   + ("its images come with the installed packages (leave it out)" if flag[0] == "--dataset_root"
                      else "datadistill downloads only Cifar10, FashionMNIST, MNIST, SVHN, USPS")), err
    assert not out.exists()


def test_plain_evaluate_scores_a_later_method_as_its_run_did(tmp_path, capsys):
    # a dm run on ConvNet width 8 with DSA, scored from scratch; `evaluate FILE` with no flags must
    # take the run's width, protocol, augmentation, scratch settings and seed from the file, and so
    # reproduce the run's own test accuracies exactly (CPU runs are deterministic)
    run = tmp_path / "run"
    assert main(["distill", "--method", "dm", "--dataset", "digits", "--arch", "ConvNet", "--width", "8",
                 "--ipc", "2", "--augment", "dsa", "--epochs", "1", "--test_n_nets", "2", "--scratch_epochs", "6",
                 "--scratch_lr", "0.02", "--val_size", "0", "--seed", "3", "--results_dir", str(run),
                 "--no_progress"]) == 0
    reported = json.loads((run / "metrics.json").read_text())["final_accuracy"]
    out = tmp_path / "eval"
    assert main(["evaluate", str(run / "distilled.pt"), "--test_n_nets", "2", "--results_dir", str(out),
                 "--no_progress"]) == 0
    assert "(from_scratch, ConvNet on digits" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    settings = results["settings"]
    assert (settings["width"], settings["eval_augment"], settings["scratch_epochs"], settings["scratch_lr"],
            settings["seed"]) == (8, "dsa", 6, 0.02, 3)
    assert results["result"]["accuracies"] == reported["accuracies"]
    # an explicit flag still wins over the file: no augmentation scores other accuracies
    assert main(["evaluate", str(run / "distilled.pt"), "--test_n_nets", "2", "--eval_augment", "none",
                 "--results_dir", str(out), "--no_progress"]) == 0
    assert json.loads((out / "results.json").read_text())["result"]["accuracies"] != reported["accuracies"]


def test_from_scratch_flags_on_an_unrolled_score_are_refused(tmp_path, capsys, saved):
    # a wang2018 file is scored unrolled by default; a from-scratch setting would be ignored
    assert main(["evaluate", str(saved), "--scratch_epochs", "5", "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--scratch_epochs applies to --protocol from_scratch" in err and len(err.splitlines()) == 1


def test_compile_on_an_unrolled_score_is_refused(tmp_path, capsys, saved):
    assert main(["evaluate", str(saved), "--compile", "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--compile applies to --protocol from_scratch" in err and len(err.splitlines()) == 1


def test_padding_keeps_the_images_and_borders_them_with_raw_zero():
    from datadistill.jobs.evaluate import pad_images, padding_for
    from datadistill.models import arch_class

    assert (padding_for(28, arch_class("AlexCifarNet")), padding_for(28, arch_class("LeNet"))) == (2, 0)
    x = torch.randn(2, 3, 2, 28, 28, generator=torch.Generator().manual_seed(0))
    mean, std = (0.1, 0.5), (0.3, 2.0)
    padded = pad_images(x, 2, mean, std)
    assert padded.shape == (2, 3, 2, 32, 32)
    assert torch.equal(padded[..., 2:30, 2:30], x)
    raw = padded * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    torch.testing.assert_close(raw[..., border], torch.zeros_like(raw[..., border]), atol=1e-6, rtol=0)


def test_cross_architecture_scores_each_arch_as_it_would_alone(tmp_path, capsys, saved):
    common = ["--dataset", "digits", "--test_n_nets", "2", "--protocol", "from_scratch", "--scratch_epochs", "3",
              "--scratch_batch_size", "10", "--seed", "1", "--no_progress"]
    assert main(["evaluate", saved, *common, "--arch", "MLP,AlexCifarNet", "--width", "16",
                 "--results_dir", str(tmp_path / "both")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and "MLP on digits" in printed[0] and "AlexCifarNet on digits" in printed[1]
    both = json.loads((tmp_path / "both" / "results.json").read_text())["by_arch"]
    assert [r["arch"] for r in both] == ["MLP", "AlexCifarNet"]
    # --width reaches the arch that has one; the 28-pixel set is padded for AlexCifarNet (32 only)
    assert (both[0]["settings"]["width"], both[1]["settings"]["width"]) == (16, None)
    for i, flags in enumerate([["--arch", "MLP", "--width", "16"], ["--arch", "AlexCifarNet"]]):
        assert main(["evaluate", saved, *common, *flags, "--results_dir", str(tmp_path / flags[1])]) == 0
        alone = json.loads((tmp_path / flags[1] / "results.json").read_text())
        assert alone["result"]["accuracies"] == both[i]["result"]["accuracies"]
    assert main(["evaluate", saved, "--arch", "MLP,ResNet"]) == 2
    assert main(["evaluate", saved, "--arch", "MLP,,LeNet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "unknown arch 'ResNet'" in err[-2] and "comma-separated list" in err[-1]


def test_a_file_in_double_precision_scores_as_in_single(tmp_path, capsys, known_init_run):
    # a set written by hand in float64 (images, step sizes, fixed networks) replays as the float32 one
    d = torch.load(known_init_run[0], weights_only=True)
    d["images"], d["lrs"] = d["images"].double(), d["lrs"].double()
    d["init_params"] = {k: v.double() for k, v in d["init_params"].items()}
    torch.save(d, tmp_path / "double.pt")
    for name in (str(known_init_run[0]), str(tmp_path / "double.pt")):
        assert main(["evaluate", name, "--results_dir", str(tmp_path / "r"), "--no_progress"]) == 0
    single, double = capsys.readouterr().out.splitlines()[-2:]
    assert single == double and "fixed nets" in single, (single, double)


def test_a_file_naming_an_unknown_init_asks_for_one(tmp_path, capsys, known_init_run):
    d = torch.load(known_init_run[0], weights_only=True)
    d["init"] = "weird"
    torch.save(d, tmp_path / "weird.pt")
    assert main(["evaluate", str(tmp_path / "weird.pt"), "--no_progress"]) == 2
    assert capsys.readouterr().err == (f"datadistill: error: {tmp_path / 'weird.pt'} names the init 'weird'; pass "
                                       f"--init, one of {', '.join(INITS)}\n")
