import time

import pytest
import torch

from datadistill import backends, inner, models, weights
from datadistill.parallel import ChunkPool


def test_chunks_cover_the_batch_once_in_order():
    pool = ChunkPool(models.build_model("MLP", 1, 8, 3), workers=2, max_chunk=256, min_chunk=64)
    for n in (1, 100, 127, 128, 513, 1024):
        bounds = pool.chunk_bounds(n)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(b - a <= 256 for a, b in bounds)
    assert pool.chunk_bounds(100) == [(0, 100)]  # too small to be worth threads
    assert len(pool.chunk_bounds(1024)) == 4
    pool.close()


def test_chunked_gradient_sums_to_the_whole_batch_gradient():
    model = models.build_model("LeNet", 1, 28, 10)
    stacked = weights.stack_params([weights.init_params(model, "xavier", 1.0, s) for s in range(2)])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 1, 28, 28, generator=g), torch.randint(0, 10, (300,), generator=g)
    whole, value = inner.summed_loss_grad(model, stacked, x, y)
    pool = ChunkPool(model, workers=2, max_chunk=64, min_chunk=16)
    parts = pool.map(lambda m, a, b: inner.summed_loss_grad(m, stacked, a, b), x, y)
    assert len(parts) == 6
    torch.testing.assert_close(sum(v for _, v in parts), value, rtol=1e-5, atol=1e-4)
    for k in whole:
        torch.testing.assert_close(sum(p[k] for p, _ in parts), whole[k], rtol=1e-4, atol=1e-4)
    pool.close()


def test_cores_to_chunks_restores_the_thread_count():
    before = torch.get_num_threads()
    pool = ChunkPool(models.build_model("MLP", 1, 8, 3), workers=2)
    with pool.cores_to_chunks():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    pool.close()


@pytest.mark.parametrize("name", ["mkldnn", "native"])
def test_each_conv_backend_computes_the_same_unroll(name):
    model = models.build_model("LeNet", 1, 28, 10)
    params = weights.init_params(model, "xavier", 1.0, 0)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 10, 1, 28, 28, generator=g)
    labels = torch.arange(10).repeat(2, 1)
    lrs = torch.full((4,), 0.05)
    want = inner.unroll(model, params, images, labels, lrs)
    before = torch.backends.mkldnn.enabled
    with backends.BACKENDS[name]():
        got = inner.unroll(model, params, images, labels, lrs)
    assert torch.backends.mkldnn.enabled == before
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("slow,fast", [("mkldnn", "native"), ("native", "mkldnn")])
def test_fastest_backend_times_the_work_under_each_choice(slow, fast):
    seen = []

    def work():  # 20 ms under the slow backend, nothing under the other
        seen.append(torch.backends.mkldnn.enabled)
        if torch.backends.mkldnn.enabled == (slow == "mkldnn"):
            time.sleep(0.02)

    chosen = backends.fastest_backend(work, torch.device("cpu"), reps=2)
    if torch.backends.mkldnn.is_available():
        assert sorted(set(seen)) == [False, True] and len(seen) == 6
        assert chosen == fast
    assert backends.fastest_backend(lambda: None, torch.device("meta")) == "unchanged"
