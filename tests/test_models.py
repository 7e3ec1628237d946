from functools import partial

import pytest
import torch
from torch.func import functional_call

from datadistill import models, weights
from datadistill.config import RANDOM_INITS
from datadistill.errors import ConfigError


@pytest.mark.parametrize("arch,channels,size", [("LeNet", 1, 28), ("LeNet", 3, 32), ("AlexCifarNet", 3, 32),
                                                 ("ConvNet", 1, 28), ("ConvNet", 3, 32), ("MLP", 1, 8)])
def test_forward_shapes(arch, channels, size):
    model = models.build_model(arch, channels, size, 10)
    params = weights.init_params(model, "xavier", 1.0, seed=0)
    out = functional_call(model, params, (torch.randn(4, channels, size, size),))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("scheme", RANDOM_INITS)  # imagenet_pretrained: test_alexnet
def test_init_schemes(scheme):
    model = models.build_model("LeNet", 1, 28, 10)
    a = weights.init_params(model, scheme, 1.0, seed=5)
    b = weights.init_params(model, scheme, 1.0, seed=5)
    c = weights.init_params(model, scheme, 1.0, seed=6)
    assert set(a) == {n for n, _ in model.named_parameters()}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert all(torch.isfinite(v).all() for v in a.values())
    if scheme != "default":
        assert all(torch.count_nonzero(a[k]) == 0 for k in a if k.endswith("bias"))


def test_xavier_gain_scales_weights():
    model = models.build_model("MLP", 1, 28, 10)
    small = weights.init_params(model, "xavier", 0.5, seed=0)["net.1.weight"].std()
    large = weights.init_params(model, "xavier", 2.0, seed=0)["net.1.weight"].std()
    assert large / small == pytest.approx(4.0, rel=0.05)


def test_unknown_arch_and_size_are_refused():
    with pytest.raises(ConfigError, match="accepted: .*LeNet"):
        models.build_model("ResNet", 1, 28, 10)
    with pytest.raises(ConfigError, match="32-pixel"):
        models.build_model("AlexCifarNet", 3, 28, 10)
    assert models.arch_class("lenet") is models.LeNet


def test_lenet_pools_before_relu_without_changing_outputs_or_gradients():
    """LeNet applies ReLU after max pooling for speed; it must equal the paper's pool(relu(.))."""
    import torch.nn.functional as F
    from torch.func import grad

    model = models.build_model("LeNet", 1, 28, 10).double()
    params = {k: v.double() for k, v in weights.init_params(model, "xavier", 1.0, 0).items()}
    x = torch.randn(16, 1, 28, 28, dtype=torch.float64)
    y = torch.arange(16) % 10

    def textbook(p, x):
        h = F.max_pool2d(F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=2)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, p["conv2.weight"], p["conv2.bias"])), 2).flatten(1)
        h = F.relu(F.linear(h, p["fc1.weight"], p["fc1.bias"]))
        h = F.relu(F.linear(h, p["fc2.weight"], p["fc2.bias"]))
        return F.linear(h, p["fc3.weight"], p["fc3.bias"])

    def loss(forward, p):
        return F.cross_entropy(forward(p, x), y)

    ours = lambda p, x: functional_call(model, p, (x,))  # noqa: E731
    torch.testing.assert_close(ours(params, x), textbook(params, x), rtol=0, atol=1e-12)
    g_ours, g_book = grad(partial(loss, ours))(params), grad(partial(loss, textbook))(params)
    for k in params:
        torch.testing.assert_close(g_ours[k], g_book[k], rtol=0, atol=1e-12)


def test_one_lenet_reads_its_batch_channels_last_with_the_same_loss_and_gradient():
    """A single network's real batch runs channels-last for speed, also with one input channel
    (where ``.contiguous(memory_format=...)`` would change nothing); values must not change."""
    from datadistill import inner

    model = models.build_model("LeNet", 1, 28, 10).double()
    params = {k: v.double() for k, v in weights.init_params(model, "xavier", 1.0, 0).items()}
    x = torch.randn(32, 1, 28, 28, dtype=torch.float64)
    y = torch.arange(32) % 10
    fast = models.in_fast_layout(model, x)
    assert fast.is_contiguous(memory_format=torch.channels_last) and fast.stride(1) == 1
    assert torch.equal(fast, x)
    conv = torch.nn.functional.conv2d(fast, params["conv1.weight"], padding=2)
    assert conv.stride(1) == 1  # the activations follow: 6 channels, channels-last
    assert models.in_fast_layout(models.build_model("MLP", 1, 28, 10), x) is x

    stacked = {k: v.unsqueeze(0) for k, v in params.items()}
    g_fast, v_fast = inner.summed_loss_grad(model, stacked, x, y)
    nchw = {k: v.detach().requires_grad_() for k, v in params.items()}
    v_ref = torch.nn.functional.cross_entropy(functional_call(model, nchw, (x,)), y, reduction="sum")
    g_ref = torch.autograd.grad(v_ref, list(nchw.values()))
    torch.testing.assert_close(v_fast, v_ref.detach(), rtol=0, atol=1e-10)
    for k, g in zip(nchw, g_ref):
        torch.testing.assert_close(g_fast[k][0], g, rtol=0, atol=1e-10)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_convnet_blocks_see_32_16_8_pixels_as_in_the_papers(channels, size):
    # the papers' ConvNet pads a 28-pixel input by 3 in its first conv, so both sizes end in 4 x 4
    model = models.build_model("ConvNet", channels, size, 10, width=8)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
             for m in model.features if isinstance(m, torch.nn.AvgPool2d)]
    model(torch.randn(2, channels, size, size))
    for h in hooks:
        h.remove()
    assert seen == [(32, 32), (16, 16), (8, 8)] and model.classifier.in_features == 8 * 4 * 4
