"""The test split is read once, for the final report: never by distillation, validation or any
choice a report or the test phase makes."""
import torch

from datadistill import adapt, attack, testphase
from datadistill.baselines import fixed_lrs, random_train
from datadistill.config import TestPhaseConfig, build_config
from datadistill.data import Dataset, Split
from datadistill.distill import Callback
from datadistill.jobs import distill
from datadistill.models import build_model
from datadistill.nets import eval_seeds, fresh_nets
from datadistill.testphase import TestPhaseInputs, run_test_phase


class SealedSplit(Split):
    """A split whose tensors raise when read before ``unseal()``; counts reads after it."""

    def __init__(self, x, y):
        object.__setattr__(self, "_x", x)
        object.__setattr__(self, "_y", y)
        object.__setattr__(self, "sealed", True)
        object.__setattr__(self, "reads", 0)

    def _read(self, t):
        if self.sealed:
            raise AssertionError("the test split was read before the final report")
        object.__setattr__(self, "reads", self.reads + 1)
        return t

    @property
    def x(self):
        return self._read(self._x)

    @property
    def y(self):
        return self._read(self._y)

    def __len__(self):
        return self._y.shape[0]

    def to(self, device):
        return self

    def unseal(self):
        object.__setattr__(self, "sealed", False)


class UnsealAtTheEnd(Callback):
    def __init__(self, split):
        self.split = split

    def on_end(self, run):
        self.split.unseal()


def sealed_blobs(blobs):
    test = SealedSplit(blobs.test.x, blobs.test.y)
    return Dataset("blobs", blobs.train, test, 3, (0.0,), (1.0,), val=blobs.test)


def test_distillation_reads_the_test_split_only_after_the_loop(blobs, tmp_path):
    dataset = sealed_blobs(blobs)
    config = build_config({"data.dataset": "digits", "model.arch": "MLP", "synthetic.steps": 2,
                           "outer.epochs": 2, "outer.batch_size": 40, "nets.test_n_nets": 2,
                           "results_dir": str(tmp_path)})
    result = distill(config, callbacks=[UnsealAtTheEnd(dataset.test)], dataset=dataset)
    assert dataset.test.reads > 0  # the final figure did read it, after the loop
    assert result.final is not None and len(result.metrics["history"]["evaluations"]) >= 2


def test_skip_test_never_reads_the_test_split(blobs, tmp_path):
    dataset = sealed_blobs(blobs)  # never unsealed: any read fails the run
    config = build_config({"data.dataset": "digits", "model.arch": "MLP", "synthetic.steps": 2,
                           "outer.epochs": 1, "outer.batch_size": 40, "nets.test_n_nets": 2,
                           "skip_test": True, "results_dir": str(tmp_path)})
    result = distill(config, dataset=dataset)
    assert result.final is None and result.metrics["final_accuracy"] is None
    assert result.metrics["validation"]["n"] == 2


def test_known_init_file_holds_the_fixed_networks(blobs, tmp_path):
    config = build_config({"data.dataset": "digits", "model.arch": "MLP", "synthetic.steps": 2,
                           "outer.epochs": 1, "outer.batch_size": 40, "nets.train_nets_type": "known_init",
                           "nets.n_nets": 2, "nets.test_nets_type": "same_as_train", "results_dir": str(tmp_path)})
    distill(config, dataset=blobs)
    d = torch.load(tmp_path / "distilled.pt", weights_only=True)
    assert d["arch"] == "MLP" and d["init"] == "xavier"
    assert {k: v.shape[0] for k, v in d["init_params"].items()} == {k: 2 for k in d["init_params"]}


# -- choices made by reports and the test phase ------------------------------------------------------

def sealed_while(module, name: str, split: SealedSplit, monkeypatch) -> list:
    """Replace ``module.name`` by a wrapper that seals ``split`` while the original runs; returns
    the list of calls made (their positional arguments)."""
    original, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append(args)
        object.__setattr__(split, "sealed", True)
        try:
            return original(*args, **kwargs)
        finally:
            split.unseal()
    monkeypatch.setattr(module, name, wrapper)
    return calls


def stacked_mlps(n: int, seed: int = 0):
    model = build_model("MLP", 1, 8, 3)
    return model, fresh_nets(model, "xavier", 1.0, eval_seeds(seed, n), "cpu")


def test_the_adaptation_baseline_chooses_its_step_size_without_the_test_split(blobs, monkeypatch):
    dataset = sealed_blobs(blobs)
    dataset.test.unseal()  # the report's rows read it; the choice inside must not
    calls = sealed_while(adapt, "best_fixed_lr", dataset.test, monkeypatch)
    model, nets = stacked_mlps(3)
    synthetic = random_train(blobs.train, 1, 1, 3, fixed_lrs(1, 0.1), (0.0,), (1.0,), torch.Generator())
    rows = adapt.adaptation_report(model, synthetic, nets, nets, dataset, torch.Generator().manual_seed(0),
                                   finetune_steps=2)
    assert len(calls) == 1 and calls[0][3] is dataset.val  # chosen on the validation split
    assert rows["random real (best fixed step size)"]["lr"] in adapt.FIXED_LR_GRID


def test_the_attack_baseline_chooses_its_step_size_without_the_test_split(blobs, monkeypatch):
    dataset = sealed_blobs(blobs)
    dataset.test.unseal()
    calls = sealed_while(attack, "best_fixed_lr", dataset.test, monkeypatch)
    model, nets = stacked_mlps(3)
    synthetic = random_train(blobs.train, 1, 1, 3, fixed_lrs(1, 0.1), (0.0,), (1.0,), torch.Generator())
    report = attack.attack_report(model, synthetic, nets, nets, dataset.train, dataset.val, dataset.test, 0, 1,
                                  torch.Generator().manual_seed(0))
    assert len(calls) == 1 and report["baseline"]["lr"] in adapt.FIXED_LR_GRID


def phase_inputs(dataset) -> TestPhaseInputs:
    model, nets = stacked_mlps(2)
    return TestPhaseInputs(model=model, data=dataset, steps=1, per_class=1, epochs=1, loaded=None,
                           test_nets=lambda run: nets, optimize_nets=[nets, nets], seed=0, batch_size=20)


def test_the_test_phase_selects_and_scores_on_validation_without_the_test_split(blobs):
    dataset = sealed_blobs(blobs)  # never unsealed: any read fails
    config = TestPhaseConfig(images="random_train", lrs="fix", fixed_lr=0.1, n_runs=2, optimize_n_runs=4,
                             niter=2, score_on="val")
    row = run_test_phase(config, phase_inputs(dataset))
    assert row["runs"] == 2 and len(row["selection_scores"]) == 4


def test_the_test_phase_chooses_its_candidates_without_the_test_split(blobs, monkeypatch):
    dataset = sealed_blobs(blobs)
    dataset.test.unseal()  # the kept sets' scores are the final report; the choice before them is not
    calls = sealed_while(testphase, "test_optimize", dataset.test, monkeypatch)
    config = TestPhaseConfig(images="random_train", lrs="fix", fixed_lr=0.1, n_runs=2, optimize_n_runs=4, niter=2)
    row = run_test_phase(config, phase_inputs(dataset))
    assert len(calls) == 1 and len(row["selection_scores"]) == 4
    assert row["runs"] == 2 and dataset.test.reads > 0  # scored on the test split after the choice
