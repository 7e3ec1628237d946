"""Gradient matching (--method gm): the distance, its gradient w.r.t. the images, an end-to-end run
that beats random real images, and an exact resume of the method's state."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from datadistill import models
from datadistill.config import MethodConfig, SyntheticConfig, build_config
from datadistill.data import class_balanced_sample
from datadistill.dsa import dsa
from datadistill.evaluate import evaluate_from_scratch
from datadistill.jobs import distill
from datadistill.jobs.common import load_for, model_for
from datadistill.methods import Setup, method_class
from datadistill.methods.gm import Gm, layer_distance, match_distance
from datadistill.nets import eval_seeds, fresh_nets
from datadistill.synthetic import LearnableSet, SyntheticSet, class_major_labels


def _setup(model, dataset, seed=0):
    return Setup(model, dataset.train, dataset.val, dataset.num_classes, dataset.mean, dataset.std,
                 torch.device("cpu"), torch.Generator().manual_seed(seed), seed)


def _direct_distance(real, syn):
    """DC's 'ours' distance written out row by row, in float64."""
    total = 0.0
    for r, s in zip(real, syn):
        if r.dim() == 1:
            continue
        r, s = r.double().reshape(r.shape[0], -1), s.double().reshape(s.shape[0], -1)
        for i in range(r.shape[0]):
            total += 1 - float(r[i] @ s[i]) / (float(r[i].norm()) * float(s[i].norm()) + 1e-6)
    return total


def _class_distance(model, weights, real, syn, c):
    """DC's distance of class c's mean-loss gradients on ``real`` and ``syn`` at ``weights``, directly."""
    grads = []
    for x in (real, syn):
        p = {k: v.clone().requires_grad_() for k, v in weights.items()}
        loss = F.cross_entropy(functional_call(model, p, (x,)), torch.full((len(x),), c))
        grads.append(torch.autograd.grad(loss, list(p.values())))
    return _direct_distance(*grads)


def test_distance_is_dc_layerwise_cosine_distance():
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 3, 3), (4,), (5, 6), (5,), (2, 3, 4)]
    real = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    syn = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    assert float(match_distance(real, syn)) == pytest.approx(_direct_distance(real, syn), rel=1e-12)
    # identical gradients match (up to the epsilon), opposite ones are 2 per output node
    assert float(match_distance(real, real)) == pytest.approx(0, abs=1e-5)
    assert float(layer_distance(real[2], -real[2])) == pytest.approx(2 * 5, abs=1e-5)
    assert float(layer_distance(real[1], syn[1])) == 0  # biases and norm scales count 0


def _tiny_method(blobs, augment="none", outer_loop=3, inner_steps=2, ipc=2, seed=0, dtype=torch.float64):
    """An MLP on 8x8 blobs, in float64; its set, its method and a source of fresh networks."""
    model = models.build_model("MLP", 1, 8, 3, width=6)
    method = Gm(model, SyntheticConfig(ipc=ipc, image_init="real"),
                MethodConfig(augment=augment, outer_loop=outer_loop, inner_steps=inner_steps, inner_lr=0.1))
    learned = method.initial(_setup(model, blobs, seed))
    learned.images = learned.images.detach().to(dtype).requires_grad_()
    nets = lambda s: {k: v.to(dtype) for k, v in fresh_nets(model, "xavier", 1.0, [s], "cpu").items()}  # noqa: E731
    return model, method, learned, nets


