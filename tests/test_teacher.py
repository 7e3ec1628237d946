"""Soft labels from teacher networks (--label_mode teacher): the labels against a network-by-network
computation in float64, and a digits run whose distilled.pt holds the train zoo's labels."""
import json

import pytest
import torch
from torch.func import functional_call

from datadistill import artifacts, models, nets
from datadistill.commands import main
from datadistill.synthetic import SyntheticSet
from datadistill.teacher import relabelled, teacher_labels


def one_by_one(model, stacked, images, temperature):
    """The mean of softmax(logits / T) over the networks, each network's forward on its own."""
    n = next(iter(stacked.values())).shape[0]
    probs = [(functional_call(model, {k: v[i] for k, v in stacked.items()}, (images,)) / temperature).softmax(-1)
             for i in range(n)]
    return torch.stack(probs).mean(0)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_teacher_labels_are_the_networks_mean_softened_softmax_in_float64(f64, temperature):
    model = models.build_model("ConvNet", 1, 28, 3, width=4)
    stacked = nets.fresh_nets(model, "default", 1.0, [0, 1, 2], "cpu")
    # larger weights, so that the logits differ by more than the temperature
    stacked = {k: 5 * v for k, v in stacked.items()}
    images = torch.randn(7, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    got = teacher_labels(model, stacked, images, temperature)
    assert got.dtype == torch.float64 and got.shape == (7, 3)
    torch.testing.assert_close(got, one_by_one(model, stacked, images, temperature))
    torch.testing.assert_close(got.sum(-1), torch.ones(7, dtype=torch.float64))


def test_a_higher_temperature_gives_softer_labels(f64):
    model = models.build_model("ConvNet", 1, 28, 3, width=4)
    stacked = {k: 5 * v for k, v in nets.fresh_nets(model, "default", 1.0, [0], "cpu").items()}
    images = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    sharp, soft = (teacher_labels(model, stacked, images, t).max(-1).values for t in (1.0, 8.0))
    assert (soft < sharp).all() and (soft > 1 / 3).all()


def test_relabelled_keeps_the_images_and_replaces_the_labels(f64):
    model = models.build_model("ConvNet", 1, 28, 3, width=4)
    stacked = nets.fresh_nets(model, "default", 1.0, [0, 1], "cpu")
    images = torch.randn(2, 3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    s = SyntheticSet(images, torch.tensor([[0, 1, 2], [0, 1, 2]]), torch.ones(2), (0.1,), (0.3,), 3)
    out = relabelled(s, model, stacked, 2.0)
    assert out.images is s.images and out.lrs is s.lrs and out.labels.shape == (2, 3, 3)
    torch.testing.assert_close(out.labels[1], one_by_one(model, stacked, images[1], 2.0))


def test_a_digits_run_writes_the_train_zoos_labels_and_reports_its_teachers(tmp_path):
    zoo_dir, out = tmp_path / "zoo", tmp_path / "run"
    common = ["--dataset", "digits", "--arch", "ConvNet", "--width", "8", "--no_progress"]
    assert main(["train-zoo", *common, "--init", "default", "--n_nets", "2", "--epochs", "2",
                 "--zoo_dir", str(zoo_dir), "--results_dir", str(tmp_path)]) == 0
    assert main(["distill", *common, "--method", "dm", "--ipc", "1", "--epochs", "1", "--eval_every", "1",
                 "--label_mode", "teacher", "--label_temperature", "3", "--test_n_nets", "1",
                 "--scratch_epochs", "2", "--zoo_dir", str(zoo_dir), "--results_dir", str(out)]) == 0

    saved = artifacts.load_distilled(out / artifacts.DISTILLED)
    zoo = artifacts.load_zoo(zoo_dir / "digits-ConvNet-default-train" / "zoo.pt")
    model = models.build_model("ConvNet", 1, models.ConvNet.default_size, 10, width=8)
    with torch.no_grad():
        expected = one_by_one(model, zoo.params, saved.images[0], 3.0)
    assert saved.labels.shape == (1, 10, 10)
    torch.testing.assert_close(saved.labels[0], expected)
    metrics = json.loads((out / artifacts.METRICS).read_text())
    assert metrics["teacher_labels"]["networks"] == 2 and metrics["teacher_labels"]["temperature"] == 3.0
    assert metrics["final_accuracy"]["n"] == 1 and metrics["validation"]["n"] == 1


def test_the_test_phase_scores_random_real_images_with_the_teachers_labels(tmp_path):
    """``datadistill test --label_mode teacher``: the baseline a teacher-labelled set is compared
    with. The scored candidate is the random draw the same command scores with its own labels;
    relabelled, it trains networks that differ from those on one-hot labels."""
    zoo_dir = tmp_path / "zoo"
    common = ["--dataset", "digits", "--arch", "ConvNet", "--width", "8", "--init", "default", "--no_progress"]
    assert main(["train-zoo", *common, "--n_nets", "2", "--epochs", "2", "--zoo_dir", str(zoo_dir),
                 "--results_dir", str(tmp_path)]) == 0
    scoring = ["test", *common, "--test_distilled_images", "random_train", "--distilled_images_per_class_per_step",
               "2", "--distill_steps", "1", "--protocol", "from_scratch", "--scratch_epochs", "20",
               "--test_n_nets", "2", "--score_on", "val"]
    assert main([*scoring, "--results_dir", str(tmp_path / "own")]) == 0
    assert main([*scoring, "--label_mode", "teacher", "--label_temperature", "2", "--zoo_dir", str(zoo_dir),
                 "--results_dir", str(tmp_path / "taught")]) == 0
    own, taught = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("own", "taught"))
    assert own["labels"] == "own"
    assert taught["labels"]["teacher"]["networks"] == 2 and taught["labels"]["teacher"]["temperature"] == 2.0
    assert own["rows"][0]["run_seeds"] == taught["rows"][0]["run_seeds"]  # the same draw of images
    assert own["rows"][0]["accuracies"] != taught["rows"][0]["accuracies"]
    assert "labels: the mean softmax(logits / 2) of 2 teacher networks" in \
        (tmp_path / "taught" / "results.md").read_text()


def test_the_test_phase_without_teachers_says_how_to_train_them(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["test", "--dataset", "digits", "--test_distilled_images", "random_train", "--protocol", "from_scratch",
            "--label_mode", "teacher", "--zoo_dir", str(tmp_path / "none"), "--results_dir", str(out), "--no_progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--label_mode teacher reads trained networks from {tmp_path / 'none'}" in err and "train-zoo" in err
    assert not out.exists()
