import copy

import pytest
import torch

from datadistill import artifacts, models
from datadistill.config import NetsConfig, OuterConfig, RunConfig, SyntheticConfig
from datadistill.distill import Callback, Distillation


def _run(dataset, seed=1, epochs=2, nets=NetsConfig("known_init", 2, "same_as_train", 2), lr=0.05,
         learn_labels=False):
    cfg = RunConfig(synthetic=SyntheticConfig(steps=2, epochs=2, learn_labels=learn_labels),
                    outer=OuterConfig(epochs=epochs, decay_epochs=1, lr=lr, batch_size=32),
                    nets=nets, seed=seed, eval_every=1)
    model = models.build_model("MLP", 1, 8, 3)
    return Distillation(cfg, model, dataset.train, dataset.test, 3, dataset.mean, dataset.std)


def test_known_init_nets_stay_fixed_while_the_set_learns(blobs):
    run = _run(blobs)
    before = {k: v.clone() for k, v in run.fixed_nets.items()}
    images, lrs = run.synthetic.images.detach().clone(), run.log_lrs.detach().clone()
    run.step(blobs.train.x[:32], blobs.train.y[:32])
    assert all(torch.equal(before[k], run.fixed_nets[k]) for k in before)
    assert not torch.equal(images, run.synthetic.images) and not torch.equal(lrs, run.log_lrs)


def test_unknown_init_draws_fresh_nets(blobs):
    run = _run(blobs, nets=NetsConfig("unknown_init", 2, "unknown_init", 3))
    a, b = run.train_nets(), run.train_nets()
    assert not torch.equal(a["net.1.weight"], b["net.1.weight"])
    assert run.fixed_nets is None


def test_same_seed_same_result(blobs):
    a, b, c = _run(blobs, seed=3).run(), _run(blobs, seed=3).run(), _run(blobs, seed=4).run()
    assert torch.equal(a.images, b.images) and torch.equal(a.lrs, b.lrs)
    assert not torch.equal(a.images, c.images)


def test_resume_from_checkpoint_continues_exactly(blobs, tmp_path):
    straight = _run(blobs, epochs=3).run()

    class StopAfterOne(Callback):
        def on_epoch_end(self, run):
            artifacts.save_checkpoint(tmp_path / "ckpt.pt", run.state_dict())
            raise KeyboardInterrupt

    first = _run(blobs, epochs=3)
    try:
        first.run([StopAfterOne()])
    except KeyboardInterrupt:
        pass
    resumed = _run(blobs, epochs=3)
    resumed.load_state_dict(artifacts.load_checkpoint(tmp_path / "ckpt.pt"))
    assert resumed.epoch == 1
    out = resumed.run()
    torch.testing.assert_close(out.images, straight.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.lrs, straight.lrs, rtol=0, atol=1e-7)


def test_checkpoint_from_before_the_step_sizes_own_rate_continues_exactly(blobs):
    """Older checkpoints hold one Adam group [images, log step sizes, labels] at one rate."""
    straight = _run(blobs, epochs=2, learn_labels=True).run()
    saved = {}

    class StopAfterOne(Callback):
        def on_epoch_end(self, run):
            saved.update(run.state_dict())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(blobs, epochs=2, learn_labels=True).run([StopAfterOne()])
    state = copy.deepcopy(saved)
    (images_group, step_size_group) = state["optimizer"]["param_groups"]
    images, labels = images_group["params"]
    state["optimizer"]["param_groups"] = [{**images_group, "params": [images, *step_size_group["params"], labels]}]
    state["scheduler"] = {**state["scheduler"], "base_lrs": state["scheduler"]["base_lrs"][:1],
                          "_last_lr": state["scheduler"]["_last_lr"][:1]}
    resumed = _run(blobs, epochs=2, learn_labels=True)
    resumed.load_state_dict(state)
    assert resumed.optimizer.param_groups[1]["params"] == [resumed.log_lrs]
    out = resumed.run()
    torch.testing.assert_close(out.images, straight.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.lrs, straight.lrs, rtol=0, atol=1e-7)
    torch.testing.assert_close(out.labels, straight.labels, rtol=0, atol=1e-6)


def test_learned_labels_start_as_the_fixed_ones(blobs):
    """One-hot targets train exactly as the integer labels: the first step is the same."""
    fixed, learned = _run(blobs), _run(blobs, learn_labels=True)
    for run in (fixed, learned):
        run.step(blobs.train.x[:32], blobs.train.y[:32])
    torch.testing.assert_close(learned.synthetic.images, fixed.synthetic.images)
    torch.testing.assert_close(learned.log_lrs, fixed.log_lrs)
    assert learned.label_targets.grad.abs().sum() > 0


def test_learned_labels_move_and_resume(blobs, tmp_path):
    fixed = _run(blobs, epochs=2).run()
    straight = _run(blobs, epochs=2, learn_labels=True).run()
    assert fixed.labels.dtype == torch.int64 and fixed.labels.shape == (2, 3)
    labels = straight.labels
    assert labels.shape == (2, 3, 3) and labels.dtype == torch.float32
    start = torch.nn.functional.one_hot(fixed.labels, 3).float()
    assert not torch.allclose(labels, start, atol=1e-3)  # they were learned
    assert torch.equal(straight.hard_labels, fixed.labels)  # and still favour their own class here

    class StopAfterOne(Callback):
        def on_epoch_end(self, run):
            artifacts.save_checkpoint(tmp_path / "ckpt.pt", run.state_dict())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(blobs, epochs=2, learn_labels=True).run([StopAfterOne()])
    resumed = _run(blobs, epochs=2, learn_labels=True)
    resumed.load_state_dict(artifacts.load_checkpoint(tmp_path / "ckpt.pt"))
    out = resumed.run()
    torch.testing.assert_close(out.labels, labels, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.images, straight.images, rtol=0, atol=1e-6)


