"""AlexNet in torchvision's layout and ``--init imagenet_pretrained``, with a fake weights file
(random tensors of torchvision's shapes): nothing here downloads."""
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.func import functional_call

from datadistill import models, pretrained
from datadistill import weights as netweights
from datadistill.commands import main
from datadistill.config import ModelConfig
from datadistill.errors import ArtifactError, ConfigError
from datadistill.inner import batched_logits, batched_unrolled_loss
from datadistill.nets import fresh_nets

SIZE = 63  # the smallest input AlexNet takes: the cheapest forward
WEIGHTS_NAME = "alexnet-owt-7be5be79.pth"  # torchvision's file name for IMAGENET1K_V1


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """Random weights in torchvision's ImageNet AlexNet layout (1000-class head), as torch.save'd."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / WEIGHTS_NAME
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def weights(weights_file) -> dict:
    return torch.load(weights_file, weights_only=True)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch) -> Path:
    """A torch hub cache of our own (torch.hub.get_dir() follows $TORCH_HOME), empty at first."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_NAME


def test_layout_is_torchvisions_with_a_new_head():
    ours = {n: p.shape for n, p in models.build_model("AlexNet", 3, 224, 7).named_parameters()}
    theirs = {n: p.shape for n, p in torchvision.models.alexnet().named_parameters()}
    assert list(ours) == list(theirs)
    assert {n for n in ours if ours[n] != theirs[n]} == {"classifier.6.weight", "classifier.6.bias"}
    assert ours["classifier.6.weight"] == (7, 4096) and ours["classifier.6.bias"] == (7,)
    assert list(models.build_model("AlexNet", 1, 224, 7).named_parameters())[0][1].shape == (64, 1, 11, 11)


def test_sizes_from_63_pixels_up():
    assert models.AlexNet.default_size == 224 and 63 in models.AlexNet.supported_sizes
    for size in (SIZE, 70):
        model = models.build_model("AlexNet", 3, size, 5)
        params = netweights.init_params(model, "xavier", 1.0, seed=0)
        assert functional_call(model, params, (torch.randn(2, 3, size, size),)).shape == (2, 5)
    with pytest.raises(ConfigError, match="AlexNet takes images of at least 63 pixels, this dataset has 62"):
        models.build_model("AlexNet", 3, 62, 5)


def test_functional_forward_is_deterministic_and_vmaps():
    model = models.build_model("AlexNet", 3, SIZE, 4)
    assert model.training  # how the library leaves templates; dropout would be live here
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    nets = [netweights.init_params(model, "kaiming", 0.0, seed=s) for s in (0, 1)]
    x = torch.randn(3, 3, SIZE, SIZE)
    loop = torch.stack([functional_call(model, p, (x,)) for p in nets])
    assert torch.equal(loop[0], functional_call(model, nets[0], (x,)))
    vmapped = batched_logits(model, netweights.stack_params(nets), x)
    torch.testing.assert_close(vmapped, loop, rtol=1e-4, atol=1e-5)


def test_hypergradient_flows_through_an_unrolled_step():
    model = models.build_model("AlexNet", 3, SIZE, 3)
    stacked = netweights.stack_params([netweights.init_params(model, "xavier", 1.0, seed=0)])
    images = torch.randn(1, 3, 3, SIZE, SIZE, requires_grad=True)  # (steps, N, C, H, W)
    lrs = torch.full((1,), 0.01, requires_grad=True)
    loss = batched_unrolled_loss(model, stacked, images, torch.arange(3)[None], lrs,
                                 torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 0]))
    loss.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert torch.isfinite(lrs.grad).all() and lrs.grad.abs().item() > 0


