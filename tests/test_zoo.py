import dataclasses
import json

import pytest
import torch

from datadistill import artifacts, models
from datadistill.commands import main
from datadistill.config import build_config
from datadistill.errors import ArtifactError
from datadistill.evaluate import accuracy, evaluate_synthetic
from datadistill.jobs.common import load_for
from datadistill.jobs import scoring
from datadistill.jobs import zoo as zoo_job
from datadistill.nets import ZooNets, fresh_nets, zoo_seeds
from datadistill.zoo import train_networks
from datadistill.world import World


def _zoo_config(tmp_path, n, phase="train", epochs=3):
    # the flags of `datadistill train-zoo`, through the same preset the command applies
    return build_config({"mode": "train", "data.dataset": "blobs", "model.arch": "MLP", "outer.epochs": epochs,
                         "outer.batch_size": 30, "nets.n_nets": n, "phase": phase,
                         "results_dir": str(tmp_path)}, "train-zoo")


@pytest.fixture
def blobs_zoo(blobs, monkeypatch):
    """train_zoo on the in-memory blobs dataset (the registry only knows real datasets)."""
    monkeypatch.setattr(zoo_job, "normalise_config", lambda c: c)
    return lambda config, **kw: zoo_job.train_zoo(config, dataset=blobs, **kw)


def test_zoo_round_trips_with_the_same_predictions(tmp_path, blobs, blobs_zoo):
    trained, path = blobs_zoo(_zoo_config(tmp_path, 12))
    assert path == tmp_path / "zoo" / "blobs-MLP-xavier-train" / "zoo.pt" and len(trained) == 12
    assert trained.accuracies.min() > 0.9  # three separable blobs
    loaded = artifacts.load_zoo(path)
    model = models.build_model("MLP", 1, 8, 3)
    torch.testing.assert_close(accuracy(model, loaded.params, blobs.test), trained.accuracies)
    assert not list(path.parent.glob("part-*.pt"))  # parts are folded into the one file
    # networks 0..9 (the first chunk) start from zoo seeds 0..9 of the train phase and see the
    # batches of a generator seeded with the first of them: retraining them gives the same weights
    seeds = zoo_seeds("train", 0, 10)
    again = train_networks(model, fresh_nets(model, "xavier", 1.0, seeds, "cpu"), blobs.train,
                           _zoo_config(tmp_path, 12).outer, torch.Generator().manual_seed(seeds[0]))
    for k, v in again.items():
        torch.testing.assert_close(loaded.params[k][:10], v, rtol=0, atol=0)


