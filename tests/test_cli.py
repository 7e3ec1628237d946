import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from datadistill.cli import main
from datadistill.config import NetsConfig, OuterConfig, RunConfig, SyntheticConfig

FAST = ["--dataset", "digits", "--arch", "LeNet", "--distill_steps", "2", "--distill_epochs", "1",
        "--batch_size", "256", "--no_progress"]


def test_digits_run_writes_every_artifact(tmp_path, capsys):
    out = tmp_path / "r"
    start = time.perf_counter()
    assert main([*FAST, "--epochs", "2", "--results_dir", str(out), "--test_n_nets", "3"]) == 0
    elapsed = time.perf_counter() - start
    printed = capsys.readouterr().out
    for name in ["distilled.pt", "metrics.json", "checkpoint.pt", "images/step000.png", "images/step001.png",
                 "step_sizes.png", "accuracy.png"]:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final_accuracy"]
    assert final["n"] == 3 and len(final["accuracies"]) == 3
    assert final["mean"] == pytest.approx(sum(final["accuracies"]) / 3)
    # the final figure is the run's last evaluation (the end of epoch 2), and the one printed
    last = metrics["history"]["evaluations"][-1]
    assert (last["epoch"], last["iteration"]) == (2, 8) and last["accuracies"] == final["accuracies"]
    assert f"test accuracy: {100 * final['mean']:.2f}% +- {100 * final['std']:.2f} over 3 nets" in printed
    assert metrics["iterations"] == 2 * 4
    assert 0 < metrics["distill_seconds"] <= metrics["wall_seconds"] <= elapsed
    assert [e["epoch"] for e in metrics["history"]["evaluations"]] == [0, 1, 2]  # 2 epochs: every epoch, then the end
    d = torch.load(out / "distilled.pt", weights_only=True)
    assert d["images"].shape == (2, 10, 1, 28, 28) and d["config"]["nets"]["test_n_nets"] == 3


def test_the_originals_decay_flags_select_a_step_schedule():
    from datadistill.cli import build_parser, config_from_args

    def outer(*flags):
        return config_from_args(build_parser().parse_args(list(flags))).outer

    assert outer().schedule == "cosine"
    assert outer("--decay_epochs", "40").schedule == "step" and outer("--decay_epochs", "40").decay_epochs == 40
    assert outer("--decay_factor", "0.5", "--lr_schedule", "cosine").schedule == "cosine"


def test_defaults_that_depend_on_the_run_follow_its_networks():
    """Flags left out take the measured default of the run (RunConfig), not the CLI's."""
    from datadistill.cli import build_parser, config_from_args

    def config(*flags):
        return config_from_args(build_parser().parse_args(list(flags)))

    fresh, fixed = config(), config("--train_nets_type", "known_init")
    loaded = config("--mode", "distill_attack", "--train_nets_type", "loaded", "--attack_class", "0",
                    "--target_class", "1")
    assert (fresh.synthetic.image_init, fresh.outer.epochs, fresh.outer.lr) == ("noise", 5, 0.05)
    assert (fixed.synthetic.image_init, fixed.outer.epochs, fixed.outer.lr) == ("noise", 27, 0.04)
    # step sizes: the images' rate, held to at most 0.01 with fresh networks
    assert (fresh.outer.step_size_lr, fixed.outer.step_size_lr, loaded.outer.step_size_lr) == (0.01, 0.04, 0.01)
    assert config("--lr", "0.005").outer.step_size_lr == 0.005
    assert config("--lr", "0.005", "--step_size_lr", "0.02").outer.step_size_lr == 0.02
    assert (loaded.synthetic.image_init, loaded.outer.epochs, loaded.attack_weight) == ("real", 4, 3.0)
    adapt = config("--mode", "distill_adapt", "--source_dataset", "MNIST", "--dataset", "digits",
                   "--train_nets_type", "loaded")
    assert (adapt.synthetic.image_init, adapt.outer.epochs) == ("real", 45)
    assert loaded.synthetic.learn_labels and fixed.synthetic.learn_labels and not fresh.synthetic.learn_labels
    assert not config("--train_nets_type", "known_init", "--no-learn_labels").synthetic.learn_labels
    assert config("--mode", "train").outer.epochs == 45
    # passes of the inner GD: more with fresh networks, the paper's 3 elsewhere, a given one kept
    assert (fresh.synthetic.epochs, fixed.synthetic.epochs, loaded.synthetic.epochs) == (10, 3, 3)
    assert config("--distill_epochs", "3").synthetic.epochs == 3
    given = config("--train_nets_type", "loaded", "--image_init", "noise", "--epochs", "3", "--learn_labels")
    assert (given.synthetic.image_init, given.outer.epochs, given.synthetic.learn_labels) == ("noise", 3, True)
    assert not config("--mode", "distill_attack", "--train_nets_type", "loaded", "--attack_class", "0",
                      "--target_class", "1", "--no-learn_labels").synthetic.learn_labels