def test_pretrained_weights_load_from_the_given_file(weights_file, weights):
    model = models.build_model("AlexNet", 3, SIZE, 7, pretrained_weights=str(weights_file))
    a = netweights.init_params(model, "imagenet_pretrained", 1.0, seed=0)
    again = netweights.init_params(model, "imagenet_pretrained", 1.0, seed=0)
    b = netweights.init_params(model, "imagenet_pretrained", 1.0, seed=1)
    assert list(a) == [n for n, _ in model.named_parameters()]
    for name in a:
        if name.startswith("classifier.6."):
            continue
        assert torch.equal(a[name], weights[name]) and torch.equal(b[name], weights[name]), name
    assert a["classifier.6.weight"].shape == (7, 4096) and torch.count_nonzero(a["classifier.6.bias"]) == 0
    assert torch.equal(a["classifier.6.weight"], again["classifier.6.weight"])
    assert not torch.equal(a["classifier.6.weight"], b["classifier.6.weight"])
    assert a["classifier.6.weight"].std().item() == pytest.approx((2 / (4096 + 7)) ** 0.5, rel=0.05)  # xavier
    a["features.0.weight"].add_(1.0)  # each network owns its copy; the file's state stays as read
    assert torch.equal(netweights.init_params(model, "imagenet_pretrained", 1.0, seed=2)["features.0.weight"],
                       weights["features.0.weight"])
    # nets.fresh_nets, unchanged, stacks them: the path travels on the template
    stacked = fresh_nets(model, "imagenet_pretrained", 1.0, [0, 1, 2], "cpu")
    assert stacked["classifier.1.weight"].shape == (3, 4096, 9216)
    assert torch.equal(stacked["classifier.4.weight"][2], weights["classifier.4.weight"])
    logits = batched_logits(model, stacked, torch.rand(2, 3, SIZE, SIZE))
    assert logits.shape == (3, 2, 7) and torch.isfinite(logits).all()


def test_the_hub_cache_is_used_when_no_path_is_given(weights_file, weights, empty_hub):
    assert pretrained.hub_cache_path() == empty_hub
    empty_hub.parent.mkdir(parents=True)
    os.symlink(weights_file, empty_hub)
    params = netweights.init_params(models.build_model("AlexNet", 3, SIZE, 2), "imagenet_pretrained", 1.0, seed=0)
    assert torch.equal(params["features.3.weight"], weights["features.3.weight"])


def test_missing_weights_name_the_file_to_provide(empty_hub):
    model = models.build_model("AlexNet", 3, SIZE, 2)
    with pytest.raises(ConfigError) as err:
        netweights.init_params(model, "imagenet_pretrained", 1.0, seed=0)
    message = str(err.value)
    assert f"at {empty_hub}," in message and "--pretrained_weights PATH" in message and "\n" not in message
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message
    with pytest.raises(ConfigError, match="--pretrained_weights .*nowhere.pth is not a file"):
        models.build_model("AlexNet", 3, SIZE, 2, pretrained_weights=str(empty_hub.parent / "nowhere.pth"))


def test_a_file_of_another_network_is_refused(tmp_path):
    lenet = tmp_path / "lenet.pth"
    torch.save(models.build_model("LeNet", 1, 28, 10).state_dict(), lenet)
    model = models.build_model("AlexNet", 3, SIZE, 2, pretrained_weights=str(lenet))
    with pytest.raises(ArtifactError, match="lenet.pth does not fit AlexNet: features.0.weight is missing"):
        netweights.init_params(model, "imagenet_pretrained", 1.0, seed=0)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    model = models.build_model("AlexNet", 3, SIZE, 2, pretrained_weights=str(garbage))
    with pytest.raises(ArtifactError, match="cannot read pretrained weights") as err:
        netweights.init_params(model, "imagenet_pretrained", 1.0, seed=0)
    assert "\n" not in str(err.value)


