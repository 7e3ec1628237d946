import math

import pytest
import torch

from datadistill import dsa
from datadistill.augment import augmenter


def _batch(n=3, c=2, h=9, w=8, seed=0, dtype=torch.float32):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_augmenter_names_dsa():
    assert augmenter("none") is None and augmenter("none", siamese=False) is None
    x = _batch(n=4)
    torch.testing.assert_close(augmenter("dsa")(x, torch.Generator().manual_seed(1)),
                               dsa.dsa(x, torch.Generator().manual_seed(1)))
    per_image = augmenter("dsa", siamese=False)(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(per_image, dsa.dsa(x, torch.Generator().manual_seed(1), siamese=False))


@pytest.mark.parametrize("seed", range(4))
def test_apply_by_group_equals_each_group_on_its_own(seed):
    g = torch.Generator().manual_seed(seed)
    x = _batch(n=11, seed=seed, dtype=torch.float64).requires_grad_()
    groups = torch.randint(4, (11,), generator=g)
    groups[:4] = torch.arange(4)  # every group has an image
    draws = [dsa.sample_params(g) for _ in range(4)]
    out = dsa.apply_by_group(x, groups, draws)
    for i, d in enumerate(draws):
        torch.testing.assert_close(out[groups == i], dsa.apply(x[groups == i], d), rtol=1e-12, atol=1e-12)
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((weights * out).sum(), x)
    for i, d in enumerate(draws):
        part = x.detach()[groups == i].requires_grad_()
        (direct,) = torch.autograd.grad((weights[groups == i] * dsa.apply(part, d)).sum(), part)
        torch.testing.assert_close(grad[groups == i], direct, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_shape_kept_and_same_generator_state_gives_the_same_transform(seed):
    a, b = _batch(seed=1), _batch(n=5, seed=2)
    both = dsa.dsa(torch.cat([a, b]), torch.Generator().manual_seed(seed))
    one = dsa.dsa(a, torch.Generator().manual_seed(seed))
    other = dsa.dsa(b, torch.Generator().manual_seed(seed))
    assert one.shape == a.shape and other.shape == b.shape
    # the transform of each image depends on the generator's state only, not on its batch
    torch.testing.assert_close(torch.cat([one, other]), both)
    p = dsa.sample_params(torch.Generator().manual_seed(seed))
    again = dsa.sample_params(torch.Generator().manual_seed(seed))
    assert p.family == again.family and torch.equal(p.u, again.u)
    torch.testing.assert_close(one, dsa.apply(a, p))


def test_every_family_is_drawn_and_consumption_does_not_depend_on_it():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        seen.add(dsa.sample_params(g).family)
    assert seen == set(dsa.FAMILIES)
    # each call draws the same count, whatever the family, so two streams stay in step
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    dsa.dsa(_batch(), g1)
    dsa.sample_params(g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_one_parameter_set_for_the_whole_batch():
    x = _batch(n=1).repeat(4, 1, 1, 1)
    for seed in range(20):
        y = dsa.dsa(x, torch.Generator().manual_seed(seed))
        assert all(torch.equal(y[0], y[i]) for i in range(1, 4))


@pytest.mark.parametrize("seed", range(12))
def test_per_image_draws_transform_each_image_by_its_own_row(seed):
    x = _batch(n=5, c=3, h=9, w=8, seed=seed)
    p = dsa.sample_params(torch.Generator().manual_seed(seed), n=5)
    y = dsa.apply(x, p)
    for b in range(5):  # image b alone under row b: the batched path is the per-image one
        torch.testing.assert_close(y[b:b + 1], dsa.apply(x[b:b + 1], dsa.DsaParams(p.family, p.u[b])))
    # and dsa(siamese=False) is that draw
    torch.testing.assert_close(dsa.dsa(x, torch.Generator().manual_seed(seed), siamese=False), y)


def test_per_image_draws_differ_between_images_of_one_batch():
    x = _batch(n=1).repeat(6, 1, 1, 1)
    differing = 0
    for seed in range(20):
        y = dsa.dsa(x, torch.Generator().manual_seed(seed), siamese=False)
        differing += not all(torch.equal(y[0], y[i]) for i in range(1, 6))
    assert differing >= 15  # flip draws agree for all six with probability 1/32


def test_families_do_what_the_paper_says():
    x = _batch(n=2, c=3, h=8, w=8)
    # crop: a whole-pixel shift with zeros shifted in (u = 0: -1 px each way for 8 px)
    y = dsa.apply(x, dsa.DsaParams("crop", (0.0, 0.0, 0.0)))
    assert torch.equal(y[..., 1:, 1:], x[..., :-1, :-1]) and (y[..., 0, :] == 0).all() and (y[..., :, 0] == 0).all()
    # cutout: a 4x4 square of zeros, the rest untouched
    y = dsa.apply(x, dsa.DsaParams("cutout", (0.5, 0.5, 0.0)))
    zeros = (y == 0).all(dim=(0, 1))
    assert int(zeros.sum()) == 16 and torch.equal(y[:, :, ~zeros], x[:, :, ~zeros])
    # flip below 1/2, identity above
    assert torch.equal(dsa.apply(x, dsa.DsaParams("flip", (0.2, 0, 0))), x.flip(-1))
    assert torch.equal(dsa.apply(x, dsa.DsaParams("flip", (0.7, 0, 0))), x)
    # scale 1 and rotation 0 are the identity (u = 1/2 of the rotation's range; the scale's 1)
    one = (1 - 1 / dsa.SCALE) / (dsa.SCALE - 1 / dsa.SCALE)
    torch.testing.assert_close(dsa.apply(x, dsa.DsaParams("scale", (one, one, 0))), x)
    torch.testing.assert_close(dsa.apply(x, dsa.DsaParams("rotate", (0.5, 0, 0))), x)
    # rotation by the largest angle moves pixels; brightness alone shifts every value
    assert not torch.allclose(dsa.apply(x, dsa.DsaParams("rotate", (0.999, 0, 0))), x)
    y = dsa.apply(x, dsa.DsaParams("color", (1.0, 0.5, 0.5)))  # s = 1/2, c = 1/2: factors 1
    torch.testing.assert_close(y, x + 0.5)


@pytest.mark.parametrize("family", dsa.FAMILIES)
def test_gradient_matches_finite_differences(family):
    x = _batch(n=2, c=3, h=6, w=7, dtype=torch.float64).requires_grad_()
    # one row for the batch, then a row per image
    for u in ((0.1, 0.8, 0.3), (0.77, 0.26, 0.9), ((0.1, 0.8, 0.3), (0.77, 0.26, 0.9))):
        params = dsa.DsaParams(family, u)
        assert torch.autograd.gradcheck(lambda t: dsa.apply(t, params), (x,))


def test_generator_none_uses_the_global_stream():
    torch.manual_seed(3)
    a = dsa.dsa(_batch())
    torch.manual_seed(3)
    assert torch.equal(a, dsa.dsa(_batch()))
    assert not math.isnan(float(a.sum()))


def test_dsa_noflip_never_draws_a_flip_and_stays_siamese():
    x = _batch(n=4, seed=5)
    noflip = augmenter("dsa-noflip")
    families = set()
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        families.add(dsa.sample_params(torch.Generator().manual_seed(seed), dsa.NO_FLIP).family)
        one = noflip(x, g)
        # the same generator state, the same transform: real and synthetic batches augmented alike
        torch.testing.assert_close(noflip(x[:2], torch.Generator().manual_seed(seed)), one[:2])
    assert families == set(dsa.NO_FLIP)
    per_image = augmenter("dsa-noflip", siamese=False)(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(per_image, dsa.dsa(x, torch.Generator().manual_seed(1), siamese=False,
                                                  families=dsa.NO_FLIP))
