import dataclasses
import json

import pytest
import torch

from datadistill import artifacts, models, testphase
from datadistill.commands import main
from datadistill.config import DataConfig, ModelConfig, NetsConfig, RunConfig, SyntheticConfig, TestPhaseConfig
from datadistill.data import Dataset, Split
from datadistill.errors import ConfigError
from datadistill.nets import eval_seeds, fresh_nets, selection_seeds
from datadistill.jobs.test_phase import RESULTS_JSON, RESULTS_MD, test_phase
from datadistill.synthetic import SyntheticSet
from datadistill.testphase import TestPhaseInputs

from guards import GuardedSplit


def _config(tmp_path, **test) -> RunConfig:
    # "digits" only passes the name check: every test hands in the blobs dataset itself
    return RunConfig(data=DataConfig("digits"), model=ModelConfig("MLP"),
                     synthetic=SyntheticConfig(steps=2, epochs=2, images_per_class_per_step=3),
                     nets=NetsConfig(test_n_nets=3), test=TestPhaseConfig(**test),
                     results_dir=str(tmp_path / "r"))


def _with_val(blobs, test: Split | None = None) -> Dataset:
    """``blobs`` with a validation split of its own (20 images a class around the training
    class means, noisier than the others so that candidate sets score differently on it), and
    optionally another test split."""
    g = torch.Generator().manual_seed(11)
    means = torch.stack([blobs.train.x[blobs.train.y == c].mean(0) for c in range(3)])
    y = torch.arange(3).repeat(20)
    val = Split(means[y] + 2.0 * torch.randn(len(y), 1, 8, 8, generator=g), y)
    return Dataset(blobs.name, blobs.train, blobs.test if test is None else test, 3, blobs.mean, blobs.std, val)


def _rows_of(split: Split, x: torch.Tensor) -> bool:
    """Whether every image of x (n, ...) is an image of ``split``."""
    return bool((x.flatten(1)[:, None] == split.x.flatten(1)[None]).all(-1).any(1).all())


def _loaded(blobs) -> SyntheticSet:
    g = torch.Generator().manual_seed(5)
    images = torch.randn(2, 6, 1, 8, 8, generator=g)  # 2 steps x 2 per class x 3 classes
    labels = torch.arange(3).repeat_interleave(2).repeat(2, 1)
    return SyntheticSet(images, labels, torch.tensor([0.1, 0.2, 0.3, 0.4]), blobs.mean, blobs.std, 3)


@pytest.mark.parametrize("source", ["random_train", "average_train", "kmeans_train", "herding_train", "loaded"])
def test_every_image_source_has_the_shape_and_class_counts(blobs, source):
    lrs = torch.full((4,), 0.1)  # 2 steps x 2 epochs
    steps, per_class = 2, 2
    s = testphase.make_candidate(source, blobs.train, steps, per_class, 3, lrs, blobs.mean, blobs.std,
                                 _loaded(blobs), torch.Generator().manual_seed(0))
    assert s.images.shape == (steps, 3 * per_class, 1, 8, 8) and s.labels.shape == (steps, 3 * per_class)
    for step in s.labels:
        assert torch.bincount(step, minlength=3).tolist() == [per_class] * 3
    assert torch.equal(s.lrs, lrs) and s.num_classes == 3


def test_average_train_is_the_class_means(blobs):
    s = testphase.make_candidate("average_train", blobs.train, 2, 2, 3, torch.ones(2), blobs.mean, blobs.std,
                                 None, torch.Generator())
    for c in range(3):
        want = blobs.train.x[blobs.train.y == c].mean(0)
        for img in s.images[s.labels == c]:
            torch.testing.assert_close(img, want)


def test_step_size_schedule_is_cycled_or_cut_to_the_test_passes():
    lrs = torch.tensor([1., 2., 3., 4.])  # 2 steps x 2 passes
    assert testphase.repeat_schedule(lrs, 2, 1).tolist() == [1, 2]
    assert testphase.repeat_schedule(lrs, 2, 3).tolist() == [1, 2, 3, 4, 1, 2]
    test = TestPhaseConfig(images="random_train", lrs="fix", fixed_lr=0.3)
    assert testphase.step_sizes(test, 2, 3, None).tolist() == pytest.approx([0.3] * 6)


