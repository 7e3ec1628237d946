"""Distribution matching (methods/dm.py): the loss against a direct computation, its gradient
against finite differences, a tiny digits run against random real images, and its file."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from datadistill import artifacts, models, nets, weights
from datadistill.config import build_config
from datadistill.data import Split, class_balanced_sample, load_dataset
from datadistill.evaluate import evaluate_from_scratch
from datadistill.methods import METHODS, Setup
from datadistill.methods.dm import Dm, Embedder, first_per_class
from datadistill.synthetic import LearnableSet, SyntheticSet, class_major_labels

DSA_IMPORTABLE = importlib.util.find_spec("datadistill.dsa") is not None


def _double(params):
    return {k: v.double() for k, v in params.items()}


def _learned(images, ipc, k):
    return LearnableSet(images.unsqueeze(0), class_major_labels(1, ipc, k), None, k, (0.0,), (1.0,))


def _mlp_problem(k, ipc, seed):
    """A float64 MLP with two stacked networks, a real batch of 9 and ``ipc * k`` synthetic images."""
    model = models.build_model("MLP", 1, 8, k, width=5).double()
    stacked = _double(nets.fresh_nets(model, "xavier", 1.0, [1, 2], "cpu"))
    g = torch.Generator().manual_seed(seed)
    real_x = torch.randn(9, 1, 8, 8, generator=g, dtype=torch.float64)
    real_y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1])
    return model, stacked, real_x, real_y, torch.randn(ipc * k, 1, 8, 8, generator=g, dtype=torch.float64)


def test_registered_with_its_protocol():
    assert METHODS["dm"] is Dm and Dm.protocol == "from_scratch"


@pytest.mark.parametrize("arch,channels,size", [("ConvNet", 1, 28), ("LeNet", 1, 28), ("MLP", 1, 8),
                                                ("AlexCifarNet", 3, 32)])
def test_embedding_is_the_input_of_the_last_linear_layer(arch, channels, size):
    model = models.build_model(arch, channels, size, 5, **({"width": 4} if arch in ("ConvNet", "MLP") else {}))
    params = weights.init_params(model, "xavier", 1.0, 0)
    embed = Embedder(model)
    x = torch.randn(3, channels, size, size, generator=torch.Generator().manual_seed(0))
    e = embed(params, x)
    assert e.dim() == 2
    out = torch.func.functional_call(model, params, (x,))
    torch.testing.assert_close(F.linear(e, params[embed.head + ".weight"], params[embed.head + ".bias"]), out)


def test_convnet_embedding_is_its_flattened_features():
    model = models.build_model("ConvNet", 1, 28, 3, width=4)
    params = weights.init_params(model, "xavier", 1.0, 1)
    x = torch.randn(2, 1, 28, 28)
    features = {k.removeprefix("features."): v for k, v in params.items() if k.startswith("features.")}
    direct = torch.func.functional_call(model.features, features, (x,)).flatten(1)
    torch.testing.assert_close(Embedder(model)(params, x), direct)


def test_loss_equals_a_direct_computation_in_float64():
    k, ipc, total_nets = 3, 2, 4
    model = models.build_model("ConvNet", 1, 28, k, width=4).double()
    stacked = _double(nets.fresh_nets(model, "xavier", 1.0, [5, 6], "cpu"))  # 2 of the 4 networks
    g = torch.Generator().manual_seed(0)
    syn = torch.randn(ipc * k, 1, 28, 28, generator=g, dtype=torch.float64)
    real_x = torch.randn(7, 1, 28, 28, generator=g, dtype=torch.float64)
    real_y = torch.tensor([0, 2, 2, 0, 0, 2, 2])  # class 1 absent: it contributes nothing
    out = Dm(model, ipc=ipc).loss(_learned(syn, ipc, k), stacked, real_x, real_y, total_nets)

    expected = torch.zeros((), dtype=torch.float64)
    for i in range(2):
        features = {n.removeprefix("features."): v[i] for n, v in stacked.items() if n.startswith("features.")}
        embed = lambda x: torch.func.functional_call(model.features, features, (x,)).flatten(1)  # noqa: E731
        for c in (0, 2):
            diff = embed(real_x[real_y == c]).mean(0) - embed(syn[c * ipc:(c + 1) * ipc]).mean(0)
            expected += (diff ** 2).sum()
    expected /= total_nets
    torch.testing.assert_close(out.objective, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.value, expected, rtol=1e-12, atol=0)
    assert not out.value.requires_grad


def test_gradient_matches_finite_differences():
    k, ipc = 3, 2
    model, stacked, real_x, real_y, syn = _mlp_problem(k, ipc, seed=1)
    learned = _learned(syn, ipc, k)
    method = Dm(model, ipc=ipc)

    def loss(images):
        learned.images = images
        return method.loss(learned, stacked, real_x, real_y, 2).objective

    assert torch.autograd.gradcheck(loss, (syn.unsqueeze(0).clone().requires_grad_(),))


def test_network_weights_get_no_gradient():
    model = models.build_model("MLP", 1, 8, 2, width=4)
    stacked = {k: v.requires_grad_() for k, v in nets.fresh_nets(model, "xavier", 1.0, [0], "cpu").items()}
    learned = _learned(torch.randn(2, 1, 8, 8), 1, 2)
    Dm(model, ipc=1).loss(learned, stacked, torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 1, 0]), 1).objective.backward()
    assert learned.images.grad is not None and all(v.grad is None for v in stacked.values())


def test_embed_batch_caps_real_images_per_class():
    y = torch.tensor([1, 0, 1, 1, 0, 2, 1])
    assert first_per_class(y, 3, 2).tolist() == [True, True, True, False, True, True, False]


def test_initial_set_is_one_class_major_batch_of_real_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 1, 8, 8, generator=g)
    y = torch.arange(3).repeat(10)
    train = Split(x, y)
    model = models.build_model("MLP", 1, 8, 3, width=4)
    setup = Setup(model, train, None, 3, (0.0,), (1.0,), torch.device("cpu"), torch.Generator().manual_seed(2), 0)
    learned = Dm(model, ipc=2, image_init="real").initial(setup)
    assert learned.images.shape == (1, 6, 1, 8, 8) and learned.raw_lrs is None
    assert learned.labels.tolist() == [[0, 0, 1, 1, 2, 2]]
    for img, label in zip(learned.images[0], learned.labels[0]):
        match = (x == img.detach()).flatten(1).all(1).nonzero().squeeze(1)
        assert len(match) == 1 and y[match].item() == label.item()
    noise = Dm(model, ipc=2, image_init="noise").initial(setup)
    assert noise.images.shape == (1, 6, 1, 8, 8)


@pytest.mark.skipif(not DSA_IMPORTABLE, reason="datadistill.dsa (DSA) is not there yet")
def test_dsa_loss_is_finite_and_reaches_the_images():
    model = models.build_model("ConvNet", 1, 28, 2, width=4)
    stacked = nets.fresh_nets(model, "xavier", 1.0, [0], "cpu")
    learned = _learned(torch.randn(4, 1, 28, 28), 2, 2)
    method = Dm(model, ipc=2, augment="dsa", seed=3)
    out = method.loss(learned, stacked, torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 0, 1, 1, 0]), 1)
    out.objective.backward()
    assert torch.isfinite(out.value) and learned.images.grad.abs().sum() > 0
    # the transforms come from the method's stream, which a checkpoint restores
    state = method.state_dict()
    again = Dm(model, ipc=2, augment="dsa", seed=99)
    again.load_state_dict(state)
    assert torch.equal(again.generator.get_state(), method.generator.get_state())


@pytest.mark.skipif(not DSA_IMPORTABLE, reason="datadistill.dsa (DSA) is not there yet")
def test_dsa_transforms_real_and_synthetic_images_alike():
    # a synthetic set equal to the real batch matches it exactly only if each class's real and
    # synthetic images go through the same transform (Siamese); independent draws would differ
    model = models.build_model("ConvNet", 1, 28, 3, width=4)
    stacked = nets.fresh_nets(model, "xavier", 1.0, [0, 1], "cpu")
    real_x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    real_y = torch.tensor([0, 0, 1, 1, 2, 2])
    method = Dm(model, ipc=2, augment="dsa", seed=0)
    for _ in range(5):
        out = method.loss(_learned(real_x.clone(), 2, 3), stacked, real_x, real_y, 2)
        assert out.value.item() < 1e-10


def test_tiny_digits_run_beats_random_real_images_and_its_file_round_trips(tmp_path):
    from datadistill.jobs import distill

    epochs, lr, batch = 30, 0.01, 256  # the from-scratch protocol, small
    config = build_config({"method": "dm", "data.dataset": "digits", "model.arch": "ConvNet", "model.width": 8,
                           "synthetic.ipc": 1, "outer.epochs": 10, "outer.lr": 0.1, "nets.test_n_nets": 3,
                           "methods.augment": "none",  # random real images below are scored without
                           "data.val_size": 0, "evaluation.scratch_epochs": epochs, "evaluation.scratch_lr": lr,
                           "evaluation.scratch_batch_size": batch, "results_dir": str(tmp_path), "seed": 0})
    assert config.preset == "dm" and config.synthetic.image_init == "real"
    result = distill(config)

    # random real images, one per class, scored under the same protocol by the same networks
    data = load_dataset("digits", image_size=models.ConvNet.default_size, val_size=0)
    model = models.build_model("ConvNet", 1, models.ConvNet.default_size, 10, width=8)
    init = nets.fresh_nets(model, "xavier", 1.0, nets.eval_seeds(config.seed, 3), "cpu")
    random_real = []
    for draw in range(3):
        x, y = class_balanced_sample(data.train, 1, 10, torch.Generator().manual_seed(10 + draw))
        s = SyntheticSet(x.unsqueeze(0), y.unsqueeze(0), torch.empty(0), data.mean, data.std, 10)
        random_real.append(evaluate_from_scratch(model, s, init, data.test, epochs, lr, batch,
                                                 generator=torch.Generator().manual_seed(config.seed)).mean)
    assert result.metrics["protocol"] == "from_scratch"
    assert result.final.mean > max(random_real) + 0.02, (result.final, random_real)

    saved = artifacts.load_distilled(tmp_path / artifacts.DISTILLED)
    assert saved.images.shape == (1, 10, 1, 32, 32) and saved.lrs.numel() == 0
    assert saved.labels.tolist() == [list(range(10))] and saved.meta["method"] == "dm"
    torch.testing.assert_close(saved.images, result.synthetic.images)


@pytest.mark.skipif(not DSA_IMPORTABLE, reason="datadistill.dsa (DSA) is not there yet")
def test_dsa_loss_equals_a_class_by_class_computation_in_float64():
    from datadistill.dsa import dsa

    torch.set_default_dtype(torch.float64)
    try:
        model = models.build_model("ConvNet", 1, 28, 3, width=4)
        stacked = nets.fresh_nets(model, "xavier", 1.0, [0, 1], "cpu")
        g = torch.Generator().manual_seed(5)
        real_x, syn = torch.randn(9, 1, 28, 28, generator=g), torch.randn(6, 1, 28, 28, generator=g)
        real_y = torch.tensor([2, 0, 2, 2, 0, 0, 2, 0, 2])  # class 1 absent from the batch
        out = Dm(model, ipc=2, augment="dsa", seed=4).loss(_learned(syn, 2, 3), stacked, real_x, real_y, 4)
        seeds = torch.Generator().manual_seed(4)  # the method's stream: one seed per present class
        embed, total = Embedder(model), 0.0
        for i in range(2):
            params = {name: v[i] for name, v in stacked.items()}
            for c in (0, 2):
                seed = int(torch.randint(0, 2**31 - 1, (), generator=seeds))
                real = dsa(real_x[real_y == c], torch.Generator().manual_seed(seed))
                mine = dsa(syn[2 * c:2 * c + 2], torch.Generator().manual_seed(seed))
                total += ((embed(params, real).mean(0) - embed(params, mine).mean(0)) ** 2).sum()
        assert torch.allclose(out.value, total / 4, rtol=1e-10)
    finally:
        torch.set_default_dtype(torch.float32)


def _soft(images, ipc, k, seed=0):
    learned = LearnableSet(images.unsqueeze(0), class_major_labels(1, ipc, k), None, k, (0.0,), (1.0,),
                           learn_labels=True)
    with torch.no_grad():  # labels away from one-hot, so that every image weighs in every class
        learned.label_logits.copy_(torch.randn(learned.label_logits.shape, generator=torch.Generator().manual_seed(seed),
                                               dtype=learned.label_logits.dtype))
    return learned


@pytest.mark.parametrize("augment", ["none", "dsa"])
def test_soft_label_loss_weighs_every_image_into_every_class_mean(augment):
    if augment == "dsa" and not DSA_IMPORTABLE:
        pytest.skip("datadistill.dsa (DSA) is not there yet")
    torch.set_default_dtype(torch.float64)
    try:
        k, ipc = 3, 2
        model = models.build_model("ConvNet", 1, 28, k, width=4)
        stacked = nets.fresh_nets(model, "xavier", 1.0, [0, 1], "cpu")
        g = torch.Generator().manual_seed(6)
        real_x, syn = torch.randn(8, 1, 28, 28, generator=g), torch.randn(ipc * k, 1, 28, 28, generator=g)
        real_y = torch.tensor([2, 0, 2, 2, 0, 0, 2, 0])  # class 1 absent
        learned = _soft(syn, ipc, k)
        out = Dm(model, ipc=ipc, augment=augment, seed=4).loss(learned, stacked, real_x, real_y, 2)

        w = learned.label_logits[0].detach().softmax(-1)  # (6, 3)
        seeds = torch.Generator().manual_seed(4)
        embed, total = Embedder(model), 0.0
        for i in range(2):
            params = {name: v[i] for name, v in stacked.items()}
            for c in (0, 2):
                real, mine = real_x[real_y == c], syn
                if augment == "dsa":
                    from datadistill.dsa import dsa

                    seed = int(torch.randint(0, 2**31 - 1, (), generator=seeds))
                    real = dsa(real, torch.Generator().manual_seed(seed))
                    mine = dsa(syn, torch.Generator().manual_seed(seed))
                weighted = (w[:, c:c + 1] * embed(params, mine)).sum(0) / w[:, c].sum()
                total += ((embed(params, real).mean(0) - weighted) ** 2).sum()
        torch.testing.assert_close(out.value, total / 2, rtol=1e-10, atol=0)
    finally:
        torch.set_default_dtype(torch.float32)


def test_soft_label_gradient_matches_finite_differences():
    k, ipc = 3, 2
    model, stacked, real_x, real_y, syn = _mlp_problem(k, ipc, seed=2)
    learned = _soft(syn, ipc, k)
    method = Dm(model, ipc=ipc)

    def loss(images, logits):
        learned.images, learned.label_logits = images, logits
        return method.loss(learned, stacked, real_x, real_y, 2).objective

    inputs = (learned.images.detach().clone().requires_grad_(), learned.label_logits.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(loss, inputs)


def test_soft_labels_are_learned_and_round_trip_through_the_file(tmp_path):
    from datadistill.jobs import distill

    config = build_config({"method": "dm", "data.dataset": "digits", "model.arch": "ConvNet", "model.width": 4,
                           "synthetic.ipc": 1, "synthetic.learn_labels": True, "outer.epochs": 2, "outer.lr": 0.1,
                           "methods.augment": "none", "nets.test_n_nets": 1, "data.val_size": 0,
                           "evaluation.scratch_epochs": 2, "results_dir": str(tmp_path), "seed": 0})
    result = distill(config)
    saved = artifacts.load_distilled(tmp_path / artifacts.DISTILLED)
    assert saved.labels.shape == (1, 10, 10)
    torch.testing.assert_close(saved.labels.sum(-1), torch.ones(1, 10))
    torch.testing.assert_close(saved.labels, result.synthetic.labels)
    assert (saved.labels[0].argmax(-1) == torch.arange(10)).all()
    assert not torch.allclose(saved.labels[0].diagonal(), torch.full((10,), 0.99)), "the labels never moved"