def test_python_dash_m_and_aliases(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "datadistill", *FAST, "--epochs", "1", "--dataset", "DIGITS",
                           "--device_id", "-1", "--results_dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["data"]["dataset"] == "digits"


@pytest.mark.parametrize("flags,message", [
    (["--mode", "distill_everything"], "unknown mode 'distill_everything'; accepted: distill_basic"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'; accepted: MNIST"),
    (["--arch", "ResNet"], "unknown arch 'ResNet'; accepted: "),
    (["--init", "zeros"], "unknown init 'zeros'; accepted: xavier"),
    (["--train_nets_type", "bogus"], "unknown --train_nets_type 'bogus'; accepted: known_init"),
    (["--test_nets_type", "bogus"], "accepted: same_as_train, unknown_init"),
    (["--image_init", "zeros"], "accepted: noise, real"),
    (["--n_nets", "0"], "--n_nets must be positive"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--step_size_lr", "0"], "--step_size_lr must be positive"),
    (["--distill_steps", "0"], "--distill_steps must be positive"),
    (["--batch_size", "0"], "--batch_size must be positive"),
    (["--distill_lr", "0"], "--distill_lr must be positive"),
    (["--n_nets", "abc"], "invalid int value: 'abc'"),
    (["--dataset", "MNIST", "--dataset_root", "/nonexistent/dd"], "--dataset_root DIR"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--device", "tpu"], "accepted: cpu, cuda, cuda:N"),
    (["--resume"], "checkpoint"),
])
def test_bad_input_one_line_exit_2_no_files(tmp_path, capsys, flags, message):
    out = tmp_path / "r"
    if "abc" in flags:  # argparse's own type errors leave through SystemExit
        with pytest.raises(SystemExit) as exit_info:
            main([*FAST, "--results_dir", str(out), *flags])
        code = exit_info.value.code
    else:
        code = main([*FAST, "--results_dir", str(out), *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("datadistill: error: ")
    assert not out.exists()


def test_garbage_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    assert main([*FAST, "--results_dir", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    assert main([*FAST, "--epochs", "1", "--results_dir", str(tmp_path)]) == 0
    assert main([*FAST, "--epochs", "2", "--distill_steps", "3", "--results_dir", str(tmp_path), "--resume"]) == 2
    assert "synthetic.steps=2" in capsys.readouterr().err


def test_checkpoints_from_before_a_setting_existed_resume_with_its_old_value():
    """A checkpoint whose config predates --learn_labels ran with fixed labels."""
    from datadistill.errors import ArtifactError
    from datadistill.runner import _check_resumable

    current = RunConfig(synthetic=SyntheticConfig(learn_labels=False)).to_dict()
    older = {**current, "synthetic": {k: v for k, v in current["synthetic"].items() if k != "learn_labels"}}
    _check_resumable(older, current)
    learned = RunConfig(synthetic=SyntheticConfig(learn_labels=True)).to_dict()
    with pytest.raises(ArtifactError, match="synthetic.learn_labels=False, this run has True"):
        _check_resumable(older, learned)
    # before --step_size_lr, the step sizes moved at the images' rate
    fixed = RunConfig(nets=NetsConfig("known_init", 1, "same_as_train", 1)).to_dict()
    assert fixed["outer"]["step_size_lr"] == fixed["outer"]["lr"] == 0.04
    older = {**fixed, "outer": {k: v for k, v in fixed["outer"].items() if k != "step_size_lr"}}
    _check_resumable(older, fixed)
    slower = RunConfig(outer=OuterConfig(step_size_lr=0.01), nets=NetsConfig("known_init", 1, "same_as_train", 1))
    with pytest.raises(ArtifactError, match="outer.step_size_lr=0.04, this run has 0.01"):
        _check_resumable(older, slower.to_dict())


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    # the backend pinned: chosen by timing, a busy machine could give the two runs different kernels
    args = [sys.executable, "-m", "datadistill", *FAST, "--epochs", "30", "--eval_every", "10",
            "--conv_backend", "native"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--results_dir", str(killed)], stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(killed / "checkpoint.pt", weights_only=False)
    assert 0 < saved["epoch"] < 30, "the run should have been killed part way"
    assert not (killed / "distilled.pt").exists()
    subprocess.run([*args, "--results_dir", str(killed), "--resume"], check=True, capture_output=True)
    straight = tmp_path / "straight"
    subprocess.run([*args, "--results_dir", str(straight)], check=True, capture_output=True)
    a = torch.load(killed / "distilled.pt", weights_only=True)
    b = torch.load(straight / "distilled.pt", weights_only=True)
    torch.testing.assert_close(a["images"], b["images"], rtol=0, atol=1e-5)
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["iterations"] == 30 * 4