@pytest.mark.parametrize("k", [1, 3])
def test_knn_with_the_training_set_as_memory_matches_a_direct_computation(blobs, k):
    # 1 step of all 40 images per class: the memory is the whole training split, reordered
    test = TestPhaseConfig(images="random_train", lrs="nearest_neighbor", knn_k=k, knn_p=2.0)
    row = testphase.run_test_phase(test, TestPhaseInputs(None, blobs, steps=1, per_class=40, epochs=1, loaded=None,
                                                         test_nets=None, optimize_nets=None, seed=0, batch_size=32))
    d = torch.cdist(blobs.test.x.flatten(1).double(), blobs.train.x.flatten(1).double())  # (60, 120)
    votes = blobs.train.y[d.topk(k, largest=False).indices]  # (60, k)
    pred = torch.mode(votes, dim=1).values  # no ties with k in {1, 3} and 3 classes here unless 1-1-1
    assert (row["runs"], row["nets"]) == (1, 1)
    assert row["mean"] == pytest.approx(float((pred == blobs.test.y).double().mean()))


def test_optimize_never_reads_the_test_split(blobs, tmp_path, monkeypatch):
    guard = GuardedSplit(blobs.test)
    dataset = _with_val(blobs, test=guard)
    real = testphase.test_optimize
    calls = []

    def locked(model, candidates, n_candidates, keep, test, nets, batches, *rest, **options):
        # the selection is handed no test split, and cannot reach one while it runs
        assert all(a is not guard for a in (*rest, *options.values()))
        assert all(b is not guard and len(b) == 32 and _rows_of(dataset.val, b.x) for b in batches)
        assert not any(_rows_of(blobs.test, b.x) for b in batches)  # validation images, not test ones
        assert all(n is not None and next(iter(n.values())).shape[0] == 2 for n in nets) and len(nets) == 2
        guard.locked = True
        try:
            out = real(model, candidates, n_candidates, keep, test, nets, batches, *rest, **options)
        finally:
            guard.locked = False
        calls.append(out)
        return out

    real_score = testphase.score
    scored = []  # (networks, split) of every scoring outside the selection

    def recording_score(model, candidate, test, nets, split, *rest, **options):
        if not guard.locked:
            scored.append((nets, split))
        return real_score(model, candidate, test, nets, split, *rest, **options)

    monkeypatch.setattr(testphase, "test_optimize", locked)
    monkeypatch.setattr(testphase, "score", recording_score)
    config = _config(tmp_path, images="random_train", lrs="fix", fixed_lr=0.3, n_runs=2,
                     optimize_n_runs=5, optimize_n_nets=2, niter=2)
    config = dataclasses.replace(config, outer=dataclasses.replace(config.outer, batch_size=32))
    results = test_phase(config, dataset=dataset)
    assert len(calls) == 1 and len(calls[0].scores) == 5
    row = results["rows"][0]
    # the kept runs are the best-scoring draws, and only the final scoring read the test split
    assert sorted(calls[0].kept, key=lambda i: -calls[0].scores[i]) == calls[0].kept
    assert [testphase.candidate_seed(config.seed, i) for i in calls[0].kept] == row["run_seeds"]
    assert row["selection_scores"] == calls[0].scores
    assert guard.reads > 0 and (row["runs"], row["nets"], row["n"]) == (2, 3, 6)
    # the kept sets are scored on the test split by the evaluation networks of the run seed (3 per
    # run), never by the networks that selected them
    model = models.build_model("MLP", 1, 8, 3)
    want = fresh_nets(model, "xavier", 1.0, eval_seeds(config.seed, 6), "cpu")
    selecting = fresh_nets(model, "xavier", 1.0, selection_seeds(config.seed, 4), "cpu")
    assert [split is guard for _, split in scored] == [True, True]
    for run, (nets, _) in enumerate(scored):
        assert all(torch.equal(nets[k], v[3 * run:3 * run + 3]) for k, v in want.items())
        assert not any(all(torch.equal(nets[k][j], selecting[k][i]) for k in nets)
                       for j in range(3) for i in range(4))


