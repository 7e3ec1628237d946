"""The outer loop (``Distillation``) driving Wang2018 on the blobs: networks, determinism, resume,
learned labels, learning itself, the two-phase hypergradient, and the schedule."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from datadistill import artifacts, checkpoint, models
from datadistill.config import OuterConfig, SyntheticConfig
from datadistill.distill import Callback, Distillation
from datadistill.errors import ConfigError
from datadistill.evaluate import EvalResult, evaluate_synthetic
from datadistill.inner import batched_unroll, batched_unrolled_loss
from datadistill.methods import Setup
from datadistill.methods.wang2018 import Relabel, Wang2018, real_batch_gradient
from datadistill.nets import FixedNets, FreshNets, eval_seeds, fresh_nets
from datadistill.parallel import ChunkPool
from datadistill.runtime import Runtime


@pytest.fixture
def runtime():
    with Runtime("cpu") as rt:
        yield rt


def _run(dataset, runtime, seed=1, epochs=2, nets="known_init", n_nets=2, lr=0.05, learn_labels=False,
         relabel=Relabel(), outer=None, steps=2, synthetic_epochs=2) -> Distillation:
    """Wang2018 on an MLP, 3-class blobs; known_init: scored by its fixed networks (same_as_train),
    unknown_init: by two evaluation networks. Validation reads the blobs' test split (they have no
    validation split)."""
    model = models.build_model("MLP", 1, 8, 3)
    generator = torch.Generator().manual_seed(seed)
    method = Wang2018(model, SyntheticConfig(steps=steps, epochs=synthetic_epochs, learn_labels=learn_labels),
                      relabel, "basic", runtime)
    setup = Setup(model, dataset.train, dataset.val, dataset.num_classes, dataset.mean, dataset.std,
                  torch.device("cpu"), generator, seed)
    learned = method.initial(setup)
    if nets == "known_init":
        source = FixedNets(model, "xavier", 1.0, n_nets, "cpu", generator)
        scorers = lambda: source.params  # noqa: E731  (as they are now: a resume replaces them)
        step_size_lr = lr  # as the fixed preset: step sizes as fast as the images
    else:
        source = FreshNets(model, "xavier", 1.0, n_nets, "cpu")
        scorers = lambda: fresh_nets(model, "xavier", 1.0, eval_seeds(seed, 2), "cpu")  # noqa: E731
        step_size_lr = min(lr, 0.01)  # fresh networks need slower step sizes
    outer = outer or OuterConfig(epochs=epochs, lr=lr, step_size_lr=step_size_lr, batch_size=32)
    return Distillation(method, learned, source, outer, dataset.train, generator, eval_every=1,
                        validate=lambda s: evaluate_synthetic(model, s, scorers(), dataset.test))


def _record_samples(run: Distillation) -> list:
    """Make ``run.nets`` remember what it hands the loop."""
    seen, sample = [], run.nets.sample

    def recording(generator):
        seen.append({k: v.clone() for k, v in sample(generator).items()})
        return seen[-1]

    run.nets.sample = recording
    return seen


class StopAfter(Callback):
    """Checkpoint (through the file format) after ``epochs`` epochs, then stop as if killed."""

    def __init__(self, path, epochs=1):
        self.path, self.epochs = path, epochs

    def on_epoch_end(self, run):
        if run.epoch == self.epochs:
            artifacts.save_checkpoint(self.path, checkpoint.state_dict(run, 1, "native"))
            raise KeyboardInterrupt


def _resumed(run: Distillation, path) -> Distillation:
    checkpoint.load_state_dict(run, artifacts.load_checkpoint(path), 1)
    return run


W = "net.1.weight"


def test_known_init_nets_stay_fixed_while_the_set_learns(blobs, runtime):
    run = _run(blobs, runtime)
    assert isinstance(run.nets, FixedNets) and run.nets.total == 2
    before = {k: v.clone() for k, v in run.nets.params.items()}
    images, raw_lrs = run.learned.images.detach().clone(), run.learned.raw_lrs.detach().clone()
    seen = _record_samples(run)
    for _ in range(2):
        run.step(blobs.train.x[:32], blobs.train.y[:32])
    assert all(torch.equal(before[k], run.nets.params[k]) for k in before)
    assert all(torch.equal(seen[0][k], seen[1][k]) and torch.equal(seen[0][k], before[k]) for k in before)
    assert not torch.equal(images, run.learned.images) and not torch.equal(raw_lrs, run.learned.raw_lrs)
    assert run.iteration == 2


def test_unknown_init_draws_fresh_nets(blobs, runtime):
    run = _run(blobs, runtime, nets="unknown_init", n_nets=2)
    assert isinstance(run.nets, FreshNets)
    seen = _record_samples(run)
    for _ in range(2):
        run.step(blobs.train.x[:32], blobs.train.y[:32])
    assert len(seen) == 2 and seen[0][W].shape[0] == 2
    assert not torch.equal(seen[0][W], seen[1][W])
    assert not torch.equal(seen[0][W][0], seen[0][W][1])


@pytest.mark.parametrize("nets", ["known_init", "unknown_init"])
def test_same_seed_same_result(blobs, runtime, nets):
    a, b, c = (_run(blobs, runtime, seed=s, nets=nets).run() for s in (3, 3, 4))
    assert torch.equal(a.images, b.images) and torch.equal(a.lrs, b.lrs)
    assert not torch.equal(a.images, c.images)


def _scores(history):
    """The validations of a run without their wall times, which differ from run to run."""
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history.evaluations]


@pytest.mark.parametrize("nets", ["known_init", "unknown_init"])
def test_resume_from_checkpoint_continues_exactly(blobs, runtime, tmp_path, nets):
    straight_run = _run(blobs, runtime, epochs=3, nets=nets)
    straight = straight_run.run()
    with pytest.raises(KeyboardInterrupt):
        _run(blobs, runtime, epochs=3, nets=nets).run([StopAfter(tmp_path / "ckpt.pt")])
    # built from another seed: the learned tensors, the networks and the stream must all come
    # from the checkpoint (only the scoring networks of unknown_init follow the run seed)
    resumed = _resumed(_run(blobs, runtime, epochs=3, nets=nets, seed=9), tmp_path / "ckpt.pt")
    assert (resumed.epoch, resumed.iteration) == (1, 3)
    out = resumed.run()
    assert resumed.iteration == straight_run.iteration == 9
    torch.testing.assert_close(out.images, straight.images, rtol=0, atol=0)
    torch.testing.assert_close(out.lrs, straight.lrs, rtol=0, atol=0)
    assert resumed.history.losses == straight_run.history.losses
    resumed_scores, straight_scores = _scores(resumed.history), _scores(straight_run.history)
    assert resumed_scores[0] == straight_scores[0]  # from the checkpoint
    assert len(resumed_scores) == len(straight_scores) == 4
    assert resumed.history.evaluations[0]["seconds"] > 0  # its wall time, kept across the resume
    if nets == "known_init":
        assert resumed.nets.seeds == straight_run.nets.seeds
        assert resumed_scores == straight_scores


def test_a_checkpoint_of_another_group_size_is_refused(blobs, runtime, tmp_path):
    from datadistill.errors import ArtifactError

    with pytest.raises(KeyboardInterrupt):
        _run(blobs, runtime, epochs=3).run([StopAfter(tmp_path / "ckpt.pt")])
    with pytest.raises(ArtifactError, match="made by 1 process.*this run has 2"):
        checkpoint.load_state_dict(_run(blobs, runtime), artifacts.load_checkpoint(tmp_path / "ckpt.pt"), 2)


def test_learned_labels_start_at_their_class_move_and_resume(blobs, runtime, tmp_path):
    fresh = _run(blobs, runtime, learn_labels=True)
    classes = fresh.learned.labels
    start = fresh.learned.targets().detach().clone()
    assert start.shape == (2, 3, 3) and start.is_floating_point()
    assert torch.equal(start.argmax(-1), classes)
    # (nearly) one-hot: all but a sliver of each target on the image's own class
    torch.testing.assert_close(start, F.one_hot(classes, 3).to(start.dtype), rtol=0, atol=0.02)
    fresh.step(blobs.train.x[:32], blobs.train.y[:32])
    label_tensor = fresh.learned.tensors()[-1]
    assert label_tensor.grad.abs().sum() > 0 and len(fresh.learned.tensors()) == 3
    assert not torch.equal(fresh.learned.targets(), start)

    fixed = _run(blobs, runtime, epochs=2).run()
    straight_run = _run(blobs, runtime, epochs=2, learn_labels=True)
    straight = straight_run.run()
    assert fixed.labels.dtype == torch.int64 and fixed.labels.shape == (2, 3)
    labels = straight.labels
    assert labels.shape == (2, 3, 3) and labels.is_floating_point()
    assert not torch.allclose(labels, start, atol=1e-3)  # they were learned
    assert torch.equal(straight.hard_labels, fixed.labels)  # and still favour their own class here

    with pytest.raises(KeyboardInterrupt):
        _run(blobs, runtime, epochs=2, learn_labels=True).run([StopAfter(tmp_path / "ckpt.pt")])
    out = _resumed(_run(blobs, runtime, epochs=2, learn_labels=True), tmp_path / "ckpt.pt").run()
    torch.testing.assert_close(out.labels, labels, rtol=0, atol=0)
    torch.testing.assert_close(out.images, straight.images, rtol=0, atol=0)


@pytest.mark.parametrize("learn_labels", [False, True])
def test_distillation_learns(blobs, runtime, learn_labels):
    events = []

    class Record(Callback):
        def on_evaluation(self, run, result):
            events.append(result.mean)

    run = _run(blobs, runtime, epochs=8, lr=0.05, learn_labels=learn_labels)
    run.run([Record()])
    assert len(events) == 9 and len(run.history.evaluations) == 9  # before every epoch, and at the end
    assert [e["epoch"] for e in run.history.evaluations] == list(range(9))
    assert events[-1] >= 0.95 and events[-1] > events[0] + 0.3
    assert run.history.losses[-1]["loss"] < run.history.losses[0]["loss"]


def _chunking_pool(model) -> ChunkPool:
    pool = ChunkPool(model, workers=2, max_chunk=16, min_chunk=8)
    assert len(pool.chunk_bounds(100)) == 8  # the batch of 100 really is split
    return pool


@pytest.mark.parametrize("n_nets", [1, 3])
def test_two_phase_chunked_step_equals_one_backward(f64, blobs, runtime, n_nets):
    """The method's surrogate objective (real batch split over threads, its gradient pushed
    through the unroll) has the gradient of the mean unrolled loss, one plain backward."""
    run = _run(blobs, runtime, nets="unknown_init", n_nets=n_nets, learn_labels=True)
    method, learned = run.method, run.learned
    assert learned.images.dtype == torch.float64
    method.pool.close()
    method.pool = _chunking_pool(method.model)
    nets = run.nets.sample(torch.Generator().manual_seed(0))
    x, y = blobs.train.x[:100].double(), blobs.train.y[:100]
    direct = batched_unrolled_loss(method.model, nets, learned.images, learned.targets(), learned.lrs(), x, y).mean()
    want = torch.autograd.grad(direct, learned.tensors())
    out = method.loss(learned, nets, x, y, n_nets)
    got = torch.autograd.grad(out.objective, learned.tensors())
    torch.testing.assert_close(out.value, direct.detach(), rtol=1e-12, atol=1e-12)
    for g, w in zip(got, want, strict=True):
        assert w.abs().sum() > 0
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    method.pool.close()


def test_weighted_chunked_step_equals_the_weighted_mean_backward(f64, blobs, runtime):
    """With the attack's relabelling and weight (``Relabel(attack_class, target_class,
    attack_weight)``), the surrogate's gradient is that of
    mean over networks of sum_i a_i CE(f(x_i), y'_i) / sum_i a_i, written out directly."""
    relabel = Relabel(attack_class=0, target_class=1, attack_weight=4.0)
    run = _run(blobs, runtime, nets="unknown_init", n_nets=2, relabel=relabel)
    method, learned = run.method, run.learned
    method.pool.close()
    method.pool = _chunking_pool(method.model)
    nets = run.nets.sample(torch.Generator().manual_seed(0))
    x, y = blobs.train.x[:100].double(), blobs.train.y[:100]
    weights, wanted = relabel.weights(y), relabel.labels(y)
    assert sorted(set(weights.tolist())) == [1.0, 4.0] and (weights == 4.0).sum() == (y == 0).sum()
    assert torch.equal(wanted, torch.where(y == 0, 1, y)) and (y == 0).any()
    assert Relabel(0, 1, 1.0).weights(y) is None and torch.equal(Relabel().labels(y), y)

    trained = batched_unroll(method.model, nets, learned.images, learned.targets(), learned.lrs())
    direct = sum((weights * F.cross_entropy(functional_call(method.model, {k: v[i] for k, v in trained.items()},
                                                            (x,)), wanted, reduction="none")).sum() / weights.sum()
                 for i in range(2)) / 2
    want = torch.autograd.grad(direct, learned.tensors())
    out = method.loss(learned, nets, x, y, 2)
    got = torch.autograd.grad(out.objective, learned.tensors())
    torch.testing.assert_close(out.value, direct.detach(), rtol=1e-12, atol=1e-12)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    # the weights and the relabelling each change the objective
    unweighted = real_batch_gradient(method.pool, trained, x, wanted, 2)[0]
    plain = real_batch_gradient(method.pool, trained, x, y, 2)[0]
    assert abs(float(unweighted - out.value)) > 1e-3 and abs(float(plain - unweighted)) > 1e-3
    method.pool.close()


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_outer_lr_follows_the_schedule_per_iteration(blobs, runtime, schedule):
    outer = OuterConfig(epochs=4, schedule=schedule, decay_epochs=1, decay_factor=0.5, lr=0.1,
                        step_size_lr=0.02, batch_size=40)
    run = _run(blobs, runtime, nets="known_init", n_nets=1, steps=1, synthetic_epochs=1, outer=outer)
    assert run.iterations_per_epoch == 3
    seen = []
    for _ in range(12):
        images_group, step_size_group = run.optimizer.param_groups
        assert images_group["params"] == [run.learned.images]
        assert step_size_group["params"] == [run.learned.raw_lrs]
        # the step sizes' own rate follows the same schedule
        assert step_size_group["lr"] == pytest.approx(images_group["lr"] * 0.2)
        seen.append(images_group["lr"])
        run.step(blobs.train.x[:40], blobs.train.y[:40])
    if schedule == "step":  # halved after every 3 iterations (one epoch)
        assert seen == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3 + [0.0125] * 3)
    else:  # from lr down a half cosine, halfway at the middle of the run
        assert seen[0] == pytest.approx(0.1) and seen[6] == pytest.approx(0.05)
        assert all(a > b for a, b in zip(seen, seen[1:])) and seen[-1] < 0.002


