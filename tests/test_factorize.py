"""Multi-formation (factorize.py, --factor): the tiles' order and labels, decode's gradient, the
methods' losses on a factored set against the same losses on its decoded images, the file a
factored run writes (replayed with plain PyTorch), and the refusals."""
import pytest
import torch
import torch.nn.functional as F

from datadistill import artifacts, models, nets, weights
from datadistill.commands import main
from datadistill.config import build_config
from datadistill.data import Split
from datadistill.errors import ConfigError
from datadistill.factorize import check_factor, decode, decode_labels, encode
from datadistill.methods import Setup
from datadistill.methods.dm import Dm
from datadistill.methods.gm import Gm
from datadistill.methods.mtt import Mtt
from datadistill.runtime import Runtime
from datadistill.synthetic import LearnableSet, class_major_labels


def _tiled(values: torch.Tensor, factor: int, size: int) -> torch.Tensor:
    """Stored images (N, 1, size, size) whose tile (i, j) is the constant values[n, i, j]."""
    tile = size // factor
    return values.repeat_interleave(tile, 1).repeat_interleave(tile, 2).unsqueeze(1)


def test_decode_gives_each_tile_as_one_image_in_row_major_order():
    values = torch.arange(2 * 2 * 2, dtype=torch.float32).view(2, 2, 2)  # 2 images, 2 x 2 tiles
    out = decode(_tiled(values, 2, 8), 2)
    assert out.shape == (8, 1, 8, 8)
    # a constant tile upsamples to a constant image: image n's tile (i, j) is decoded image 4n + 2i + j
    torch.testing.assert_close(out, values.reshape(8, 1, 1, 1).expand(8, 1, 8, 8))


def test_encode_inverts_decode_on_constant_tiles_and_keeps_leading_dims():
    values = torch.randn(3, 5, 3, 3)  # (steps, images, tiles, tiles)
    stored = torch.stack([_tiled(v, 3, 12) for v in values])  # (3, 5, 1, 12, 12)
    decoded = decode(stored, 3)
    assert decoded.shape == (3, 45, 1, 12, 12)
    torch.testing.assert_close(encode(decoded, 3), stored)
    assert encode(stored, 1) is stored and decode(stored, 1) is stored


def test_decode_labels_repeat_each_stored_label_per_tile():
    labels = class_major_labels(1, 2, 3)  # [[0, 0, 1, 1, 2, 2]]
    assert decode_labels(labels, 2).tolist() == [[0] * 8 + [1] * 8 + [2] * 8]
    soft = torch.rand(1, 6, 3)
    assert torch.equal(decode_labels(soft, 2)[0, 4:8], soft[0, 1].expand(4, 3))


def test_decode_gradient_matches_finite_differences():
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: decode(t, 2), (x,))
    assert torch.autograd.gradcheck(lambda t: encode(t, 3), (torch.randn(9, 2, 6, 6, dtype=torch.float64,
                                                                       requires_grad=True),))


@pytest.mark.parametrize("factor,size", [(0, 8), (3, 8), (3, 28)])
def test_a_factor_that_does_not_tile_the_images_is_refused(factor, size):
    with pytest.raises(ConfigError, match="--factor"):
        check_factor(factor, size, size)


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(60, 1, 8, 8, generator=g), torch.arange(3).repeat(20)
    model = models.build_model("MLP", 1, 8, 3, width=5)
    return Setup(model, Split(x, y), None, 3, (0.0,), (1.0,), torch.device("cpu"),
                 torch.Generator().manual_seed(seed + 1), 0), x, y


def test_real_start_encodes_factor_squared_real_images_of_its_class_into_each_stored_image():
    setup, x, y = _setup()
    learned = Dm(setup.model, ipc=2, image_init="real", factor=2).initial(setup)
    assert learned.images.shape == (1, 6, 1, 8, 8) and learned.labels.tolist() == [[0, 0, 1, 1, 2, 2]]
    assert learned.decoded().shape == (1, 24, 1, 8, 8)
    assert learned.decoded_labels()[0].tolist() == [0] * 8 + [1] * 8 + [2] * 8
    # tile (i, j) of each stored image is a real image of its class, area-downsampled to 4 x 4
    small = F.interpolate(x, size=(4, 4), mode="area").flatten(1)
    for img, label in zip(learned.images[0].detach(), learned.labels[0]):
        tiles = img.view(1, 2, 4, 2, 4).permute(1, 3, 0, 2, 4).reshape(4, 16)
        found = [((small - t).abs().amax(1) < 1e-6).nonzero().squeeze(1).tolist() for t in tiles]
        assert all(len(f) == 1 and y[f[0]].item() == label.item() for f in found)
        assert len({f[0] for f in found}) == 4  # four distinct images


