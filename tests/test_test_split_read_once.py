"""The test split is read once, for the final report: never by distillation, validation or any
choice a report or the test phase makes."""
import torch

from datadistill.config import build_config
from datadistill.data import Dataset, Split
from datadistill.distill import Callback
from datadistill.jobs import distill


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