@pytest.mark.parametrize("augment", ["none", "dsa"])
def test_loss_is_the_matching_distance_and_its_image_gradient_is_right(blobs, augment):
    model, method, learned, nets = _tiny_method(blobs, augment)
    real_x, real_y = blobs.train.x.double(), blobs.train.y
    # the first call adopts the fresh network: the loss equals the distance computed here directly
    state = copy.deepcopy(method.state_dict())
    out = method.loss(learned, nets(1), real_x, real_y, total_nets=2)
    method.load_state_dict(state)
    method.advance(learned, nets(1))
    w = {k: v[0] for k, v in nets(1).items()}
    seeds = torch.Generator()
    seeds.set_state(state["generator"])
    expected = 0.0
    for c in range(3):
        seed = int(torch.randint(2**62, (1,), generator=seeds))
        xr, xs = real_x[real_y == c], learned.images[0][learned.labels[0] == c].detach()
        if augment == "dsa":
            xr, xs = dsa(xr, torch.Generator().manual_seed(seed)), dsa(xs, torch.Generator().manual_seed(seed))
        expected += _class_distance(model, w, xr, xs, c)
    assert float(out.value) == pytest.approx(expected / 2, rel=1e-10)

    # d loss / d images against finite differences, at a call that adopts a network and at one
    # that trained the kept network first (the training reads the images detached: a fixed
    # network for this call, so the state after advance() is restored before each evaluation)
    for calls_before in (0, 1):
        _, method, learned, nets = _tiny_method(blobs, augment)
        for i in range(calls_before):
            method.loss(learned, nets(10 + i), real_x, real_y, 1)
        method.advance(learned, nets(20))
        after = copy.deepcopy(method.state_dict())

        def f(images):
            method.load_state_dict(after)
            learned.images = images
            return method.matching(learned, real_x, real_y)

        images = learned.images.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(f, (images,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_uneven_classes_a_missing_class_and_the_cap_give_the_class_by_class_loss(blobs):
    model = models.build_model("MLP", 1, 8, 3, width=6)
    method = Gm(model, SyntheticConfig(ipc=2, image_init="real"),
                MethodConfig(augment="dsa", outer_loop=3, inner_steps=2, inner_lr=0.1, embed_batch=9))
    learned = method.initial(_setup(model, blobs))
    learned.images = learned.images.double()
    y = blobs.train.y
    keep = torch.cat([(y == 0).nonzero().squeeze(1)[:4], (y == 2).nonzero().squeeze(1)[:13]]).sort().values
    real_x, real_y = blobs.train.x.double()[keep], y[keep]  # class 0: 4 images, 1: none, 2: 13 (9 read)
    nets = {k: v.double() for k, v in fresh_nets(model, "xavier", 1.0, [3, 4], "cpu").items()}
    state = copy.deepcopy(method.state_dict())
    out = method.loss(learned, nets, real_x, real_y, total_nets=2)
    seeds = torch.Generator()
    seeds.set_state(state["generator"])
    draws = {c: int(torch.randint(2**62, (1,), generator=seeds)) for c in (0, 2)}
    expected = 0.0
    for i in range(2):
        w = {k: v[i] for k, v in nets.items()}
        for c, seed in draws.items():
            xr = dsa(real_x[real_y == c][:9], torch.Generator().manual_seed(seed))
            xs = dsa(learned.images[0][learned.labels[0] == c].detach(), torch.Generator().manual_seed(seed))
            expected += _class_distance(model, w, xr, xs, c)
    assert float(out.value) == pytest.approx(expected / 2, rel=1e-10)


def test_kept_network_is_trained_between_updates_and_replaced_every_outer_loop(blobs):
    model, method, learned, nets = _tiny_method(blobs, outer_loop=3, inner_steps=2)
    x, y = blobs.train.x.double(), blobs.train.y
    method.loss(learned, nets(1), x, y, 1)
    assert all(torch.equal(method.kept[k], nets(1)[k]) for k in method.kept)
    method.loss(learned, nets(2), x, y, 1)  # kept and trained: neither the first nor the new draw
    assert not torch.equal(method.kept["net.1.weight"], nets(1)["net.1.weight"])
    assert not torch.equal(method.kept["net.1.weight"], nets(2)["net.1.weight"])
    # training is SGD with momentum 0.5 on the set: two steps by hand
    before = copy.deepcopy(method.state_dict())
    method.advance(learned, nets(3))
    w, b = before["kept"], before["momentum"]
    for _ in range(2):
        p = {k: v.clone().requires_grad_() for k, v in w.items()}
        loss = F.cross_entropy(torch.vmap(lambda q: functional_call(model, q, (learned.images[0].detach(),)))(p)[0],
                               learned.labels[0])
        g = dict(zip(p, torch.autograd.grad(loss, list(p.values()))))
        b = {k: 0.5 * b[k] + g[k] for k in g}
        w = {k: w[k] - 0.1 * b[k] for k in w}
    for k in w:
        torch.testing.assert_close(method.kept[k], w[k])
    method.loss(learned, nets(4), x, y, 1)  # the fourth call: a fresh network again
    assert all(torch.equal(method.kept[k], nets(4)[k]) for k in method.kept) and method.momentum is None


def test_state_dict_round_trip_gives_the_same_next_loss(blobs):
    def calls(method, learned, nets, seeds):
        out = []
        for s in seeds:
            loss = method.loss(learned, nets(s), blobs.train.x.double(), blobs.train.y, 1)
            with torch.no_grad():  # an outer step of its own, so the set moves between calls
                learned.images -= 0.1 * torch.autograd.grad(loss.objective, learned.images)[0]
            out.append(float(loss.value))
        return out

    _, method, learned, nets = _tiny_method(blobs, "dsa", outer_loop=3, inner_steps=2)
    calls(method, learned, nets, [1, 2])
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    images = learned.images.detach().clone()
    straight = calls(method, learned, nets, [3, 4, 5])

    _, other, learned2, _ = _tiny_method(blobs, "dsa", outer_loop=3, inner_steps=2, seed=7)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer))
    learned2.images = images.clone().requires_grad_()
    assert calls(other, learned2, nets, [3, 4, 5]) == straight