@pytest.mark.parametrize("beta1", [0.5, 0.9])
def test_adam_beta1_is_the_outer_optimisers(blobs, runtime, beta1):
    outer = OuterConfig(epochs=1, lr=0.1, step_size_lr=0.1, batch_size=40, adam_beta1=beta1)
    run = _run(blobs, runtime, nets="known_init", n_nets=1, steps=1, synthetic_epochs=1, outer=outer)
    assert [g["betas"] for g in run.optimizer.param_groups] == [(beta1, 0.999)] * 2
    with pytest.raises(ConfigError, match="adam_beta1"):
        OuterConfig(adam_beta1=1.0)


class ScriptedScores:
    """A validation that scores the k-th snapshot it sees ``scores[k]`` and keeps the snapshots."""

    def __init__(self, scores):
        self.scores, self.seen = list(scores), []

    def __call__(self, synthetic):
        self.seen.append(synthetic.images.clone())
        return EvalResult((self.scores[len(self.seen) - 1],))


def _scripted(blobs, runtime, scores, keep_best=True, epochs=3) -> Distillation:
    run = _run(blobs, runtime, epochs=epochs)
    run.validate, run.keep_best = ScriptedScores(scores), keep_best
    return run


@pytest.mark.parametrize("keep_best", [True, False])
def test_keep_best_gives_the_snapshot_that_validated_best(blobs, runtime, keep_best):
    # validated at epochs 0, 1, 2 and the end (3); the second snapshot scores best
    run = _scripted(blobs, runtime, [0.2, 0.9, 0.5, 0.4], keep_best)
    out = run.run()
    seen = run.validate.seen
    assert len(seen) == 4 and not torch.equal(seen[1], seen[3])
    assert torch.equal(out.images, seen[1] if keep_best else seen[3])
    assert run.selected_evaluation()["epoch"] == (1 if keep_best else 3)


