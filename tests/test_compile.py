"""``--compile``: training steps on a set and dm's embeddings through torch.compile give what the
plain functions give, up to float rounding; the flag is refused where it cannot run."""
import functools
import json

import pytest
import torch
import torch._dynamo.config
from torch._dynamo.utils import counters

from datadistill import inner
from datadistill.augment import augmenter
from datadistill.commands import main
from datadistill.errors import ConfigError
from datadistill.evaluate import train_from_scratch
from datadistill.jobs.common import prepare_compile
from datadistill.models import build_model
from datadistill.nets import fresh_nets
from datadistill.synthetic import SyntheticSet


def _compiler_missing() -> bool:
    """What ``--compile`` itself checks before a CPU run: a C++ compiler on PATH."""
    try:
        prepare_compile(torch.device("cpu"))
    except ConfigError:
        return True
    return False


has_compiler = pytest.mark.skipif(_compiler_missing(), reason="torch.compile on a CPU needs a C++ compiler")


@has_compiler
@pytest.mark.parametrize("n_nets, soft", [(1, False), pytest.param(2, True, marks=pytest.mark.slow)])
def test_compiled_training_gives_the_plain_loss_networks(n_nets, soft):
    # one network (the CPU's from-scratch scoring) and two stacked under vmap (a GPU's), hard
    # labels and target vectors (learned labels); DSA drawn per image, as scoring trains. Each
    # case compiles for half a minute on 2 cores: the second runs with the slow tests
    g = torch.Generator().manual_seed(0)
    model = build_model("ConvNet", 1, 28, 10, width=4)
    nets = fresh_nets(model, "default", 1.0, list(range(n_nets)), "cpu")
    labels = (torch.arange(16) % 10).view(1, 16)
    if soft:
        labels = torch.softmax(3 * torch.randn(1, 16, 10, generator=g), -1)
    synthetic = SyntheticSet(torch.randn(1, 16, 1, 28, 28, generator=g), labels, torch.ones(1), (0.0,), (1.0,), 10)
    trained = {}
    for compiled in (False, True):
        trained[compiled] = train_from_scratch(model, nets, synthetic, 4, 0.05, 8,
                                               generator=torch.Generator().manual_seed(1),
                                               augment=augmenter("dsa", siamese=False), compiled=compiled)
    for k, v in trained[False].items():
        assert not torch.equal(v, nets[k])  # the networks trained
        torch.testing.assert_close(trained[True][k], v, rtol=1e-4, atol=1e-5, msg=k)


@has_compiler
def test_compiled_loss_and_gradient_equal_the_plain_ones():
    # the shapes of the training test's steps: inductor's kernels on disk serve both
    g = torch.Generator().manual_seed(0)
    model = build_model("ConvNet", 1, 28, 10, width=4)
    stacked = {k: v.requires_grad_() for k, v in fresh_nets(model, "xavier", 1.0, [0], "cpu").items()}
    x, y = torch.randn(8, 1, 28, 28, generator=g), torch.arange(8) % 10
    plain, compiled = inner.training_loss(model), inner.training_loss(model, compiled=True)
    assert torch.equal(plain(stacked, x, y), inner.mean_loss_per_net_summed(model, stacked, x, y))
    torch.testing.assert_close(compiled(stacked, x, y), plain(stacked, x, y), rtol=1e-5, atol=1e-6)
    graphs = counters["stats"]["unique_graphs"]
    # the same images with channels-last strides (as DSA's crop leaves them) reuse the graph
    x_channels_last = torch.empty(8, 28, 28, 1).copy_(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert x_channels_last.stride() != x.stride() and torch.equal(x_channels_last, x)
    torch.testing.assert_close(compiled(stacked, x_channels_last, y), plain(stacked, x, y), rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == graphs
    for a, b in zip(torch.autograd.grad(compiled(stacked, x, y), list(stacked.values())),
                    torch.autograd.grad(plain(stacked, x, y), list(stacked.values()))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compile_without_a_compiler_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    out = tmp_path / "r"
    code = main(["distill", "--method", "gm", "--dataset", "digits", "--results_dir", str(out), "--compile",
                 "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--compile on a CPU needs a C++ compiler on PATH" in err and "drop --compile" in err
    assert not out.exists()


@has_compiler
@pytest.mark.slow
def test_compiled_dm_embeddings_give_the_plain_loss_and_image_gradient():
    # DSA groups the images by family, so the embedded batches change size from step to step
    from datadistill.methods.dm import Dm
    from datadistill.synthetic import LearnableSet, class_major_labels

    g = torch.Generator().manual_seed(0)
    model = build_model("ConvNet", 1, 28, 3, width=4)
    real_x, real_y = torch.randn(12, 1, 28, 28, generator=g), torch.arange(12) % 3
    start = torch.randn(1, 6, 1, 28, 28, generator=g)
    plain, compiled = Dm(model, ipc=2, augment="dsa", seed=3), Dm(model, ipc=2, augment="dsa", seed=3, compiled=True)
    for step in range(4):
        nets = fresh_nets(model, "default", 1.0, [step], "cpu")
        results = []
        for method in (plain, compiled):
            learned = LearnableSet(start.clone(), class_major_labels(1, 2, 3), None, 3, (0.0,), (1.0,))
            out = method.loss(learned, nets, real_x, real_y, 1)
            out.objective.backward()
            results.append((out.value, learned.images.grad))
        (value, grad), (value_c, grad_c) = results
        assert grad.abs().sum() > 0
        torch.testing.assert_close(value_c, value, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grad_c, grad, rtol=1e-3, atol=1e-6)


@has_compiler
@pytest.mark.slow
@pytest.mark.parametrize("method", ["dm", "gm"])
def test_a_compiled_run_scores_as_the_plain_one(tmp_path, method):
    # the flag reaches the method and the scoring: both runs distil and score alike
    flags = ["distill", "--method", method, "--dataset", "digits", "--arch", "ConvNet", "--width", "4", "--ipc", "1",
             "--epochs", "1", "--test_n_nets", "2", "--scratch_epochs", "5", "--no_progress"]
    metrics = {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        assert main([*flags, "--results_dir", str(out), *(["--compile"] if compiled else [])]) == 0
        metrics[compiled] = json.loads((out / "metrics.json").read_text())
    assert (metrics[False]["config"]["compile"], metrics[True]["config"]["compile"]) == (False, True)
    for split in ("validation", "final_accuracy"):
        assert metrics[True][split]["mean"] == pytest.approx(metrics[False][split]["mean"], abs=0.02)


@has_compiler
def test_prepared_compile_keeps_compiling_past_dynamos_default_of_eight_graphs(monkeypatch):
    # every compiled partial shares one cache: at dynamo's default the ninth shape ran uncompiled
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    prepare_compile(torch.device("cpu"))
    compiled = torch.compile(functools.partial(torch.mul, other=2.0), backend="eager", dynamic=False)
    graphs = counters["stats"]["unique_graphs"]
    for n in range(1, 13):
        assert torch.equal(compiled(torch.ones(n)), torch.full((n,), 2.0))
    assert counters["stats"]["unique_graphs"] == graphs + 12
