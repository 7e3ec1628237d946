import copy

import pytest
import torch

from datadistill import inner, models, weights


def _problem(steps=2, per_step=3, epochs=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    model = models.build_model("MLP", 1, 8, 3)
    params = {k: v.to(dtype) for k, v in weights.init_params(model, "xavier", 1.0, seed=3).items()}
    images = torch.randn(steps, per_step, 1, 8, 8, generator=g, dtype=dtype)
    labels = torch.arange(per_step).repeat(steps, 1) % 3
    lrs = torch.rand(steps * epochs, generator=g, dtype=dtype) * 0.2 + 0.05
    real_x = torch.randn(16, 1, 8, 8, generator=g, dtype=dtype)
    real_y = torch.randint(0, 3, (16,), generator=g)
    return model.to(dtype), params, images, labels, lrs, real_x, real_y


STEP_GRADS = {"torch.func": lambda model: None, "reverse_mode": inner.reverse_mode_grad}


@pytest.mark.parametrize("step_grad", STEP_GRADS)
def test_unroll_equals_torch_optim_sgd(step_grad):
    model, params, images, labels, lrs, _, _ = _problem()
    net = copy.deepcopy(model)
    net.load_state_dict(params)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    for t, lr in enumerate(lrs):
        opt.param_groups[0]["lr"] = float(lr)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(images[t % 2]), labels[t % 2]).backward()
        opt.step()
    ours = inner.unroll(model, params, images, labels, lrs, STEP_GRADS[step_grad](model))
    for name, p in net.named_parameters():
        torch.testing.assert_close(ours[name], p.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours["net.1.weight"], params["net.1.weight"])


@pytest.mark.parametrize("step_grad", STEP_GRADS)
def test_hypergradient_matches_finite_differences(f64, step_grad):
    model, params, images, labels, lrs, real_x, real_y = _problem(dtype=torch.float64)
    images.requires_grad_()
    lrs.requires_grad_()
    trained = inner.unroll(model, params, images, labels, lrs, STEP_GRADS[step_grad](model))
    loss = inner.task_loss(model, trained, real_x, real_y)
    g_images, g_lrs = torch.autograd.grad(loss, (images, lrs))

    def f(imgs, rates):
        with torch.no_grad():
            return inner.unrolled_loss(model, params, imgs, labels, rates, real_x, real_y)

    eps = 1e-6
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # directional derivatives along random directions
        di = torch.randn(images.shape, generator=gen, dtype=torch.float64)
        dl = torch.randn(lrs.shape, generator=gen, dtype=torch.float64)
        fd = (f(images + eps * di, lrs + eps * dl) - f(images - eps * di, lrs - eps * dl)) / (2 * eps)
        analytic = (g_images * di).sum() + (g_lrs * dl).sum()
        torch.testing.assert_close(analytic, fd, rtol=1e-6, atol=1e-9)
    for t in range(lrs.shape[0]):  # and each step size on its own
        e = torch.zeros_like(lrs)
        e[t] = eps
        fd = (f(images, lrs + e) - f(images, lrs - e)) / (2 * eps)
        torch.testing.assert_close(g_lrs[t], fd, rtol=1e-6, atol=1e-9)


def test_hypergradient_wrt_learned_labels_matches_finite_differences(f64):
    """Learned labels are free target vectors of the inner cross-entropy."""
    model, params, images, labels, lrs, real_x, real_y = _problem(dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    targets = (torch.nn.functional.one_hot(labels, 3).double()
               + 0.3 * torch.randn(labels.shape + (3,), generator=gen, dtype=torch.float64)).requires_grad_()
    loss = inner.unrolled_loss(model, params, images, targets, lrs, real_x, real_y)
    (g_targets,) = torch.autograd.grad(loss, (targets,))
    assert g_targets.abs().sum() > 0

    def f(z):
        with torch.no_grad():
            return inner.unrolled_loss(model, params, images, z, lrs, real_x, real_y)

    eps = 1e-6
    for _ in range(3):
        d = torch.randn(targets.shape, generator=gen, dtype=torch.float64)
        fd = (f(targets + eps * d) - f(targets - eps * d)) / (2 * eps)
        torch.testing.assert_close((g_targets * d).sum(), fd, rtol=1e-6, atol=1e-9)
    # one-hot distributions train exactly as the integer labels they encode
    hard = inner.unroll(model, params, images, labels, lrs)
    one_hot = inner.unroll(model, params, images, torch.nn.functional.one_hot(labels, 3).double(), lrs)
    for k in hard:
        torch.testing.assert_close(one_hot[k], hard[k])


def test_vmapped_networks_equal_a_loop():
    model, _, images, labels, lrs, real_x, real_y = _problem()
    nets = [weights.init_params(model, "xavier", 1.0, seed=s) for s in range(3)]
    stacked = weights.stack_params(nets)
    images.requires_grad_()
    batched = inner.batched_unrolled_loss(model, stacked, images, labels, lrs, real_x, real_y)
    (g_batched,) = torch.autograd.grad(batched.sum(), images)
    looped = torch.stack([inner.unrolled_loss(model, p, images, labels, lrs, real_x, real_y) for p in nets])
    (g_looped,) = torch.autograd.grad(looped.sum(), images)
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_batched, g_looped, rtol=1e-4, atol=1e-6)

    trained = inner.batched_train(model, stacked, images, labels, lrs)
    for i, p in enumerate(nets):
        one = inner.unroll(model, p, images.detach(), labels, lrs)
        for k in p:
            torch.testing.assert_close(trained[k][i], one[k], rtol=1e-5, atol=1e-6)
