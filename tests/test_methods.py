"""The method interface: a new method runs through the unchanged outer loop; Wang2018's
hypergradient is right; unknown names are refused."""
import pytest
import torch

from datadistill import artifacts, checkpoint, models
from datadistill.config import OuterConfig, SyntheticConfig
from datadistill.distill import Callback, Distillation
from datadistill.errors import ConfigError
from datadistill.methods import METHODS, Method, MethodLoss, Setup, method_class, register
from datadistill.methods.wang2018 import Relabel, Wang2018
from datadistill.nets import FreshNets, fresh_nets
from datadistill.runtime import Runtime
from datadistill.synthetic import LearnableSet, class_major_labels, noise_images


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _setup(model, dataset, seed=0):
    return Setup(model, dataset.train, dataset.val, dataset.num_classes, dataset.mean, dataset.std,
                 torch.device("cpu"), torch.Generator().manual_seed(seed), seed)


# -- a new method, registered by a test --------------------------------------------------------------
@pytest.fixture
def toy():
    """A method the package does not know: one synthetic image per class, pulled towards the
    mean of that class's real images in each batch (loss: the squared distance). No networks are
    read and no step sizes are learned."""
    assert "toy" not in METHODS

    @register("toy")
    class ClassMeans(Method):
        def initial(self, setup: Setup) -> LearnableSet:
            shape = tuple(setup.train.x.shape[1:])
            images = noise_images(1, setup.num_classes, shape, setup.generator)
            labels = class_major_labels(1, 1, setup.num_classes)
            return LearnableSet(images, labels, None, setup.num_classes, setup.mean, setup.std)

        def loss(self, learned, nets, real_x, real_y, total_nets):
            images = learned.images[0]  # (classes, C, H, W)
            present = [c for c in range(images.shape[0]) if (real_y == c).any()]
            means = torch.stack([real_x[real_y == c].mean(0) for c in present])
            value = ((images[present] - means) ** 2).sum()
            return MethodLoss(value, value.detach())

    try:
        yield ClassMeans
    finally:
        METHODS.pop("toy")


def test_a_registered_method_runs_through_the_unchanged_loop(blobs, toy, tmp_path):
    assert method_class("toy") is toy and toy.name == "toy"
    model = models.build_model("MLP", 1, 8, 3)
    means = torch.stack([blobs.train.x[blobs.train.y == c].mean(0) for c in range(3)])

    def build(epochs=12):
        setup = _setup(model, blobs)
        method = method_class("toy")()
        learned = method.initial(setup)
        assert learned.raw_lrs is None and learned.tensors() == [learned.images]
        sampled = []

        class Nets(FreshNets):  # the loop draws networks every step; this method ignores them
            def sample(self, generator):
                sampled.append(super().sample(generator))
                return sampled[-1]

        run = Distillation(method, learned, Nets(model, "xavier", 1.0, 1, "cpu"),
                           OuterConfig(epochs=epochs, lr=0.2, batch_size=40), blobs.train, setup.generator)
        return run, sampled

    run, sampled = build()
    start = run.current().images[0]
    assert len(run.optimizer.param_groups) == 1  # images only: no step sizes
    synthetic = run.run()
    assert run.iteration == 12 * 3 and len(sampled) == 36
    assert not torch.equal(sampled[0]["net.1.weight"], sampled[1]["net.1.weight"])
    assert synthetic.images.shape == (1, 3, 1, 8, 8) and synthetic.lrs.numel() == 0
    assert synthetic.labels.tolist() == [[0, 1, 2]]
    losses = [h["loss"] for h in run.history.losses]
    assert losses[-1] < 0.1 * losses[0]
    before = (start - means).flatten(1).norm(dim=1)
    after = (synthetic.images[0] - means).flatten(1).norm(dim=1)
    assert (after < 0.15 * before).all(), (before, after)
    # every image nearest its own class's mean
    assert torch.cdist(synthetic.images[0].flatten(1), means.flatten(1)).argmin(1).tolist() == [0, 1, 2]

    # and its runs checkpoint and resume like any other
    class StopAfterTwo(Callback):
        def on_epoch_end(self, run):
            if run.epoch == 2:
                artifacts.save_checkpoint(tmp_path / "ckpt.pt", checkpoint.state_dict(run, 1, None))
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build()[0].run([StopAfterTwo()])
    resumed, _ = build()
    checkpoint.load_state_dict(resumed, artifacts.load_checkpoint(tmp_path / "ckpt.pt"), 1)
    assert (resumed.epoch, resumed.iteration) == (2, 6)
    assert torch.equal(resumed.run().images, synthetic.images)


