import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from datadistill import PRESETS, RunConfig, evaluate, load_dataset, load_distilled
from datadistill import nets as nets_module
from datadistill.commands import main, route
from datadistill.data import Dataset
from datadistill.errors import ConfigError

FAST = ["--dataset", "digits", "--arch", "LeNet", "--distill_steps", "2", "--distill_epochs", "1",
        "--batch_size", "256", "--no_progress"]


def exit_code(argv: list[str]) -> int:
    """What the process would exit with: main's return, or argparse's SystemExit (usage errors, --help)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def field(config, dotted: str):
    """``field(config, "outer.lr")``: a config value by the dotted name the presets use."""
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


def distill_config(*flags: str) -> RunConfig:
    from datadistill.commands.distill import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(list(flags)))


def test_digits_run_writes_every_artifact(tmp_path, capsys, switches):
    out = tmp_path / "r"
    start = time.perf_counter()
    assert main(["distill", *FAST, "--epochs", "2", "--results_dir", str(out), "--test_n_nets", "3"]) == 0
    elapsed = time.perf_counter() - start
    assert switches == ["apply"]  # a command that runs a job sets the allocator, once
    printed = capsys.readouterr().out
    for name in ["distilled.pt", "metrics.json", "checkpoint.pt", "images/step000.png", "images/step001.png",
                 "step_sizes.png", "accuracy.png"]:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    final, validation = metrics["final_accuracy"], metrics["validation"]
    assert final["n"] == 3 and len(final["accuracies"]) == 3
    assert final["mean"] == pytest.approx(sum(final["accuracies"]) / 3)
    assert metrics["preset"] == metrics["config"]["preset"] == "fresh"
    # the history is on the validation split and ends with the run's last evaluation (end of epoch 2)
    evaluations = metrics["history"]["evaluations"]
    assert [e["epoch"] for e in evaluations] == [0, 1, 2]  # 2 epochs: every epoch, then the end
    # the validations' own wall times, a part of the loop's
    assert metrics["validation_seconds"] == pytest.approx(sum(e["seconds"] for e in evaluations))
    assert 0 < metrics["validation_seconds"] < metrics["distill_seconds"]
    assert validation == evaluations[-1] and (validation["epoch"], validation["iteration"]) == (2, 8)
    assert (f"test accuracy: {100 * final['mean']:.2f}% +- {100 * final['std']:.2f} over 3 nets; "
            f"validation {100 * validation['mean']:.2f}%") in printed
    assert metrics["iterations"] == 2 * 4
    assert 0 < metrics["distill_seconds"] <= metrics["wall_seconds"] <= elapsed
    d = torch.load(out / "distilled.pt", weights_only=True)
    assert d["images"].shape == (2, 10, 1, 28, 28) and d["config"]["nets"]["test_n_nets"] == 3
    # both figures replayed: the run's 3 evaluation networks (seed 1) trained on the saved set score
    # the final figure on the test split and the last validation on the held-out validation split
    synthetic, data = load_distilled(out / "distilled.pt"), load_dataset("digits", image_size=28)
    assert data.val is not None
    test = evaluate(synthetic, data, arch="LeNet", n_nets=3, seed=1)
    on_val = evaluate(synthetic, Dataset(data.name, data.train, data.val, data.num_classes, data.mean, data.std),
                      arch="LeNet", n_nets=3, seed=1)
    assert list(test.accuracies) == pytest.approx(final["accuracies"], abs=1e-6)
    assert list(on_val.accuracies) == pytest.approx(validation["accuracies"], abs=1e-6)


def test_the_originals_decay_flags_select_a_step_schedule():
    def outer(*flags):
        return distill_config(*flags).outer

    assert outer().schedule == "cosine"
    assert outer("--decay_epochs", "40").schedule == "step" and outer("--decay_epochs", "40").decay_epochs == 40
    with pytest.raises(ConfigError, match="--decay_factor applies to --lr_schedule step, not cosine"):
        outer("--decay_factor", "0.5", "--lr_schedule", "cosine")  # a decay the schedule would ignore


def test_defaults_are_the_fresh_preset():
    """A config built in Python and a command line without flags agree: the ``fresh`` preset."""
    assert RunConfig().preset == distill_config().preset == "fresh"
    for key, value in PRESETS["fresh"].items():
        assert field(RunConfig(), key) == value == field(distill_config(), key), key


@pytest.mark.parametrize("flags,preset", [
    ([], "fresh"),
    (["--train_nets_type", "known_init"], "fixed"),
    (["--train_nets_type", "loaded"], "zoo"),
    (["--mode", "distill_adapt", "--source_dataset", "MNIST", "--train_nets_type", "loaded", "--test_nets_type",
      "loaded"], "zoo"),
    (["--mode", "distill_attack", "--train_nets_type", "loaded", "--attack_class", "0", "--target_class", "1"],
     "attack"),
])
def test_each_setting_takes_its_preset(flags, preset):
    config = distill_config(*flags)
    assert config.preset == preset
    for key, value in PRESETS[preset].items():
        assert field(config, key) == value, key


def test_known_init_gets_the_fixed_presets_lr_unless_one_is_given():
    fixed, fresh = PRESETS["fixed"], distill_config()
    config = distill_config("--train_nets_type", "known_init")
    assert config.outer.lr == fixed["outer.lr"] and config.preset == "fixed"
    # the preset changes the run: some of its values are not the fresh run's
    assert [k for k, v in fixed.items() if field(fresh, k) != v]
    # an explicit flag wins over the preset; the preset still fills the rest
    lr = fixed["outer.lr"] / 3
    given = distill_config("--train_nets_type", "known_init", "--lr", repr(lr))
    assert given.outer.lr == lr != fixed["outer.lr"] and given.preset == "fixed"
    for key, value in fixed.items():
        if key != "outer.lr":
            assert field(given, key) == value, key


def test_a_named_preset_applies_to_any_setting():
    fixed = PRESETS["fixed"]
    config = distill_config("--preset", "fixed")
    assert config.nets.train_nets_type == "unknown_init" and config.preset == "fixed"
    for key, value in fixed.items():
        assert field(config, key) == value, key
    # and the other way round: known_init with the fresh preset
    fresh = distill_config("--train_nets_type", "known_init", "--preset", "fresh")
    assert fresh.preset == "fresh" and fresh.nets.train_nets_type == "known_init"
    for key, value in PRESETS["fresh"].items():
        assert field(fresh, key) == value, key


@pytest.mark.slow
def test_python_dash_m_and_aliases(tmp_path):
    # the original's flat form, its --device_id and --base_seed, a dataset name in any case
    proc = subprocess.run([sys.executable, "-m", "datadistill", "--mode", "distill_basic", *FAST, "--epochs", "1",
                           "--dataset", "DIGITS", "--device_id", "-1", "--base_seed", "3",
                           "--results_dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "metrics.json").read_text())["config"]
    assert (config["data"]["dataset"], config["device"], config["seed"]) == ("digits", "cpu", 3)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@pytest.mark.parametrize("flags,message", [
    (["--mode", "distill_everything"], "unknown mode 'distill_everything'; accepted: distill_basic"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'; accepted: MNIST"),
    (["--arch", "ResNet"], "unknown arch 'ResNet'; accepted: "),
    (["--init", "zeros"], "unknown init 'zeros'; accepted: xavier"),
    (["--train_nets_type", "bogus"], "unknown --train_nets_type 'bogus'; accepted: known_init"),
    (["--test_nets_type", "bogus"], "accepted: same_as_train, unknown_init"),
    (["--image_init", "zeros"], "accepted: noise, real, herding"),
    (["--preset", "bogus"], "unknown preset 'bogus'; accepted: fresh, fixed, zoo, attack"),
    (["--n_nets", "0"], "--n_nets must be positive"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--step_size_lr", "0"], "--step_size_lr must be positive"),
    (["--distill_steps", "0"], "--distill_steps must be positive"),
    (["--batch_size", "0"], "--batch_size must be positive"),
    (["--distill_lr", "0"], "--distill_lr must be positive"),
    (["--val_size", "-1"], "--val_size must be >= 0"),
    # infinities pass "> 0" but train nothing: refused as nan is
    (["--lr", "inf"], "--lr must be finite, got inf"),
    (["--distill_lr", "inf"], "--distill_lr must be finite, got inf"),
    (["--protocol", "from_scratch", "--scratch_lr", "inf"], "--scratch_lr must be finite, got inf"),
    (["--init_param", "nan"], "--init_param must be a finite number >= 0, got nan"),
    (["--init", "default", "--init_param", "5"], "--init_param applies to --init xavier, xavier_unif"),
    (["--ipc", "3", "--distill_steps", "10"], "--ipc 3 is not --distill_steps 10 x"),
    (["--distilled", "2"], "--distilled does not apply to `datadistill distill`"),  # no abbreviations
    (["--scratch_epochs", "5"], "--scratch_epochs applies to --protocol from_scratch; this run scores unrolled"),
    (["--n_nets", "abc"], "invalid int value: 'abc'"),
    (["--dataset", "MNIST", "--dataset_root", "/nonexistent/dd"], "--dataset_root DIR"),
    pytest.param(["--device", "cuda"], "no CUDA GPU", marks=NO_CUDA),
    (["--device", "tpu"], "accepted: cpu, cuda, cuda:N"),
    (["--resume"], "checkpoint"),
    # flags the setting would ignore are refused, not dropped
    (["--attack_class", "0"], "--attack_class applies to --mode distill_attack only, not distill_basic"),
    (["--source_dataset", "MNIST"], "--source_dataset applies to --mode distill_adapt only"),
    (["--sample_n_nets", "1"], "--sample_n_nets draws from loaded networks; --train_nets_type is unknown_init"),
    (["--test_nets_type", "same_as_train", "--test_n_nets", "2"], "--test_n_nets does not apply with"),
    (["--zoo_dir", "zoos"], "--zoo_dir is read only with loaded networks"),
    (["--mode", "train"], "--mode train trains a zoo: use `datadistill train-zoo`"),
    (["--mode", "distill_attack", "--attack_class", "0"], "needs --attack_class and --target_class"),
    (["--phase", "test"], "--phase does not apply to `datadistill distill`"),
    (["--label_mode", "fuzzy"], "unknown --label_mode 'fuzzy'; accepted: hard, soft, teacher"),
    (["--label_temperature", "2"], "--label_temperature applies to --label_mode teacher only"),
    (["--label_mode", "teacher", "--label_temperature", "0"], "--label_temperature must be positive, got 0.0"),
    (["--label_mode", "teacher", "--learn_labels"], "--label_mode and --learn_labels disagree"),
    (["--label_mode", "teacher"], "--label_mode teacher reads trained networks from"),
    (["--label_mode", "teacher", "--mode", "distill_attack", "--attack_class", "0", "--target_class", "1"],
     "--label_mode teacher labels a set by networks trained on its own dataset; it applies to "
     "--mode distill_basic, not distill_attack"),
])
def test_bad_input_one_line_exit_2_no_files(tmp_path, capsys, flags, message):
    out = tmp_path / "r"
    assert exit_code(["distill", *FAST, "--results_dir", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("datadistill: error: ")
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    # the original's flat form: --mode distill_basic is a distillation, which takes no attack flags
    (["--mode", "distill_basic", "--attack_class", "0", *FAST], "--attack_class applies to --mode distill_attack"),
    # --mode train is train-zoo, which takes no distillation flags
    (["--mode", "train", "--source_dataset", "MNIST", "--dataset", "digits"],
     "--source_dataset does not apply to `datadistill train-zoo`; see `datadistill train-zoo --help`"),
    (["--mode", "train", "--distill_steps", "2", "--attack_class", "0"],
     "--distill_steps, --attack_class does not apply to `datadistill train-zoo`"),
    (["--phase", "bogus", *FAST], "unknown --phase 'bogus'; accepted: train, test"),
    (["train-zoo", "--dataset", "digits", "--resume"], "--resume does not apply to `datadistill train-zoo`"),
    (["test", "--dataset", "digits", "--epochs", "3"], "--epochs does not apply to `datadistill test`"),
    (["test", "--dataset", "digits", "--label_mode", "soft"], "datadistill test takes --label_mode teacher only"),
    (["test", "--dataset", "digits", "--label_temperature", "2"],
     "--label_temperature applies to --label_mode teacher only"),
    (["test", "--dataset", "digits", "--label_mode", "teacher", "--test_distilled_images", "random_train",
      "--test_distilled_lrs", "nearest_neighbor", "1", "2"],
     "--label_mode teacher does not apply with --test_distilled_lrs nearest_neighbor"),
    (["evaluate", "distilled.pt", "--mode", "distill_basic"], "--mode does not apply to `datadistill evaluate`"),
    # a method's own flags are refused with another method
    (["distill", "--method", "dm", "--dataset", "digits", "--step_size_param", "softplus"],
     "--step_size_param applies to --method wang2018 or mtt, not dm"),
    (["distill", *FAST, "--step_size_param", "cubic"], "unknown --step_size_param 'cubic'; accepted: exp, softplus"),
    (["distill", *FAST, "--init_from", "d.pt"], "--init_from applies to --method dm or gm or mtt, not wang2018"),
    (["distill", "--method", "gm", "--dataset", "digits", "--init_from", "d.pt", "--image_init", "real"],
     "--image_init does not apply with --init_from: the set starts from that file's images"),
    (["distill", "--method", "dm", "--dataset", "digits", "--distill_steps", "5"],
     "--distill_steps applies to --method wang2018, not dm"),
    (["distill", "--method", "gm", "--dataset", "digits", "--step_size_lr", "0.1"],
     "--step_size_lr applies to --method wang2018 or mtt, not gm"),
    (["distill", "--method", "dm", "--dataset", "digits", "--protocol", "unrolled"],
     "--protocol unrolled replays a set's learned step sizes, and --method dm learns none"),
    (["test", "--dataset", "digits", "--eval_augment", "dsa"],
     "--eval_augment applies to --protocol from_scratch; this run scores unrolled"),
    (["test", "--dataset", "digits", "--test_niter", "3"], "--test_niter applies with --test_optimize_n_runs only"),
    (["distil", "--dataset", "digits"], "unknown command 'distil'; accepted: distill, train-zoo, test, evaluate"),
    # seeds derived from it (offsets times seed + 1) must stay in the range torch.manual_seed takes
    (["distill", "--dataset", "digits", "--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
    (["test", "--dataset", "digits", "--seed", str(2**64)], f"--seed must be in 0..4294967295, got {2**64}"),
    (["evaluate", "missing.pt", "--seed", str(2**32)], "--seed must be in 0..4294967295, got 4294967296"),
    (["distill", "--dataset", "digits", "--lr_schedule", "cosine", "--decay_epochs", "2"],
     "--decay_epochs applies to --lr_schedule step, not cosine"),
    (["distill", "--dataset", "digits", "--val_size", "0", "--eval_every", "1"],
     "--eval_every validates on the validation split, and --val_size 0 holds none out"),
    (["distill", "--method", "dm", "--dataset", "digits", "--conv_backend", "mkldnn"],
     "--conv_backend applies to --method wang2018 or mtt, not dm"),
    (["distill", "--method", "bogus", "--embed_batch", "3"], "unknown method 'bogus'; accepted: dm, gm, mtt, wang2018"),
    # the paper's method scores unrolled: no network takes an ordinary training step to compile
    (["distill", "--dataset", "digits", "--compile"], "--compile applies to --protocol from_scratch; this run scores "
                                                      "unrolled"),
    (["test", "--dataset", "digits", "--compile"], "--compile applies to --protocol from_scratch"),
    (["train-zoo", "--dataset", "digits", "--compile"], "--compile does not apply to `datadistill train-zoo`"),
])
def test_commands_refuse_flags_not_theirs(tmp_path, capsys, switches, argv, message):
    out = tmp_path / "r"
    assert exit_code([*argv, "--results_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("datadistill: error: ")
    assert not out.exists() and switches == []


@pytest.mark.parametrize("command", [["distill", *FAST], ["evaluate", "missing.pt"], ["test", "--dataset", "digits"],
                                     ["train-zoo", "--dataset", "digits", "--zoo_dir"]])
def test_a_results_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, command):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    flag = [] if command[0] == "train-zoo" else ["--results_dir"]
    assert exit_code([*command, *flag, str(a_file)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    assert exit_code([*command, *flag, str(a_file / "under")]) == 2
    assert "cannot be created: Not a directory" in capsys.readouterr().err
    assert a_file.read_text() == "not a folder"


@pytest.mark.parametrize("command", [["distill", "--method", "mtt"], ["distill", "--label_mode", "teacher"],
                                     ["test", "--test_nets_type", "loaded"]])
def test_a_zoo_folder_that_is_a_file_is_named_before_any_zoo_is_looked_for(tmp_path, capsys, command):
    a_file = tmp_path / "zoos"
    a_file.write_text("not a folder")
    out = tmp_path / "r"
    argv = [*command, "--dataset", "digits", "--zoo_dir", str(a_file), "--results_dir", str(out)]
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err == f"datadistill: error: --zoo_dir {a_file} is a file; give a folder\n"
    assert not out.exists()


def test_scoring_on_a_validation_split_that_is_not_there_is_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["test", "--dataset", "digits", "--score_on", "val", "--val_size", "0", "--test_distilled_images",
            "random_train", "--test_distilled_lrs", "fix", "0.1", "--results_dir", str(out), "--no_progress"]
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err == ("datadistill: error: --score_on val scores on the validation split, and this run holds none "
                   "out; give --val_size > 0\n")
    assert not out.exists()


def test_a_missing_init_from_file_is_one_line_and_no_results(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["distill", "--method", "dm", "--dataset", "digits", "--init_from", str(tmp_path / "none.pt"),
            "--results_dir", str(out), "--no_progress"]
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert f"distilled file {tmp_path / 'none.pt'} does not exist" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("argv,expected", [
    (["--mode", "train", "--phase", "test", "--dataset", "digits"],
     ("train-zoo", ["--phase", "test", "--dataset", "digits"])),
    (["--dataset", "digits", "--mode=train", "--n_nets", "2"], ("train-zoo", ["--dataset", "digits", "--n_nets", "2"])),
    (["--mode", "distill_basic", "--phase", "test", "--test_n_runs", "2"],
     ("test", ["--mode", "distill_basic", "--test_n_runs", "2"])),
    (["--phase=test"], ("test", [])),
    (["--mode", "distill_attack", "--phase", "train", "--seed", "3"], ("distill", ["--mode", "distill_attack", "--seed", "3"])),
    (["--dataset", "digits"], ("distill", ["--dataset", "digits"])),
    ([], ("distill", [])),
    # a subcommand takes its arguments as they are
    (["distill", "--mode", "train"], ("distill", ["--mode", "train"])),
    (["train-zoo", "--phase", "test"], ("train-zoo", ["--phase", "test"])),
    (["test", "--phase", "test"], ("test", ["--phase", "test"])),
    (["evaluate", "r/distilled.pt", "--mode", "train"], ("evaluate", ["r/distilled.pt", "--mode", "train"])),
])
def test_the_flat_form_routes_to_a_command(argv, expected):
    assert route(argv) == expected


FLAGS = re.compile(r"--[A-Za-z][\w-]*")


@pytest.mark.parametrize("command,has,has_not", [
    ("distill", ["--mode", "--preset", "--attack_class", "--distill_steps", "--train_nets_type", "--resume",
                 "--epochs", "--lr", "--world_size"],
     ["--phase", "--test_distilled_images", "--test_n_runs", "--distilled", "--nets"]),
    ("train-zoo", ["--phase", "--n_nets", "--epochs", "--lr", "--zoo_dir", "--world_size"],
     ["--attack_class", "--distill_steps", "--mode", "--preset", "--resume", "--train_nets_type",
      "--source_dataset", "--test_n_nets", "--image_init", "--test_distilled_images"]),
    ("test", ["--mode", "--test_distilled_images", "--test_distilled_lrs", "--test_n_runs", "--distilled",
              "--train_nets_type", "--test_n_nets", "--attack_class", "--protocol", "--score_on"],
     ["--phase", "--resume", "--epochs", "--lr", "--preset", "--attack_weight", "--world_size", "--sample_n_nets"]),
    ("evaluate", ["--protocol", "--nets", "--test_n_nets", "--arch", "--seed"],
     ["--mode", "--phase", "--epochs", "--train_nets_type", "--resume", "--attack_class", "--preset",
      "--distill_steps", "--world_size"]),
])
def test_each_command_helps_with_its_own_flags_only(capsys, switches, command, has, has_not):
    assert exit_code([command, "--help"]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith(f"usage: datadistill {command} ") and printed.err == ""
    listed = set(FLAGS.findall(printed.out))
    assert set(has) <= listed, sorted(set(has) - listed)
    assert not set(has_not) & listed, sorted(set(has_not) & listed)
    assert switches == []  # --help leaves the process as it was


def test_top_level_help_lists_the_commands(capsys, switches):
    assert exit_code(["--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: datadistill ")
    for command in ("distill", "train-zoo", "test", "evaluate"):
        assert re.search(rf"^\s+{command}\s", printed, re.M), command
    assert switches == []


@pytest.mark.parametrize("error, said", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 31360000000 bytes. Error code 12"), "(tried to allocate 31360000000 bytes)"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity"),
     "(tried to allocate 20.00 GiB)"),
    (MemoryError(), "out of memory: ask for"),
])
def test_running_out_of_memory_is_one_line_not_a_traceback(monkeypatch, capsys, error, said):
    from datadistill.commands import distill

    def fail(*args):
        raise error

    monkeypatch.setattr(distill, "run", fail)
    assert exit_code(["distill", "--dataset", "digits"]) == 1
    printed = capsys.readouterr().err
    assert printed.startswith("datadistill: error: out of memory") and printed.count("\n") == 1
    assert said in printed and "--batch_size" in printed


@pytest.mark.parametrize("nets", [["--n_nets", "1000000000"], ["--train_nets_type", "known_init", "--n_nets", "1000000000"]])
def test_networks_that_cannot_fit_fail_before_any_is_drawn(tmp_path, capsys, monkeypatch, nets):
    # 10^9 LeNets are ~240 TB of weights: said before a seed is drawn (it drew for minutes, then ran out)
    def drawn(*args):
        raise AssertionError("seeds were drawn for networks that cannot fit")
    monkeypatch.setattr(nets_module, "draw_seeds", drawn)
    assert exit_code(["distill", *FAST, *nets, "--epochs", "1", "--results_dir", str(tmp_path / "r")]) == 1
    printed = capsys.readouterr().err
    assert re.fullmatch(r"datadistill: error: out of memory \(tried to allocate \d+\.\d GiB\): ask for .*\n",
                        printed), printed
    assert not (tmp_path / "r" / "distilled.pt").exists()


@pytest.mark.parametrize("command, said", [("distill", "rerun with --resume to continue"),
                                           ("train-zoo", "rerun the same command to continue (finished parts of the "
                                                         "zoo are kept)"),
                                           ("test", "nothing was written"), ("evaluate", "nothing was written")])
def test_an_interrupt_says_how_each_command_carries_on(monkeypatch, capsys, command, said):
    # only distill takes --resume; train-zoo keeps its finished parts; test and evaluate write at the end
    from datadistill.commands import COMMANDS

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(COMMANDS[command], "run", interrupted)
    assert exit_code([command, *(["x.pt"] if command == "evaluate" else [])]) == 130
    assert capsys.readouterr().err == f"datadistill: interrupted; {said}\n"


def test_other_runtime_errors_are_not_called_out_of_memory(monkeypatch):
    from datadistill.commands import distill

    def fail(*args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(distill, "run", fail)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["distill", "--dataset", "digits"])


def test_no_command_is_a_usage_error_that_lists_the_commands(capsys, switches):
    assert exit_code([]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.count("\n") == 1
    assert "a command is required" in printed.err
    assert all(command in printed.err for command in ("distill", "train-zoo", "test", "evaluate"))
    assert switches == []


# In a fresh interpreter: whether importing datadistill, and --help, call the process switches.
# A profile hook sees every Python call from the first import on; the last line calls them
# itself, so a hook that saw nothing cannot pass for a clean import.
SWITCH_CALLS = """
import sys
calls = []
def hook(frame, event, arg):
    if event == "call" and frame.f_code.co_name in ("apply_process_switches", "keep_freed_memory"):
        calls.append(frame.f_code.co_name)