def _interrupted_after_one_part(tmp_path, blobs_zoo, monkeypatch) -> list:
    """A zoo of 25 interrupted after its first part (networks 0-9); the calls to train_networks,
    this one's and later ones'."""
    calls = []
    real_train = zoo_job.train_networks
    monkeypatch.setattr(zoo_job, "train_networks", lambda *a, **k: calls.append(1) or real_train(*a, **k))

    def stop_after_first(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        blobs_zoo(_zoo_config(tmp_path, 25), progress=stop_after_first)
    return calls


def test_interrupted_training_resumes_and_a_zoo_extends(tmp_path, blobs_zoo, monkeypatch):
    calls = _interrupted_after_one_part(tmp_path, blobs_zoo, monkeypatch)
    assert len(calls) == 1 and len(list((tmp_path / "zoo" / "blobs-MLP-xavier-train").glob("part-*"))) == 1
    first, _ = blobs_zoo(_zoo_config(tmp_path, 25))
    assert len(calls) == 3 and len(first) == 25  # the finished part was reused
    bigger, _ = blobs_zoo(_zoo_config(tmp_path, 30))
    assert len(calls) == 4 and len(bigger) == 30  # only the five new networks were trained
    torch.testing.assert_close(bigger.params["net.1.weight"][:25], first.params["net.1.weight"])
    with pytest.raises(ArtifactError, match=r"other settings \(outer\.epochs: \d+ there, 4 here\)"):
        blobs_zoo(_zoo_config(tmp_path, 40, epochs=4))


def test_a_finished_part_outlives_a_smaller_n_nets(tmp_path, blobs_zoo, monkeypatch):
    # an interrupted run of 25 left networks 0-9; asking for 5 keeps those ten rather than
    # deleting them and training five again
    calls = _interrupted_after_one_part(tmp_path, blobs_zoo, monkeypatch)
    zoo, path = blobs_zoo(_zoo_config(tmp_path, 5))
    assert len(calls) == 1 and len(zoo) == 10 and not list(path.parent.glob("part-*"))


def test_train_and_test_zoos_never_share_an_initialisation():
    # as torch's CPU generator reads a seed: its low 32 bits
    train, test = {s % 2**32 for s in zoo_seeds("train", 0, 5000)}, {s % 2**32 for s in zoo_seeds("test", 0, 5000)}
    assert len(train) == len(test) == 5000 and not train & test
    assert zoo_seeds("train", 3, 5) == sorted(train)[3:5]  # a slice of the phase's range


def test_a_zoo_refuses_another_arch_dataset_or_size(tmp_path, blobs_zoo):
    trained, _ = blobs_zoo(_zoo_config(tmp_path, 3))
    trained.check("blobs", "MLP", 3, "train")
    with pytest.raises(ArtifactError, match="3 networks, 5 asked for"):
        trained.check("blobs", "MLP", 5, "train")
    with pytest.raises(ArtifactError, match="MLP networks trained on blobs, this run needs LeNet on MNIST"):
        trained.check("MNIST", "LeNet", 3, "train")


def test_a_zoo_of_other_weight_shapes_is_refused_with_how_to_train_it_again(tmp_path, blobs_zoo):
    from datadistill.jobs.common import load_zoo_nets
    config = _zoo_config(tmp_path, 2)
    blobs_zoo(config)
    nets, shape, _ = load_zoo_nets(config, "train", 2)  # the layout it was trained with
    assert next(iter(nets.values())).shape[0] == 2
    wider = build_config({"data.dataset": "blobs", "model.arch": "MLP", "model.width": 16,
                          "results_dir": str(tmp_path)})
    with pytest.raises(ArtifactError, match="other shapes.*train it again"):
        load_zoo_nets(wider, "train", 2)


def test_loaded_nets_are_sampled_distinct_and_cover_the_zoo(tmp_path, blobs, blobs_zoo):
    trained, _ = blobs_zoo(_zoo_config(tmp_path, 7))
    cfg = build_config({"data.dataset": "blobs", "model.arch": "MLP", "nets.train_nets_type": "loaded",
                        "nets.n_nets": 7, "nets.test_nets_type": "same_as_train", "nets.sample_n_nets": 3})
    source = ZooNets(trained.params, cfg.nets.nets_per_iteration, "cpu")
    assert source.total == 3
    generator = torch.Generator().manual_seed(0)
    key = "net.1.weight"
    ids = {trained.params[key][i].sum().item(): i for i in range(7)}
    assert len(ids) == 7
    seen = []
    for _ in range(7):
        drawn = source.sample(generator)[key]
        picks = [ids[w.sum().item()] for w in drawn]
        assert len(set(picks)) == 3  # distinct within a draw
        seen += picks
    assert set(seen[:7]) == set(range(7))  # the first seven draws cover the zoo once
    assert set(seen) == set(range(7))
    # same_as_train: the loaded networks score the set, all seven of them
    model = models.build_model("MLP", 1, 8, 3)
    score = scoring.scoring_nets(cfg, model, "cpu", World(), source, None)
    for everyone in (False, True):
        assert torch.equal(score(everyone)[key], trained.params[key])


def test_zoo_draws_resume_from_their_state(tmp_path, blobs_zoo):
    trained, _ = blobs_zoo(_zoo_config(tmp_path, 5))
    a = ZooNets(trained.params, 2, "cpu")
    g = torch.Generator().manual_seed(3)
    a.sample(g)  # one network of the permutation is left queued
    state, g_state = a.state_dict(), g.get_state()
    b = ZooNets(trained.params, 2, "cpu")
    b.load_state_dict(state)
    g2 = torch.Generator()
    g2.set_state(g_state)
    for _ in range(4):
        x, y = a.sample(g), b.sample(g2)
        assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow
def test_cli_trains_a_zoo_and_distils_against_it(tmp_path, capsys):
    common = ["--dataset", "digits", "--arch", "LeNet", "--results_dir", str(tmp_path), "--no_progress"]
    assert main(["--mode", "train", "--n_nets", "4", "--epochs", "15", *common]) == 0
    assert main(["--mode", "train", "--n_nets", "2", "--epochs", "15", "--phase", "test", *common]) == 0
    out = capsys.readouterr().out
    assert "zoo of 4 LeNet networks on digits (train phase)" in out and "(test phase)" in out
    assert (tmp_path / "zoo" / "digits-LeNet-xavier-train" / "zoo.pt").is_file()
    loaded = ["--mode", "distill_basic", "--train_nets_type", "loaded", "--sample_n_nets", "2",
              "--test_nets_type", "loaded", "--test_n_nets", "2", "--distill_steps", "1", "--distill_epochs", "1",
              "--epochs", "1"]
    assert main([*loaded, "--n_nets", "4", *common]) == 0
    assert "over 2 nets" in capsys.readouterr().out
    # no train zoo network left over to hold out: the run is not validated (never on the test zoo)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["validation"] is None and metrics["validation_nets"] is None
    # 3 of 4 distil, the 4th scores the validation split: the same figure as that network's own
    assert main([*loaded, "--n_nets", "3", *common]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["validation_nets"] == "1 held-out train zoo networks" and metrics["validation"]["n"] == 1
    config = build_config({"data.dataset": "digits", "model.arch": "LeNet"}, "zoo")
    zoo = artifacts.load_zoo(tmp_path / "zoo" / "digits-LeNet-xavier-train" / "zoo.pt")
    synthetic = artifacts.load_distilled(tmp_path / "distilled.pt")
    model = models.build_model("LeNet", 1, 28, 10)
    held_out = evaluate_synthetic(model, synthetic, zoo.select([3]), load_for(config).val)
    assert metrics["validation"]["mean"] == pytest.approx(held_out.mean, abs=1e-6)


@pytest.mark.parametrize("flags,message", [
    (["--train_nets_type", "loaded"], "zoo.pt does not exist; train one with datadistill train-zoo"),
    (["--train_nets_type", "loaded", "--n_nets", "2", "--sample_n_nets", "3"], "cannot exceed --n_nets"),
    (["--mode", "train", "--phase", "validation"], "unknown --phase 'validation'; accepted: train, test"),
    (["--phase"], "--phase needs a value"),
    (["--mode"], "--mode needs a value"),
    (["--sample_n_nets", "2"], "--sample_n_nets draws from loaded networks"),
    (["--val_n_nets", "2"], "--val_n_nets holds out loaded networks; --train_nets_type is unknown_init"),
    (["--train_nets_type", "loaded", "--val_n_nets", "-1"], "--val_n_nets must be >= 0, got -1"),
    (["--zoo_dir", "z"], "--zoo_dir is read only with loaded networks"),
])
def test_zoo_refusals_are_one_line_exit_2(tmp_path, capsys, flags, message):
    code = main(["--dataset", "digits", "--results_dir", str(tmp_path / "r"), "--no_progress", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags,message", [
    (["--trajectories", "--lr_schedule", "step"], "--lr_schedule does not apply with --trajectories: experts train "
                                                  "with SGD at a constant --lr"),
    (["--trajectories", "--decay_factor", "0.5"], "--decay_factor does not apply with --trajectories"),
    (["--trajectories", "--phase", "test"], "--phase test does not apply with --trajectories: mtt reads train-phase "
                                            "experts only"),
    (["--lr_schedule", "cosine", "--decay_epochs", "1"], "--decay_epochs applies to --lr_schedule step, not cosine"),
])
def test_train_zoo_refuses_flags_its_training_would_ignore(tmp_path, capsys, flags, message):
    code = main(["train-zoo", "--dataset", "digits", "--zoo_dir", str(tmp_path / "z"), "--no_progress", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "z").exists()


def test_a_zoo_whose_networks_diverge_is_not_written(tmp_path, capsys):
    code = main(["train-zoo", "--dataset", "digits", "--zoo_dir", str(tmp_path / "z"), "--n_nets", "1",
                 "--epochs", "1", "--lr", "1e9", "--no_progress"])
    assert code == 1 and capsys.readouterr().err == (
        "datadistill: error: zoo networks diverged (weights NaN or infinite) at --lr 1e+09; try a smaller --lr\n")
    assert not (tmp_path / "z").exists()


def test_a_zoo_is_matched_by_the_settings_that_train_it(tmp_path, blobs_zoo):
    first, path = blobs_zoo(_zoo_config(tmp_path, 10))
    # as written before the distillation's Adam beta1 existed, and with another step-size rate:
    # neither changes how train_networks trains, so the zoo extends
    old = artifacts.load_zoo(path)
    del old.config["outer"]["adam_beta1"]
    old.config["outer"]["step_size_lr"] = 0.123
    artifacts.save_zoo(path, old)
    bigger, _ = blobs_zoo(_zoo_config(tmp_path, 12))
    assert len(bigger) == 12
    torch.testing.assert_close(bigger.params["net.1.weight"][:10], first.params["net.1.weight"])
    config = _zoo_config(tmp_path, 14)
    changed = build_config({**{f"outer.{k}": v for k, v in config.to_dict()["outer"].items()}, "mode": "train",
                            "data.dataset": "blobs", "model.arch": "MLP", "nets.n_nets": 14,
                            "results_dir": str(tmp_path), "outer.lr": config.outer.lr * 2}, "train-zoo")
    lr = config.outer.lr
    with pytest.raises(ArtifactError, match=rf"other settings \(outer\.lr: {lr:g} there, {2 * lr:g} here\)"):
        blobs_zoo(changed)


def test_zoo_parts_give_every_process_a_part_and_keep_each_chunks_batch_order():
    from datadistill.jobs.zoo import ZOO_CHUNK, zoo_parts

    assert ZOO_CHUNK == 10
    # enough chunks: whole chunks, from the networks already trained on
    assert zoo_parts(3, 30, 2) == [(3, 13, 3), (13, 23, 13), (23, 30, 23)]
    # one chunk, two processes: two parts, both trained in the chunk's batch order (from network 0)
    assert zoo_parts(0, 5, 2) == [(0, 2, 0), (2, 5, 0)]
    # more processes than networks: one network a part
    assert zoo_parts(0, 3, 8) == [(0, 1, 0), (1, 2, 0), (2, 3, 0)]
    # two chunks, four processes: each chunk in two
    assert zoo_parts(0, 14, 4) == [(0, 5, 0), (5, 10, 0), (10, 12, 10), (12, 14, 10)]
    assert zoo_parts(7, 7, 2) == []


def test_a_zoo_of_the_earlier_seed_layout_is_not_extended_nor_read_as_a_test_zoo(tmp_path, blobs_zoo):
    # zoos written before the seed layout was recorded drew their test-phase networks from the
    # train phase's seeds (the same networks); a test zoo of them must not score anything
    from datadistill.jobs.common import load_zoo_nets
    for phase in ("train", "test"):
        _, path = blobs_zoo(_zoo_config(tmp_path, 2, phase=phase))
        old = artifacts.load_zoo(path)
        assert old.config["seed_layout"] == 2
        del old.config["seed_layout"]
        artifacts.save_zoo(path, old)
    with pytest.raises(ArtifactError, match="drawn by an earlier datadistill .*delete it and train it again"):
        blobs_zoo(_zoo_config(tmp_path, 3))
    reading = build_config({"data.dataset": "blobs", "model.arch": "MLP", "results_dir": str(tmp_path)})
    assert next(iter(load_zoo_nets(reading, "train", 2)[0].values())).shape[0] == 2  # a train zoo still reads
    with pytest.raises(ArtifactError, match="test zoo .* drawn by an earlier datadistill.*train-zoo --phase test"):
        load_zoo_nets(reading, "test", 2)


def test_a_zoo_keeps_its_validation_hold_out(tmp_path, blobs_zoo):
    # networks trained with another --val_size may have seen the run's validation images: a zoo is
    # neither extended by such a run nor read by one
    from datadistill.jobs.common import load_zoo_nets
    blobs_zoo(_zoo_config(tmp_path, 2))
    other = dataclasses.replace(_zoo_config(tmp_path, 3), data=dataclasses.replace(_zoo_config(tmp_path, 3).data,
                                                                                    val_size=0))
    with pytest.raises(ArtifactError, match=r"other settings \(val_size: None there, 0 here\)"):
        blobs_zoo(other)
    reading = build_config({"data.dataset": "blobs", "model.arch": "MLP", "results_dir": str(tmp_path)})
    assert next(iter(load_zoo_nets(reading, "train", 2)[0].values())).shape[0] == 2
    with pytest.raises(ArtifactError, match="trained with --val_size the default, this run holds out 0: its networks "
                                            "may have trained on this run's validation images"):
        load_zoo_nets(dataclasses.replace(reading, data=dataclasses.replace(reading.data, val_size=0)), "train", 2)


def test_a_damaged_zoo_that_train_zoo_would_extend_asks_to_delete_it(tmp_path, capsys):
    folder = tmp_path / "z" / "digits-LeNet-xavier-train"
    folder.mkdir(parents=True)
    (folder / "zoo.pt").write_text("garbage")
    assert main(["train-zoo", "--dataset", "digits", "--zoo_dir", str(tmp_path / "z"), "--n_nets", "1",
                 "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"datadistill: error: cannot read model zoo {folder / 'zoo.pt'}: ") and err.count("\n") == 1
    assert err.endswith("; delete it, or give another --zoo_dir\n") and "train one with" not in err