def test_keep_best_survives_a_resume(blobs, runtime, tmp_path):
    scores = [0.2, 0.9, 0.5, 0.4]
    straight = _scripted(blobs, runtime, scores).run()
    with pytest.raises(KeyboardInterrupt):  # killed after epoch 2, its best (epoch 1) behind it
        _scripted(blobs, runtime, scores).run([StopAfter(tmp_path / "ckpt.pt", epochs=2)])
    resumed = _resumed(_scripted(blobs, runtime, scores[2:]), tmp_path / "ckpt.pt")
    out = resumed.run()
    assert torch.equal(out.images, straight.images) and resumed.selected_evaluation()["epoch"] == 1


def test_ema_decay_gives_the_moving_average_of_every_iterations_tensors(blobs, runtime):
    decay = 0.8
    outer = OuterConfig(epochs=2, lr=0.05, step_size_lr=0.05, batch_size=32, ema_decay=decay)
    run = _run(blobs, runtime, learn_labels=True, outer=outer)
    expected = [t.detach().clone() for t in run.learned.tensors()]
    assert len(expected) == 3  # images, raw step sizes, label logits

    class Follow(Callback):  # the recurrence a_k = d a_(k-1) + (1 - d) x_k, by hand
        def on_iteration(self, run, loss):
            for i, now in enumerate(run.learned.tensors()):
                expected[i] = decay * expected[i] + (1 - decay) * now.detach()

    run.validate = ScriptedScores([0.5] * 3)
    out = run.run([Follow()])
    assert run.iteration > 5
    torch.testing.assert_close(out.images, expected[0])
    torch.testing.assert_close(out.lrs, expected[1].exp())
    torch.testing.assert_close(out.labels, expected[2].softmax(-1))
    # validated on the average too, and the average is not where the optimiser stands
    torch.testing.assert_close(run.validate.seen[-1], expected[0])
    assert not torch.allclose(out.images, run.learned.images.detach())
    with pytest.raises(ConfigError, match="ema_decay"):
        OuterConfig(ema_decay=1.0)


def test_ema_survives_a_resume(blobs, runtime, tmp_path):
    outer = OuterConfig(epochs=3, lr=0.05, step_size_lr=0.05, batch_size=32, ema_decay=0.9)
    straight = _run(blobs, runtime, outer=outer).run()
    with pytest.raises(KeyboardInterrupt):
        _run(blobs, runtime, outer=outer).run([StopAfter(tmp_path / "ckpt.pt", epochs=2)])
    resumed = _resumed(_run(blobs, runtime, outer=outer), tmp_path / "ckpt.pt").run()
    assert torch.equal(resumed.images, straight.images) and torch.equal(resumed.lrs, straight.lrs)
