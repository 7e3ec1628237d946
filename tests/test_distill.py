import torch

from datadistill import artifacts, models
from datadistill.config import NetsConfig, OuterConfig, RunConfig, SyntheticConfig
from datadistill.distill import Callback, Distillation


def _run(dataset, seed=1, epochs=2, nets=NetsConfig("known_init", 2, "same_as_train", 2), lr=0.05):
    cfg = RunConfig(synthetic=SyntheticConfig(steps=2, epochs=2),
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


def test_distillation_learns(blobs):
    events = []

    class Record(Callback):
        def on_evaluation(self, run, result):
            events.append(result.mean)

    run = _run(blobs, epochs=8, lr=0.05)
    run.run([Record()])
    assert len(events) == 9  # before every epoch, and at the end
    assert events[-1] >= 0.95 and events[-1] > events[0] + 0.3
    assert run.history.losses[-1]["loss"] < run.history.losses[0]["loss"]