def test_herding_start_encodes_herdings_picks_of_its_class_in_the_order_herding_made_them():
    from datadistill.baselines import herding_sample

    setup, x, y = _setup()
    learned = Dm(setup.model, ipc=2, image_init="herding", factor=2).initial(setup)
    picks, _ = herding_sample(setup.train, 8, 3)  # 2 stored images x 4 tiles per class, class by class
    small = F.interpolate(picks, size=(4, 4), mode="area")
    tiles = learned.images[0].detach().view(6, 1, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(24, 1, 4, 4)
    assert torch.allclose(tiles, small, atol=1e-6)


def _problem(method: str, factor: int, stored: torch.Tensor, labels: torch.Tensor, learn_labels=False):
    setup, x, y = _setup()
    model = setup.model.double()
    cfg = build_config({"method": method, "synthetic.ipc": 2, "synthetic.factor": factor,
                        "synthetic.learn_labels": learn_labels, "methods.augment": "none"})
    m = (Dm(model, ipc=2, image_init="real", factor=factor, learn_labels=learn_labels) if method == "dm"
         else Gm(model, cfg.synthetic, cfg.methods, seed=5))
    learned = LearnableSet(stored, labels, None, 3, (0.0,), (1.0,), learn_labels=learn_labels, factor=factor)
    stacked = {k: v.double() for k, v in nets.fresh_nets(model, "xavier", 1.0, [3, 4], "cpu").items()}
    return m, learned, stacked, x[:30].double(), y[:30]


@pytest.mark.parametrize("method", ["dm", "gm"])
@pytest.mark.parametrize("learn_labels", [False, True])
def test_loss_and_gradient_on_a_factored_set_equal_those_through_its_decoded_images(method, learn_labels):
    """The method reads a factored set as the plain set of its decoded images: the same loss, and
    the stored images' gradient is decode's vector-Jacobian product of the decoded images' one."""
    g = torch.Generator().manual_seed(7)
    stored = torch.randn(1, 6, 1, 8, 8, generator=g, dtype=torch.float64)
    labels = class_major_labels(1, 2, 3)
    m, factored, stacked, rx, ry = _problem(method, 2, stored, labels, learn_labels)
    value = m.loss(factored, stacked, rx, ry, 2).objective

    plain_images = decode(stored, 2).detach()
    m2, plain, _, _, _ = _problem(method, 1, plain_images, decode_labels(labels, 2), learn_labels)
    if learn_labels:  # the plain set's labels: the factored set's, repeated per tile
        plain.label_logits = decode_labels(factored.label_logits.detach(), 2).requires_grad_()
    expected = m2.loss(plain, stacked, rx, ry, 2).objective
    torch.testing.assert_close(value, expected)

    grad, = torch.autograd.grad(value, factored.images)
    plain_grad, = torch.autograd.grad(expected, plain.images)
    _, vjp = torch.func.vjp(lambda t: decode(t, 2), stored)
    torch.testing.assert_close(grad, vjp(plain_grad)[0])


def test_mtt_unrolls_a_factored_set_as_the_plain_set_of_its_decoded_images():
    model = models.build_model("MLP", 1, 8, 3, width=4).double()
    g = torch.Generator().manual_seed(0)
    start = {k: v.double().unsqueeze(0) for k, v in weights.init_params(model, "xavier", 1.0, 1).items()}
    target = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in start.items()}
    stored = torch.randn(1, 3, 1, 8, 8, generator=g, dtype=torch.float64)
    labels, lr = class_major_labels(1, 1, 3), torch.tensor([0.05], dtype=torch.float64)
    factored = LearnableSet(stored, labels, lr, 3, (0.0,), (1.0,), factor=2)
    plain = LearnableSet(decode(stored, 2), decode_labels(labels, 2), lr, 3, (0.0,), (1.0,))
    segment = {"start": start, "target": target}
    value = Mtt(model, Runtime("cpu"), ipc=1, syn_steps=3, factor=2).loss(factored, segment, None, None, 1).objective
    expected = Mtt(model, Runtime("cpu"), ipc=4, syn_steps=3).loss(plain, segment, None, None, 1).objective
    torch.testing.assert_close(value, expected)
    grad, = torch.autograd.grad(value, factored.images)
    plain_grad, = torch.autograd.grad(expected, plain.images)
    torch.testing.assert_close(grad, torch.func.vjp(lambda t: decode(t, 2), stored)[1](plain_grad)[0])


def test_factored_run_writes_its_training_images_and_replays_with_plain_pytorch(tmp_path):
    from datadistill.jobs import distill

    config = build_config({"method": "dm", "data.dataset": "digits", "model.arch": "ConvNet", "model.width": 8,
                           "synthetic.ipc": 1, "synthetic.factor": 2, "outer.epochs": 2, "outer.lr": 0.1,
                           "nets.test_n_nets": 2, "methods.augment": "none", "data.val_size": 0,
                           "evaluation.scratch_epochs": 5, "results_dir": str(tmp_path), "seed": 0})
    result = distill(config)
    assert result.synthetic.images.shape == (1, 40, 1, 32, 32)

    raw = torch.load(tmp_path / artifacts.DISTILLED)  # no datadistill code from here on
    assert raw["images"].shape == (1, 40, 1, 32, 32) and raw["factor"] == 2
    assert raw["labels"].tolist() == [[c for c in range(10) for _ in range(4)]]
    assert raw["stored_images"].shape == (1, 10, 1, 32, 32)  # the budget: one image per class
    torch.testing.assert_close(decode(raw["stored_images"], 2), raw["images"])
    assert (tmp_path / "images" / "stored.png").exists() and (tmp_path / "images" / "step000.png").exists()
    torch.testing.assert_close(raw["images"], result.synthetic.images)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    first = None
    for _ in range(20):
        loss = F.cross_entropy(net(raw["images"][0]), raw["labels"][0])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


@pytest.mark.parametrize("argv,message", [
    (["distill", "--factor", "2"], "--factor"),  # wang2018, the default method
    (["distill", "--method", "dm", "--factor", "0"], "--factor"),
])
def test_cli_refuses_factor_where_it_does_not_apply(argv, message, tmp_path, capsys):
    assert main(argv + ["--dataset", "digits", "--results_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "r" / artifacts.DISTILLED).exists()