def test_the_selection_does_not_depend_on_the_test_split(blobs, tmp_path):
    config = _config(tmp_path, images="random_train", lrs="fix", fixed_lr=0.3, n_runs=2,
                     optimize_n_runs=6, optimize_n_nets=2, niter=2)
    first = test_phase(config, dataset=_with_val(blobs))["rows"][0]
    flipped = Split(blobs.test.x.flip(-1), (blobs.test.y + 1) % 3)  # another test split altogether
    second = test_phase(config, dataset=_with_val(blobs, test=flipped))["rows"][0]
    assert first["selection_scores"] == second["selection_scores"] and len(set(first["selection_scores"])) > 1
    assert first["run_seeds"] == second["run_seeds"]
    assert first["accuracies"] != second["accuracies"]  # the test split scores, and only scores


def test_a_selection_needs_a_validation_split(blobs, tmp_path):
    config = _config(tmp_path, images="random_train", lrs="fix", fixed_lr=0.3, n_runs=1, optimize_n_runs=2)
    with pytest.raises(ConfigError, match="selects on the validation split; give --val_size > 0"):
        test_phase(config, dataset=blobs)  # blobs has no validation split
    assert not (tmp_path / "r").exists()


def test_results_files_round_trip_and_runs_reproduce(blobs, tmp_path):
    config = _config(tmp_path, images="kmeans_train", lrs="fix", fixed_lr=0.1, n_runs=2)
    results = test_phase(config, command="datadistill --phase test", dataset=blobs)
    folder = tmp_path / "r"
    assert json.loads((folder / RESULTS_JSON).read_text()) == results
    assert RunConfig.from_dict(results["config"]) == config
    md = (folder / RESULTS_MD).read_text()
    assert "`datadistill --phase test`" in md
    assert results["split"] == "test" and "accuracy on the test split" in md
    [parsed] = testphase.parse_table(md)
    row = results["rows"][0]
    assert {k: parsed[k] for k in ("images", "lrs", "runs", "nets")} == {
        "images": "kmeans_train", "lrs": "fix 0.1", "runs": 2, "nets": 3}
    assert parsed["mean"] == pytest.approx(row["mean"], abs=5e-5)
    assert parsed["std"] == pytest.approx(row["std"], abs=5e-5)
    assert len(row["accuracies"]) == row["n"] == 6
    again = test_phase(config, dataset=blobs)
    assert again["rows"][0]["accuracies"] == row["accuracies"]  # bit for bit


def test_scores_on_the_validation_split_say_so_in_the_results(blobs, tmp_path):
    flags = {"images": "kmeans_train", "lrs": "fix", "fixed_lr": 0.1}
    on_val = test_phase(_config(tmp_path, score_on="val", **flags), dataset=_with_val(blobs))
    assert "accuracy on the validation split" in (tmp_path / "r" / RESULTS_MD).read_text()
    on_test = test_phase(_config(tmp_path, **flags), dataset=_with_val(blobs))
    assert "accuracy on the test split" in (tmp_path / "r" / RESULTS_MD).read_text()
    assert on_val["split"] == "val" and on_val["rows"][0]["accuracies"] != on_test["rows"][0]["accuracies"]


def test_a_loaded_set_with_its_learned_step_sizes_for_more_passes(blobs, tmp_path):
    path = artifacts.save_distilled(tmp_path / "d.pt", _loaded(blobs))
    config = _config(tmp_path, distilled=str(path), distill_epochs=3)
    results = test_phase(config, dataset=blobs)
    assert (results["steps"], results["images_per_class_per_step"], results["epochs"]) == (2, 2, 3)
    assert results["rows"][0]["images"] == "loaded" and results["rows"][0]["lrs"] == "loaded"
    # a baseline takes the loaded set's shape, not --distilled_images_per_class_per_step
    base = test_phase(_config(tmp_path, images="random_train", distilled=str(path)), dataset=blobs)
    assert base["images_per_class_per_step"] == 2 and base["epochs"] == 2


