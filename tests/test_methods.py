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


# -- starting sets ---------------------------------------------------------------------------------
def _starting_set(name: str, model, setup, image_init: str, relabel=Relabel()):
    """The learned set ``name`` starts from: 2 images per class (wang2018: 2 steps of 1)."""
    from datadistill.config import MethodConfig
    from datadistill.methods.dm import Dm
    from datadistill.methods.gm import Gm
    from datadistill.methods.mtt import Mtt

    with Runtime("cpu") as runtime:
        method = {
            "wang2018": lambda: Wang2018(model, SyntheticConfig(steps=2, image_init=image_init), relabel,
                                         "basic" if relabel.attack_class is None else "attack", runtime),
            "dm": lambda: Dm(model, ipc=2, image_init=image_init),
            "gm": lambda: Gm(model, SyntheticConfig(ipc=2, image_init=image_init), MethodConfig()),
            "mtt": lambda: Mtt(model, runtime, ipc=2, image_init=image_init),
        }[name]()
        return method.initial(setup)


@pytest.mark.parametrize("name", ["wang2018", "dm", "gm", "mtt"])
def test_a_herding_start_holds_herdings_picks_of_each_class(blobs, name):
    from datadistill.baselines import herding_sample

    model = models.build_model("MLP", 1, 8, blobs.num_classes, width=4)
    learned = _starting_set(name, model, _setup(model, blobs), "herding")
    picks, _ = herding_sample(blobs.train, 2, blobs.num_classes)  # (classes * 2, C, H, W), class by class
    # one batch (dm, gm, mtt) holds them class by class; wang2018 deals pick i of each class to step i
    want = picks.view(1, 6, 1, 8, 8) if name != "wang2018" else picks.view(3, 2, 1, 8, 8).transpose(0, 1)
    assert torch.equal(learned.images.detach(), want.reshape(learned.images.shape))
    assert learned.labels.flatten().tolist() == ([0, 0, 1, 1, 2, 2] if name != "wang2018" else [0, 1, 2] * 2)
    # the picks are no random draw: another run stream starts from the same set, where "real" does not
    again = _starting_set(name, model, _setup(model, blobs, seed=1), "herding")
    assert torch.equal(again.images, learned.images)
    reals = [_starting_set(name, model, _setup(model, blobs, seed=s), "real").images for s in (0, 1)]
    assert not torch.equal(*reals)


def _started_from(name: str, model, setup, path, ipc: int = 2, factor: int = 1):
    """The learned set ``name`` starts from with ``--init_from path``."""
    from datadistill.config import MethodConfig
    from datadistill.methods.dm import Dm
    from datadistill.methods.gm import Gm
    from datadistill.methods.mtt import Mtt

    with Runtime("cpu") as runtime:
        method = {
            "dm": lambda: Dm(model, ipc=ipc, factor=factor, init_from=str(path)),
            "gm": lambda: Gm(model, SyntheticConfig(ipc=ipc, factor=factor, init_from=str(path)), MethodConfig()),
            "mtt": lambda: Mtt(model, runtime, ipc=ipc, factor=factor, init_from=str(path)),
        }[name]()
        return method.initial(setup)


@pytest.mark.parametrize("factor", [1, 2])
@pytest.mark.parametrize("name", ["dm", "gm", "mtt"])
def test_an_init_from_start_holds_the_files_stored_images(tmp_path, blobs, name, factor):
    model = models.build_model("MLP", 1, 8, blobs.num_classes, width=4)
    # a set another run wrote: its own images, learned labels, in multi-formation with factor 2
    # (distilled.pt then holds the decoded training images and the stored ones)
    made = LearnableSet(noise_images(1, 6, (1, 8, 8), torch.Generator().manual_seed(5)), class_major_labels(1, 2, 3),
                        None, blobs.num_classes, blobs.mean, blobs.std, learn_labels=True, factor=factor)
    path = artifacts.save_distilled(tmp_path / "distilled.pt", made.current())
    learned = _started_from(name, model, _setup(model, blobs), path, factor=factor)
    assert torch.equal(learned.images.detach(), made.images.detach())
    assert learned.labels.flatten().tolist() == [0, 0, 1, 1, 2, 2]  # the method's own labels, not the file's
    # nothing is drawn: another run stream starts from the same images
    again = _started_from(name, model, _setup(model, blobs, seed=1), path, factor=factor)
    assert torch.equal(again.images, learned.images)


@pytest.mark.parametrize("change,message", [
    ({"ipc": 3}, "holds (1, 6) (steps, images) stored images; this run needs one batch of --ipc 3 x 3 classes "
                 "= (1, 9)"),
    ({"factor": 2}, "holds a set of --factor 1, this run has --factor 2; give the same --factor"),
    ({"size": 4}, "holds images of (1, 4, 4) in 3 classes; this dataset has (1, 8, 8) in 3"),
    ({"reorder": True}, "is not ordered class by class with 2 stored images each"),
    ({"mean": (0.5,)}, "was normalised with mean [0.5], std [1.0]; this dataset's are [0.0], [1.0]"),
])
def test_an_init_from_file_that_does_not_fit_is_refused_in_one_line(tmp_path, blobs, change, message):
    from datadistill.synthetic import SyntheticSet

    size = change.get("size", 8)
    labels = class_major_labels(1, 2, 3)
    found = SyntheticSet(torch.randn(1, 6, 1, size, size), labels.flip(-1) if "reorder" in change else labels,
                         torch.empty(0), change.get("mean", blobs.mean), blobs.std, blobs.num_classes)
    path = artifacts.save_distilled(tmp_path / "distilled.pt", found)
    model = models.build_model("MLP", 1, 8, blobs.num_classes, width=4)
    with pytest.raises(ConfigError) as e:
        _started_from("dm", model, _setup(model, blobs), path, ipc=change.get("ipc", 2), factor=change.get("factor", 1))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_herding_attack_starts_target_slots_from_the_attacked_class(blobs):
    from datadistill.baselines import herding_sample

    model = models.build_model("MLP", 1, 8, blobs.num_classes, width=4)
    learned = _starting_set("wang2018", model, _setup(model, blobs), "herding", Relabel(attack_class=0, target_class=1))
    class_0 = herding_sample(blobs.train, 4, blobs.num_classes)[0][:4]  # herding's first four picks of class 0
    assert torch.equal(learned.images[:, 0].detach(), class_0[:2])  # each step's slot of class 0: picks 1, 2
    assert torch.equal(learned.images[:, 1].detach(), class_0[2:])  # and of class 1, attacked: picks 3, 4
    assert torch.equal(learned.images[:, 2].detach(), herding_sample(blobs.train, 2, blobs.num_classes)[0][4:])