@pytest.mark.parametrize("learn_labels", [False, True])
def test_distillation_learns(blobs, learn_labels):
    events = []

    class Record(Callback):
        def on_evaluation(self, run, result):
            events.append(result.mean)

    run = _run(blobs, epochs=8, lr=0.05, learn_labels=learn_labels)
    run.run([Record()])
    assert len(events) == 9  # before every epoch, and at the end
    assert events[-1] >= 0.95 and events[-1] > events[0] + 0.3
    assert run.history.losses[-1]["loss"] < run.history.losses[0]["loss"]


@pytest.mark.parametrize("n_nets", [1, 3])
def test_two_phase_chunked_step_equals_one_backward(blobs, n_nets):
    """The step's hypergradient (real batch split over threads, then pushed through the unroll)
    equals a single backward of the mean unrolled loss."""
    from datadistill.distill import real_batch_gradient
    from datadistill.inner import batched_unroll, batched_unrolled_loss
    from datadistill.parallel import ChunkPool

    run = _run(blobs, nets=NetsConfig("unknown_init", n_nets, "unknown_init", 1))
    nets, s = run.train_nets(), run.synthetic
    x, y = blobs.train.x[:100], blobs.train.y[:100]
    direct = batched_unrolled_loss(run.model, nets, s.images, s.labels, run.log_lrs.exp(), x, y).mean()
    want = torch.autograd.grad(direct, (s.images, run.log_lrs))

    pool = ChunkPool(run.model, workers=2, max_chunk=16, min_chunk=8)
    assert len(pool.chunk_bounds(100)) == 8
    trained = batched_unroll(run.model, nets, s.images, s.labels, run.log_lrs.exp())
    loss, grads = real_batch_gradient(pool, trained, x, y)
    got = torch.autograd.grad(list(trained.values()), (s.images, run.log_lrs), [grads[k] for k in trained])
    torch.testing.assert_close(loss, direct.detach(), rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    pool.close()


def test_weighted_chunked_gradient_equals_the_weighted_mean_backward(blobs):
    """With per-image weights (the attack's --attack_weight) the two-phase step is still the
    gradient of sum_i a_i CE_i / sum_i a_i, averaged over the networks, written out directly."""
    import torch.nn.functional as F
    from torch.func import functional_call
    from datadistill.distill import real_batch_gradient
    from datadistill.inner import batched_unroll
    from datadistill.objectives import loss_weights
    from datadistill.parallel import ChunkPool

    run = _run(blobs, nets=NetsConfig("unknown_init", 2, "unknown_init", 1))
    nets, s = run.train_nets(), run.synthetic
    x, y = blobs.train.x[:100], blobs.train.y[:100]
    weights = loss_weights(y, 0, 4.0)
    assert sorted(set(weights.tolist())) == [1.0, 4.0] and (weights == 4.0).sum() == (y == 0).sum()
    trained = batched_unroll(run.model, nets, s.images, s.labels, run.log_lrs.exp())
    direct = sum((weights * F.cross_entropy(functional_call(run.model, {k: v[i] for k, v in trained.items()}, (x,)),
                                            y, reduction="none")).sum() / weights.sum() for i in range(2)) / 2
    want = torch.autograd.grad(direct, (s.images, run.log_lrs), retain_graph=True)
    pool = ChunkPool(run.model, workers=2, max_chunk=16, min_chunk=8)
    loss, grads = real_batch_gradient(pool, trained, x, y, weights=weights)
    got = torch.autograd.grad(list(trained.values()), (s.images, run.log_lrs), [grads[k] for k in trained])
    torch.testing.assert_close(loss, direct.detach(), rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    unweighted = real_batch_gradient(pool, trained, x, y)[0]
    assert abs(float(unweighted - loss)) > 1e-3  # the weights change the objective
    pool.close()


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_outer_lr_follows_the_schedule_per_iteration(blobs, schedule):
    cfg = RunConfig(synthetic=SyntheticConfig(steps=1, epochs=1),
                    outer=OuterConfig(epochs=4, schedule=schedule, decay_epochs=1, decay_factor=0.5,
                                      lr=0.1, step_size_lr=0.02, batch_size=40),
                    nets=NetsConfig("known_init", 1, "same_as_train", 1))
    run = Distillation(cfg, models.build_model("MLP", 1, 8, 3), blobs.train, None, 3, blobs.mean, blobs.std)
    assert run.iterations_per_epoch == 3
    seen = []
    for _ in range(12):
        images_group, step_size_group = run.optimizer.param_groups
        assert step_size_group["params"] == [run.log_lrs]
        # the step sizes' own rate follows the same schedule
        assert step_size_group["lr"] == pytest.approx(images_group["lr"] * 0.2)
        seen.append(images_group["lr"])
        run.step(blobs.train.x[:40], blobs.train.y[:40])
    if schedule == "step":  # halved after every 3 iterations (one epoch)
        assert seen == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3 + [0.0125] * 3)
    else:  # from lr down a half cosine, halfway at the middle of the run
        assert seen[0] == pytest.approx(0.1) and seen[6] == pytest.approx(0.05)
        assert all(a > b for a, b in zip(seen, seen[1:])) and seen[-1] < 0.002