def test_distilled_beats_random_real_images_on_digits(tmp_path):
    # one real batch of all training images per epoch (the preset's batch): 8 updates, each with
    # a fresh network (DC's setting for one image per class), 32 real images per class
    config = build_config({
        "method": "gm", "data.dataset": "digits", "data.val_size": 0, "model.arch": "ConvNet",
        "model.width": 8, "synthetic.ipc": 1, "synthetic.image_init": "real", "methods.augment": "none",
        "outer.epochs": 8, "outer.lr": 0.2,
        "methods.outer_loop": 1, "methods.embed_batch": 32, "nets.test_n_nets": 2,
        "evaluation.scratch_epochs": 30, "evaluation.scratch_lr": 0.01, "results_dir": str(tmp_path),
        "seed": 0})
    assert config.preset == "gm" and config.synthetic.image_init == "real"
    result = distill(config)
    assert result.synthetic.images.shape == (1, 10, 1, 32, 32) and result.synthetic.lrs.numel() == 0
    assert torch.equal(result.synthetic.labels, class_major_labels(1, 1, 10))
    assert result.metrics["protocol"] == "from_scratch"

    # random real images of the same ipc, scored by the same fresh networks and the same protocol
    # (the run's first draw from the same seed: the very images the distilled set started from)
    dataset = load_for(config)
    model = model_for(config, dataset)
    images, labels = class_balanced_sample(dataset.train, 1, 10, torch.Generator().manual_seed(0))
    baseline = SyntheticSet(images.unsqueeze(0), labels.unsqueeze(0), torch.empty(0), dataset.mean,
                            dataset.std, 10)
    nets = fresh_nets(model, config.model.init, config.model.init_param, eval_seeds(config.seed, 2), "cpu")
    random_real = evaluate_from_scratch(model, baseline, nets, dataset.test, 30, 0.01, 256,
                                        generator=torch.Generator().manual_seed(config.seed))
    assert result.final.mean > random_real.mean + 0.05, (result.final, random_real)


def test_method_is_registered_and_the_preset_starts_from_herding_picks():
    from datadistill.config import PRESETS, default_preset
    assert method_class("gm") is Gm and Gm.protocol == "from_scratch"
    assert default_preset("distill_basic", "unknown_init", "gm") == "gm"
    assert PRESETS["gm"]["synthetic.image_init"] == "herding"
    # its matching and its scoring: DSA without flips, for 1000 epochs, unless the flags say otherwise
    config = build_config({"method": "gm"})
    assert (config.methods.augment, config.evaluation.scratch_epochs) == ("dsa-noflip", 1000)
    # the papers' networks: PyTorch's own layer initialisation, unless --init says otherwise
    assert build_config({"method": "gm"}).model.init == "default" == build_config({"method": "dm"}).model.init
    assert build_config({"method": "gm", "model.init": "xavier"}).model.init == "xavier"
    config = build_config({"method": "gm", "methods.augment": "dsa"})
    method = Gm.from_config(config, models.build_model("MLP", 1, 8, 3), None)
    x = torch.randn(4, 1, 8, 8)  # its matching: one transform for the batch, DSA's draw from the generator
    torch.testing.assert_close(method._augment(x, torch.Generator().manual_seed(1)),
                               dsa(x, torch.Generator().manual_seed(1)))
    # its own training draws a transform per image: two images alike stay alike only by chance
    x = torch.randn(1, 1, 8, 8).expand(6, 1, 8, 8)
    out = method._augment_training(x, torch.Generator().manual_seed(0))
    assert not all(torch.equal(out[0], out[i]) for i in range(1, 6))