sys.setprofile(hook)
import datadistill
from datadistill.commands import main
for argv in (["--help"], ["distill", "--help"], ["train-zoo", "--help"], ["--mode", "distill_basic", "--help"]):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 0, e.code
print("help:", calls)
import datadistill.runtime
datadistill.runtime.apply_process_switches()
print("run:", calls)
"""


@pytest.mark.slow
def test_importing_and_help_leave_the_allocator_alone():
    proc = subprocess.run([sys.executable, "-c", SWITCH_CALLS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-2] == "help: []"
    assert lines[-1] == "run: ['apply_process_switches', 'keep_freed_memory']"


def test_garbage_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["distill", *FAST, "--results_dir", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize("part, value", [("optimizer", {"state": {}, "param_groups": []}),
                                         ("generator", torch.zeros(3, dtype=torch.uint8))])
def test_a_checkpoint_whose_state_cannot_be_restored_is_refused_in_one_line(tmp_path, capsys, part, value):
    # whole in its keys and types, but a part torch will not take back (hand-edited or damaged)
    assert main(["distill", *FAST, "--epochs", "1", "--results_dir", str(tmp_path)]) == 0
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    state[part] = value
    torch.save(state, tmp_path / "checkpoint.pt")
    before = (tmp_path / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(["distill", *FAST, "--epochs", "2", "--resume", "--results_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("datadistill: error: the checkpoint's state cannot be restored (") and err.count("\n") == 1
    assert err.rstrip().endswith("run without --resume to start afresh")
    assert (tmp_path / "metrics.json").read_bytes() == before


def test_a_checkpoint_of_the_first_format_is_refused_in_one_line(tmp_path, capsys):
    """Format 1 (datadistill 0.1) is not migrated: resuming it says so and writes nothing."""
    config = distill_config(*FAST, "--results_dir", str(tmp_path)).to_dict()
    torch.save({"format": "datadistill.checkpoint/1", "config": config, "epoch": 1}, tmp_path / "checkpoint.pt")
    assert main(["distill", *FAST, "--results_dir", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("datadistill: error: ") and err.count("\n") == 1
    assert "was written by datadistill 0.1" in err and "without --resume" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    # the flat form; known_init takes the fixed preset, which the run records
    assert main([*FAST, "--train_nets_type", "known_init", "--epochs", "1", "--results_dir", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["preset"] == metrics["config"]["preset"] == "fixed"
    assert metrics["config"]["outer"]["lr"] == PRESETS["fixed"]["outer.lr"]
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["format"] == "datadistill.checkpoint/2" and saved["epoch"] == 1
    capsys.readouterr()
    resume = [*FAST, "--train_nets_type", "known_init", "--epochs", "2", "--results_dir", str(tmp_path), "--resume"]
    assert main([*resume, "--distill_steps", "3"]) == 2
    assert "synthetic.steps=2, this run has 3" in capsys.readouterr().err
    assert main([*resume, "--val_size", "125"]) == 2  # a value where the run took the default: said so
    assert "data.val_size=the default, this run has 125;" in capsys.readouterr().err
    # a preset is checked by the values it gives, not by its name
    fresh = distill_config("--train_nets_type", "known_init", "--preset", "fresh")
    differ = {k for k, v in PRESETS["fixed"].items() if field(fresh, k) != v} - {"outer.epochs"}  # may change
    assert differ
    assert main([*resume, "--preset", "fresh"]) == 2
    err = capsys.readouterr().err
    named = re.search(r"checkpoint was made with ([\w.]+)=", err)
    assert err.count("\n") == 1 and named and named.group(1) in differ, err
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["epoch"] == 1  # refused: nothing ran
    # more epochs extend a run; fewer than the checkpoint has run cannot continue it
    torch.save({**saved, "epoch": 3}, tmp_path / "checkpoint.pt")
    assert main(resume) == 2
    assert capsys.readouterr().err == (f"datadistill: error: checkpoint {tmp_path / 'checkpoint.pt'} is at epoch 3, "
                                       f"past --epochs 2; give --epochs 3 or more, or run without --resume\n")


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    # the backend pinned: chosen by timing, a busy machine could give the two runs different kernels
    args = [sys.executable, "-m", "datadistill", "distill", *FAST, "--epochs", "12", "--eval_every", "4",
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
    assert saved["format"] == "datadistill.checkpoint/2"
    assert 0 < saved["epoch"] < 12, "the run should have been killed part way"
    assert not (killed / "distilled.pt").exists()
    subprocess.run([*args, "--results_dir", str(killed), "--resume"], check=True, capture_output=True)
    straight = tmp_path / "straight"
    subprocess.run([*args, "--results_dir", str(straight)], check=True, capture_output=True)
    a = torch.load(killed / "distilled.pt", weights_only=True)
    b = torch.load(straight / "distilled.pt", weights_only=True)
    torch.testing.assert_close(a["images"], b["images"], rtol=0, atol=1e-5)
    torch.testing.assert_close(a["lrs"], b["lrs"], rtol=0, atol=1e-6)
    metrics = json.loads((killed / "metrics.json").read_text())
    straight_metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["iterations"] == 12 * 4
    # the history carried through the kill: the same evaluations at the same points
    assert ([(e["epoch"], e["iteration"]) for e in metrics["history"]["evaluations"]]
            == [(e["epoch"], e["iteration"]) for e in straight_metrics["history"]["evaluations"]]
            == [(0, 0), (4, 16), (8, 32), (12, 48)])
    assert metrics["final_accuracy"]["accuracies"] == pytest.approx(straight_metrics["final_accuracy"]["accuracies"],
                                                                    abs=1e-4)


def test_the_progress_bar_shows_iterations_and_validation(tmp_path, capsys):
    # the README's command runs with the bar: it must count every iteration and show the validation
    argv = [a for a in FAST if a != "--no_progress"]
    assert main(["distill", *argv, "--epochs", "2", "--eval_every", "1", "--results_dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    total = metrics["iterations"]
    assert total > 0 and re.search(rf"distilling: 100%\|.*\| {total}/{total} ", err), err[-500:]
    assert "epoch 1: validation accuracy" in err and "epoch 2: validation accuracy" in err


def test_metrics_record_peak_memory_in_bytes(tmp_path):
    assert main(["distill", *FAST, "--epochs", "1", "--results_dir", str(tmp_path)]) == 0
    peak = json.loads((tmp_path / "metrics.json").read_text())["peak_memory"]
    # torch alone keeps over 100 MiB resident; a KiB count read as bytes would be about 1000x smaller
    assert 100 * 2**20 < peak["host_rss"] < 64 * 2**30 and peak["device"] is None


def test_metrics_record_the_real_batch_as_run(tmp_path, capsys):
    # a --batch_size past the training split reads the whole split each iteration: one per epoch
    argv = FAST[:FAST.index("--batch_size")] + ["--batch_size", "100000", "--no_progress"]
    assert main(["distill", *argv, "--epochs", "2", "--skip_test", "--results_dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("test split not read (--skip_test); validation ")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    n_train = len(load_dataset("digits", val_size=metrics["config"]["data"]["val_size"]).train)
    assert metrics["real_batch_size"] == n_train and metrics["iterations"] == 2
    assert metrics["config"]["outer"]["batch_size"] == 100000  # as asked: a resume compares it


def test_a_checkpoint_older_than_a_setting_resumes_with_its_default(tmp_path, capsys):
    # fields added to the tool after a checkpoint was written count as their defaults (the
    # behaviour the older code had built in); a saved value that differs is still refused
    assert main([*FAST, "--epochs", "1", "--results_dir", str(tmp_path)]) == 0
    path = tmp_path / "checkpoint.pt"
    saved = torch.load(path, weights_only=False)
    del saved["config"]["outer"]["adam_beta1"], saved["config"]["keep_best"]
    torch.save(saved, path)
    resume = [*FAST, "--epochs", "2", "--results_dir", str(tmp_path), "--resume"]
    assert main([*resume, "--adam_beta1", "0.9"]) == 2
    assert "outer.adam_beta1=0.5, this run has 0.9" in capsys.readouterr().err
    assert main(resume) == 0
    assert torch.load(path, weights_only=False)["epoch"] == 2


def test_the_fixed_preset_validates_every_epoch_and_keeps_the_best_snapshot(tmp_path, capsys):
    known = [*FAST, "--train_nets_type", "known_init", "--n_nets", "1", "--test_nets_type", "same_as_train",
             "--epochs", "3"]
    assert main([*known, "--val_size", "300", "--results_dir", str(tmp_path / "a")]) == 0
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["preset"] == "fixed" and metrics["config"]["keep_best"] and metrics["config"]["eval_every"] == 1
    scores = [e["mean"] for e in metrics["history"]["evaluations"]]
    assert len(scores) == 4  # the start, after epochs 1 and 2, and the end
    assert metrics["validation"]["mean"] == max(scores)  # (that the best wins: test_distill's keep_best tests)
    # without a validation split the preset's early stopping lapses: the last snapshot, no error
    assert main([*known, "--val_size", "0", "--results_dir", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["validation"] is None
    # asked for by name where the preset does not stop early, it is refused with one line
    capsys.readouterr()
    assert main([*FAST, "--epochs", "1", "--val_size", "0", "--keep_best", "--results_dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "--keep_best picks the snapshot that validates best" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c" / "metrics.json").exists()


def test_a_run_in_another_runs_folder_leaves_no_picture_of_the_other_set(tmp_path):
    # three steps with learned step sizes and validation, then a dm run without validation there
    assert main(["distill", *FAST, "--distill_steps", "3", "--epochs", "1", "--results_dir", str(tmp_path)]) == 0
    (tmp_path / "notes.txt").write_text("the user's")
    assert {"step_sizes.png", "accuracy.png"} <= {p.name for p in tmp_path.iterdir()}
    assert main(["distill", "--method", "dm", "--dataset", "digits", "--arch", "ConvNet", "--width", "8", "--ipc", "1",
                 "--epochs", "1", "--val_size", "0", "--scratch_epochs", "1", "--test_n_nets", "1", "--no_progress",
                 "--results_dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["step000.png"]
    assert not (tmp_path / "step_sizes.png").exists() and not (tmp_path / "accuracy.png").exists()
    assert (tmp_path / "notes.txt").read_text() == "the user's"