def _run(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors
        return e.code


@pytest.mark.parametrize("flags,message", [
    (["--test_distilled_images", "random_train", "--test_distilled_lrs", "fix"], "fix needs a step size"),
    (["--test_distilled_images", "random_train", "--test_distilled_lrs", "nearest_neighbor", "0", "2"],
     "needs K >= 1"),
    (["--test_distilled_images", "random_train", "--test_distilled_lrs", "fix", "0.3", "1"], "takes 1 value"),
    (["--test_distilled_images", "average_train", "--test_distilled_lrs", "fix", "0.3",
      "--test_optimize_n_runs", "4"], "accepted: random_train, kmeans_train"),
    (["--test_distilled_images", "random_train", "--test_distilled_lrs", "fix", "0.3", "--test_n_runs", "3",
      "--test_optimize_n_runs", "2"], "must be at least --test_n_runs"),
    (["--test_distilled_images", "mean"], "unknown --test_distilled_images 'mean'"),
    ([], "distilled.pt does not exist"),
    (["--distilled", "nowhere.pt"], "distilled file nowhere.pt does not exist"),
    (["--sample_n_nets", "2"], "--sample_n_nets does not apply to `datadistill test`"),
    (["--test_nets_type", "same_as_train", "--test_n_nets", "2"], "--test_n_nets does not apply with --test_nets_type same_as_train"),
    (["--test_distilled_images", "random_train", "--test_distilled_lrs", "fix", "0.1", "--protocol", "from_scratch"],
     "--protocol from_scratch uses none"),
    (["--test_distilled_lrs", "nearest_neighbor", "1.5", "2"], "K of --test_distilled_lrs nearest_neighbor must be "
                                                                "a whole number, got '1.5'"),
    # flags nothing would read: refused, not ignored
    (["--test_distilled_lrs", "nearest_neighbor", "1", "2", "--test_n_nets", "4"],
     "--test_n_nets does not apply with --test_distilled_lrs nearest_neighbor (no network trains"),
    (["--test_distilled_lrs", "nearest_neighbor", "1", "2", "--protocol", "from_scratch"],
     "--protocol does not apply with --test_distilled_lrs nearest_neighbor"),
    (["--protocol", "from_scratch", "--test_distill_epochs", "5"], "--test_distill_epochs applies to --protocol unrolled"),
    (["--test_distilled_images", "random_train", "--test_distilled_lrs", "fix", "0.3", "--batch_size", "64"],
     "--batch_size applies with --test_optimize_n_runs only"),
])
def test_bad_combinations_are_one_line_and_exit_2(tmp_path, capsys, flags, message):
    out = tmp_path / "r"
    assert _run(["--dataset", "digits", "--phase", "test", "--results_dir", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("datadistill: error: ")
    assert not out.exists()


def test_config_rejects_what_the_cli_would():
    with pytest.raises(ConfigError, match="fix needs a step size"):
        TestPhaseConfig(images="random_train", lrs="fix")
    with pytest.raises(ConfigError, match="norm P > 0"):
        TestPhaseConfig(lrs="nearest_neighbor", knn_k=1, knn_p=0)
    assert TestPhaseConfig(lrs="nearest_neighbor", knn_k=2, knn_p=1).lrs_label == "nearest_neighbor 2 1"


def test_cli_test_phase_prints_the_table_and_writes_both_files(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["--dataset", "digits", "--phase", "test", "--results_dir", str(out), "--distill_steps", "2",
            "--test_distilled_images", "random_train", "--test_distilled_lrs", "nearest_neighbor", "1", "2",
            "--test_n_runs", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| random_train | nearest_neighbor 1 2 |" in printed and "3 x 1" in printed
    results = json.loads((out / RESULTS_JSON).read_text())
    assert results["command"].startswith("datadistill --dataset digits --phase test")
    assert testphase.parse_table((out / RESULTS_MD).read_text())[0]["runs"] == 3
    # no network trains for a nearest-neighbour row: a protocol for training them is refused
    assert main([*argv, "--arch", "ConvNet", "--width", "8", "--protocol", "from_scratch"]) == 2
    assert "--protocol does not apply with --test_distilled_lrs nearest_neighbor" in capsys.readouterr().err

def test_test_phase_scores_from_scratch_with_dsa_when_asked(tmp_path):
    # random real images scored from scratch under DSA (the protocol a --augment dsa run is scored
    # under): the flag reaches the training, so the same networks and images score otherwise
    rows = {}
    for augment in ("none", "dsa"):
        out = tmp_path / augment
        assert main(["test", "--dataset", "digits", "--arch", "ConvNet", "--width", "8", "--test_distilled_images",
                     "random_train", "--distill_steps", "1", "--distilled_images_per_class_per_step", "2",
                     "--test_n_nets", "2", "--protocol", "from_scratch", "--scratch_epochs", "5",
                     "--eval_augment", augment, "--val_size", "0", "--results_dir", str(out), "--no_progress"]) == 0
        rows[augment] = json.loads((out / "results.json").read_text())["rows"][0]
    assert rows["none"]["accuracies"] != rows["dsa"]["accuracies"]


def test_test_phase_scores_a_set_without_step_sizes_from_scratch_only(tmp_path, capsys, switches):
    # a dm / gm set (no step sizes): scored from scratch like `evaluate` scores it; the unrolled
    # protocol has no steps to replay, and says so
    g = torch.Generator().manual_seed(0)
    images = torch.randn(1, 20, 1, 28, 28, generator=g)  # 2 per class of digits' 10
    labels = torch.arange(10).repeat_interleave(2).unsqueeze(0)
    path = artifacts.save_distilled(tmp_path / "distilled.pt", SyntheticSet(images, labels, torch.zeros(0), (0.0,), (1.0,), 10))
    common = ["--dataset", "digits", "--arch", "MLP", "--width", "16", "--test_n_nets", "2", "--seed", "3"]
    scratch = ["--protocol", "from_scratch", "--scratch_epochs", "4", "--scratch_batch_size", "8"]
    assert main(["test", "--distilled", str(path), *common, *scratch, "--val_size", "0", "--results_dir", str(tmp_path / "t"),
                 "--no_progress"]) == 0
    row = json.loads((tmp_path / "t" / "results.json").read_text())["rows"][0]
    assert main(["evaluate", str(path), *common, *scratch, "--results_dir", str(tmp_path / "e")]) == 0
    evaluated = json.loads((tmp_path / "e" / "results.json").read_text())["result"]
    assert row["accuracies"] == evaluated["accuracies"] and row["n"] == 2
    assert switches == ["apply", "apply"]  # each command that trains networks sets the allocator
    capsys.readouterr()
    assert main(["test", "--distilled", str(path), *common, "--results_dir", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no step sizes" in err and "--protocol from_scratch" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "u").exists()


def test_relabelled_candidates_are_what_is_scored(blobs):
    """``TestPhaseInputs.relabel`` (``--label_mode teacher``) replaces each candidate's labels before
    scoring: a relabelling that names every image's next class as a probability vector trains the
    networks to misclassify, where the same draw with its own labels trains them to classify."""
    def next_class(s: SyntheticSet) -> SyntheticSet:
        shifted = torch.nn.functional.one_hot((s.labels + 1) % s.num_classes, s.num_classes).to(s.images.dtype)
        return dataclasses.replace(s, labels=shifted)  # (S, N, classes)

    test = TestPhaseConfig(images="random_train", lrs="fix", fixed_lr=0.3)
    model = models.build_model("MLP", 1, 8, 3)
    seeds = eval_seeds(0, 3)

    def scored(relabel):
        inputs = TestPhaseInputs(model, blobs, steps=1, per_class=10, epochs=20, loaded=None,
                                 test_nets=lambda run: fresh_nets(model, "xavier", 1.0, seeds, "cpu"),
                                 optimize_nets=None, seed=0, batch_size=64, relabel=relabel)
        return testphase.run_test_phase(test, inputs)

    own, shifted = scored(None), scored(next_class)
    assert own["run_seeds"] == shifted["run_seeds"]
    assert own["mean"] > 0.9 and shifted["mean"] < 0.2, (own["mean"], shifted["mean"])