# -- Wang2018's hypergradient ------------------------------------------------------------------------
@pytest.mark.parametrize("n_nets, step_size_param", [(1, "exp"), (2, "exp"), (2, "softplus")])
def test_wang2018_hypergradient_matches_finite_differences(f64, blobs, n_nets, step_size_param):
    """The gradient of the objective ``Wang2018.loss`` hands the loop, w.r.t. the images and the
    raw step sizes, is the derivative of the loss value it reports (central differences)."""
    model = models.build_model("MLP", 1, 8, 3)
    with Runtime("cpu") as runtime:
        config = SyntheticConfig(steps=2, epochs=2, step_size_param=step_size_param)
        method = Wang2018(model, config, Relabel(), "basic", runtime)
        learned = method.initial(_setup(model, blobs))
        assert learned.images.dtype == learned.raw_lrs.dtype == torch.float64
        # the set starts at the configured step size whichever way it is parameterised
        torch.testing.assert_close(learned.lrs(), torch.full_like(learned.lrs(), config.init_lr))
        nets = fresh_nets(model, "xavier", 1.0, list(range(n_nets)), "cpu")
        x, y = blobs.train.x[:30].double(), blobs.train.y[:30]
        out = method.loss(learned, nets, x, y, n_nets)
        g_images, g_raw_lrs = torch.autograd.grad(out.objective, (learned.images, learned.raw_lrs))
        assert g_images.abs().sum() > 0 and g_raw_lrs.abs().sum() > 0

        def value(d_images, d_raw_lrs):
            saved = learned.images.detach().clone(), learned.raw_lrs.detach().clone()
            with torch.no_grad():
                learned.images.add_(d_images)
                learned.raw_lrs.add_(d_raw_lrs)
            v = method.loss(learned, nets, x, y, n_nets).value
            with torch.no_grad():
                learned.images.copy_(saved[0])
                learned.raw_lrs.copy_(saved[1])
            return v

        torch.testing.assert_close(value(0, 0), out.value, rtol=0, atol=0)
        eps = 1e-6
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):  # directional derivatives along random directions
            di = torch.randn(learned.images.shape, generator=gen)
            dl = torch.randn(learned.raw_lrs.shape, generator=gen)
            fd = (value(eps * di, eps * dl) - value(-eps * di, -eps * dl)) / (2 * eps)
            torch.testing.assert_close((g_images * di).sum() + (g_raw_lrs * dl).sum(), fd, rtol=1e-6, atol=1e-9)
        for t in range(learned.raw_lrs.shape[0]):  # and each step size on its own
            e = torch.zeros_like(learned.raw_lrs)
            e[t] = eps
            fd = (value(0, e) - value(0, -e)) / (2 * eps)
            torch.testing.assert_close(g_raw_lrs[t], fd, rtol=1e-6, atol=1e-9)


# -- the registry -------------------------------------------------------------------------------------
def test_an_unknown_method_is_refused_naming_the_accepted_ones():
    assert method_class("wang2018") is Wang2018
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; accepted: .*wang2018") as e:
        method_class("nope")
    assert "\n" not in str(e.value)
    accepted = str(e.value).split("accepted: ")[1].split(", ")
    assert accepted == sorted(METHODS)