def test_imagenet_pretrained_is_only_for_rgb_alexnet(weights_file):
    with pytest.raises(ConfigError, match="--init imagenet_pretrained needs --arch AlexNet; LeNet has no"):
        netweights.init_params(models.build_model("LeNet", 1, 28, 10), "imagenet_pretrained", 1.0, seed=0)
    with pytest.raises(ConfigError, match="--pretrained_weights is for --arch AlexNet, not LeNet"):
        models.build_model("LeNet", 1, 28, 10, pretrained_weights=str(weights_file))
    gray = models.build_model("AlexNet", 1, SIZE, 10, pretrained_weights=str(weights_file))
    with pytest.raises(ConfigError, match="needs RGB images .* 1 channel"):
        netweights.init_params(gray, "imagenet_pretrained", 1.0, seed=0)
    with pytest.raises(ConfigError, match="needs --arch AlexNet; LeNet has no ImageNet weights"):
        ModelConfig("LeNet", "imagenet_pretrained")
    with pytest.raises(ConfigError, match="only read with --init imagenet_pretrained, not --init xavier"):
        ModelConfig("AlexNet", "xavier", pretrained_weights=str(weights_file))
    config = ModelConfig("alexnet", "imagenet_pretrained", 1.0, str(weights_file))
    assert config.pretrained_weights == str(weights_file)
    from datadistill.jobs.evaluate import EvaluateConfig  # evaluate's init defaults to the file's: None here

    with pytest.raises(ConfigError, match=r"only read with --init imagenet_pretrained, add it$"):
        EvaluateConfig("set.pt", pretrained_weights=str(weights_file))


@pytest.mark.parametrize("flags,message", [
    (["--arch", "LeNet", "--init", "imagenet_pretrained"], "--init imagenet_pretrained needs --arch AlexNet"),
    (["--arch", "AlexNet", "--pretrained_weights", "w.pth"], "only read with --init imagenet_pretrained"),
    # digits are grey: said before the missing weights file, which would not help
    (["--arch", "AlexNet", "--init", "imagenet_pretrained", "--pretrained_weights", "missing.pth"],
     "--init imagenet_pretrained needs RGB images (ImageNet's), this dataset has 1 channel(s)"),
])
def test_cli_refuses_in_one_line(tmp_path, capsys, flags, message):
    out = tmp_path / "r"
    # the original's flat form and the subcommand refuse alike
    assert main(["--dataset", "digits", "--no_progress", "--results_dir", str(out), *flags]) == 2
    assert main(["distill", "--dataset", "digits", "--no_progress", "--results_dir", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count(message) == 2 and err.count("\n") == 2
    assert all(line.startswith("datadistill: error: ") for line in err.splitlines())
    assert not out.exists()


@pytest.mark.slow  # about 20 s: one unrolled step of a 224-pixel AlexNet, and its hypergradient
def test_cli_distills_with_pretrained_alexnet(tmp_path, weights_file, weights, capsys):
    from test_voc_cub import write_cub

    write_cub(tmp_path / "data", [0, 1, 2] * 2, [1, 0] * 3, size=40)
    out = tmp_path / "r"
    assert main(["distill", "--dataset", "CUB200", "--dataset_root", str(tmp_path / "data"), "--arch", "AlexNet",
                 "--init", "imagenet_pretrained", "--pretrained_weights", str(weights_file),
                 "--train_nets_type", "known_init", "--test_nets_type", "same_as_train",
                 "--distill_steps", "1", "--distill_epochs", "1", "--epochs", "1",
                 "--no_progress", "--results_dir", str(out)]) == 0, capsys.readouterr().err
    d = torch.load(out / "distilled.pt", weights_only=True)
    assert d["images"].shape == (1, 3, 3, 224, 224)
    assert (d["arch"], d["init"], d["config"]["model"]["pretrained_weights"]) == (
        "AlexNet", "imagenet_pretrained", str(weights_file))
    # the fixed network the set was distilled for is the file's, with a new 3-class head
    assert torch.equal(d["init_params"]["features.0.weight"][0], weights["features.0.weight"])
    assert torch.equal(d["init_params"]["classifier.4.weight"][0], weights["classifier.4.weight"])
    assert d["init_params"]["classifier.6.weight"].shape == (1, 3, 4096)
