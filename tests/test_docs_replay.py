"""The plain-PyTorch replay in docs/formats.md, run verbatim: its code blocks are read from the
file and executed in a folder laid out as the snippet expects (results/distilled.pt, data/)."""
import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch

from datadistill.commands import main
from datadistill.data import load_dataset

DOC = Path(__file__).resolve().parents[1] / "docs" / "formats.md"
SECTION = "### Replaying a set in plain PyTorch"


def snippet_blocks() -> list[str]:
    """The ```python blocks of the replay section, in order: [replay, score on MNIST]."""
    text = DOC.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def known_init_run(folder: Path, *flags: str) -> dict:
    """A small known_init run writing folder/results/distilled.pt; its metrics.json as a dict."""
    results = folder / "results"
    assert main(["distill", "--train_nets_type", "known_init", "--n_nets", "1", "--test_nets_type",
                 "same_as_train", "--distill_steps", "1", "--no_progress", "--results_dir", str(results),
                 *flags]) == 0
    return json.loads((results / "distilled.pt").with_name("metrics.json").read_text())


@contextlib.contextmanager
def inside(folder: Path):
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def test_the_docs_have_the_two_blocks_the_tests_run():
    replay, score = snippet_blocks()
    assert "torch.load(path, weights_only=True)" in replay
    assert not re.search(r"^\s*(import|from) datadistill", replay + score, flags=re.M)  # plain PyTorch only
    assert "datasets.MNIST" in score


def test_the_docs_replay_block_reproduces_a_known_init_run(tmp_path):
    # the bundled digits stand in for MNIST: the first block runs verbatim, the scoring is done here
    # on the run's own test split, normalised as the file says
    metrics = known_init_run(tmp_path, "--dataset", "digits", "--epochs", "2")
    replay, _ = snippet_blocks()
    namespace: dict = {}
    with inside(tmp_path):
        exec(compile(replay, str(DOC), "exec"), namespace)
    net, d = namespace["net"], namespace["d"]
    data = load_dataset("digits", image_size=28, val_size=metrics["config"]["data"]["val_size"])
    assert list(data.mean) == d["mean"] and list(data.std) == d["std"]
    with torch.no_grad():
        accuracy = float((net(data.test.x).argmax(-1) == data.test.y).double().mean())
    assert metrics["final_accuracy"]["n"] == 1
    assert accuracy == pytest.approx(metrics["final_accuracy"]["mean"], abs=1e-4)


@pytest.mark.mnist
@pytest.mark.slow
def test_the_docs_replay_and_score_blocks_reproduce_a_known_init_mnist_run(tmp_path, mnist_root):
    # both blocks verbatim: data/ is the real MNIST folder, the printed figure is the run's
    metrics = known_init_run(tmp_path, "--dataset", "MNIST", "--dataset_root", mnist_root, "--epochs", "1")
    (tmp_path / "data").symlink_to(Path(mnist_root).resolve(), target_is_directory=True)
    namespace: dict = {}
    printed = io.StringIO()
    with inside(tmp_path), contextlib.redirect_stdout(printed):
        for block in snippet_blocks():
            exec(compile(block, str(DOC), "exec"), namespace)
    (shown,) = re.findall(r"test accuracy ([0-9.]+)%", printed.getvalue())
    assert float(shown) == pytest.approx(100 * metrics["final_accuracy"]["mean"], abs=0.006)
