"""Matching training trajectories (``--method mtt``): the loss and its gradients, the expert zoo,
and a tiny end-to-end run on the bundled digits."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from datadistill import artifacts, models, weights
from datadistill.augment import augmenter
from datadistill.commands import main
from datadistill.config import build_config
from datadistill.data import class_balanced_sample, shuffled_batches
from datadistill.errors import ArtifactError, ConfigError
from datadistill.evaluate import evaluate_from_scratch
from datadistill.jobs import distill
from datadistill.jobs import zoo as zoo_job
from datadistill.jobs.common import load_for, model_for
from datadistill.methods import method_class
from datadistill.methods.base import Setup
from datadistill.methods.mtt import ExpertSegments, Mtt, load_experts, matching_loss
from datadistill.nets import eval_seeds, fresh_nets, zoo_seeds
from datadistill.runtime import Runtime
from datadistill.synthetic import LearnableSet, SyntheticSet
from datadistill.zoo import EXPERT_LR, train_trajectories


# -- the loss ---------------------------------------------------------------------------------------

def _mlp_forward(p, x):
    """The MLP of ``models`` written out: two ReLU layers and a linear head."""
    h = torch.relu(x.flatten(1) @ p["net.1.weight"].T + p["net.1.bias"])
    h = torch.relu(h @ p["net.3.weight"].T + p["net.3.bias"])
    return h @ p["net.5.weight"].T + p["net.5.bias"]


def _direct_loss(start, target, x, y, lr, steps):
    """MTT's loss by hand, one network, plain autograd: ``steps`` GD steps on (x, y) at ``lr``."""
    w = {k: v.clone().requires_grad_() for k, v in start.items()}
    for _ in range(steps):
        loss = F.cross_entropy(_mlp_forward(w, x), y)
        g = torch.autograd.grad(loss, list(w.values()))
        w = {k: (v - lr * gk).detach().requires_grad_() for (k, v), gk in zip(w.items(), g)}
    num = sum(((w[k] - target[k]) ** 2).sum() for k in w)
    den = sum(((start[k] - target[k]) ** 2).sum() for k in w)
    return float((num / den).detach())


@pytest.fixture
def tiny():
    """A float64 MLP (8x8 inputs, 4 hidden units, 3 classes), a learned set of 2 images per class,
    and two expert segments: random starts and targets near them."""
    model = models.build_model("MLP", 1, 8, 3, width=4).double()
    g = torch.Generator().manual_seed(0)
    starts = [{k: v.double() for k, v in weights.init_params(model, "xavier", 1.0, s).items()} for s in (1, 2)]
    targets = [{k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in s.items()}
               for s in starts]
    images = torch.randn(1, 6, 1, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(2).unsqueeze(0)
    learned = LearnableSet(images, labels, torch.tensor([0.05], dtype=torch.float64), 3, (0.0,), (1.0,))
    method = Mtt(model, Runtime("cpu"), ipc=2, init_lr=0.05, syn_steps=3)
    stack = lambda ps: {k: torch.stack([p[k] for p in ps]) for k in ps[0]}  # noqa: E731
    return model, method, learned, starts, targets, stack


def test_the_loss_is_the_papers_normalised_distance(tiny):
    model, method, learned, starts, targets, stack = tiny
    x, y = learned.images[0].detach(), learned.labels[0]
    direct = [_direct_loss(s, t, x, y, 0.05, 3) for s, t in zip(starts, targets)]
    # one segment (plain reverse mode) and two at once (vmap): the mean over the iteration's segments
    one = method.loss(learned, {"start": stack(starts[:1]), "target": stack(targets[:1])}, None, None, 1)
    assert one.value.dtype == torch.float64
    assert float(one.value) == pytest.approx(direct[0], rel=1e-10)
    both = method.loss(learned, {"start": stack(starts), "target": stack(targets)}, None, None, 2)
    assert float(both.value) == pytest.approx(sum(direct) / 2, rel=1e-10)
    torch.testing.assert_close(both.objective.detach(), both.value)
    # a segment that lands on its target costs 0; staying at the start costs 1
    stay = {k: v.detach() for k, v in stack(starts[:1]).items()}
    assert float(matching_loss(stay, stay, stack(targets[:1]))) == pytest.approx(1.0)
    assert float(matching_loss(stack(targets[:1]), stay, stack(targets[:1]))) == 0.0


@pytest.mark.parametrize("n_segments", [1, 2])
def test_the_gradient_wrt_images_and_log_step_size_matches_finite_differences(tiny, n_segments):
    model, method, learned, starts, targets, stack = tiny
    nets = {"start": stack(starts[:n_segments]), "target": stack(targets[:n_segments])}

    def loss(images, raw_lr):
        learned.images, learned.raw_lrs = images, raw_lr  # the learned leaves, as the outer loop sees them
        return method.loss(learned, nets, None, None, n_segments).objective

    images = learned.images.detach().clone().requires_grad_()
    raw_lr = learned.raw_lrs.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(loss, (images, raw_lr), eps=1e-6, atol=1e-7, rtol=1e-5)


# -- the experts ----------------------------------------------------------------------------------

def _given(tmp_path, n, epochs=3, batch_size=200, lr=EXPERT_LR) -> dict:
    return {"mode": "train", "data.dataset": "blobs", "model.arch": "MLP", "model.width": 16,
            "outer.epochs": epochs, "outer.batch_size": batch_size, "outer.lr": lr,
            "nets.n_nets": n, "results_dir": str(tmp_path)}


def _zoo_config(tmp_path, n, **kw):
    return build_config(_given(tmp_path, n, **kw), "train-zoo")


@pytest.fixture
def blobs_zoo(blobs, monkeypatch):
    monkeypatch.setattr(zoo_job, "normalise_config", lambda c: c)
    return lambda config, **kw: zoo_job.train_zoo(config, dataset=blobs, **kw)


def test_an_expert_zoo_keeps_every_epochs_weights_and_round_trips(tmp_path, blobs, blobs_zoo):
    config = _zoo_config(tmp_path, 3)
    experts, path = blobs_zoo(config, trajectories=True)
    assert path == tmp_path / "zoo" / "blobs-MLP-xavier-train-experts" / "zoo.pt"
    raw = torch.load(path, weights_only=True)  # a plain dict of tensors and plain values
    model = models.build_model("MLP", 1, 8, 3, width=16)
    init = fresh_nets(model, "xavier", 1.0, zoo_seeds("train", 0, 3), "cpu")
    for k, v in raw["trajectories"].items():
        assert v.shape == (3, 4, *init[k].shape[1:])  # (n, epochs + 1, ...)
        torch.testing.assert_close(v[:, 0], init[k], rtol=0, atol=0)  # the seeded initialisation
        torch.testing.assert_close(v[:, -1], raw["params"][k], rtol=0, atol=0)  # the trained weights
    assert raw["config"]["trajectories"] is True and raw["config"]["optimizer"] == "sgd"
    loaded = artifacts.load_zoo(path)
    for k in init:
        torch.testing.assert_close(loaded.trajectories[k], experts.trajectories[k], rtol=0, atol=0)
    # a batch holds the whole split, so an epoch is one plain SGD step at 0.01, no momentum
    x, y = blobs.train.x, blobs.train.y
    w0 = {k: v[0].clone().requires_grad_() for k, v in init.items()}
    g = torch.autograd.grad(F.cross_entropy(torch.func.functional_call(model, w0, (x,)), y), list(w0.values()))
    for (k, v), gk in zip(w0.items(), g):
        torch.testing.assert_close(loaded.trajectories[k][0, 1], v.detach() - EXPERT_LR * gk)
    # the function itself, retrained from the same seeds and batch order: the same trajectories
    batches = torch.Generator().manual_seed(zoo_seeds("train", 0, 1)[0])
    again, traj = train_trajectories(model, init, blobs.train, 3, 200, batches)
    for k in init:
        torch.testing.assert_close(traj[k], loaded.trajectories[k], rtol=0, atol=0)
        torch.testing.assert_close(again[k], loaded.params[k], rtol=0, atol=0)


def test_experts_on_augmented_batches_live_apart_and_only_an_mtt_run_augmenting_alike_reads_them(
        tmp_path, blobs, blobs_zoo):
    plain_config = _zoo_config(tmp_path, 2)
    config = build_config({**_given(tmp_path, 2), "methods.augment": "dsa-noflip"}, "train-zoo")
    plain, plain_path = blobs_zoo(plain_config, trajectories=True)
    experts, path = blobs_zoo(config, trajectories=True)
    assert path.parent.name == "blobs-MLP-xavier-train-experts-dsa-noflip" and plain_path.parent != path.parent
    assert torch.load(path, weights_only=True)["config"]["augment"] == "dsa-noflip"
    # the same networks to start from; the first epoch (one batch, in the chunk's batch order) is
    # one SGD step on the batch transformed per image by a stream of its own, seeded alike
    seed = zoo_seeds("train", 0, 2)[0]
    x, y = next(iter(shuffled_batches(blobs.train, 200, torch.Generator().manual_seed(seed))))
    augmented = augmenter("dsa-noflip", siamese=False)(x, torch.Generator().manual_seed(seed))
    assert not torch.allclose(augmented, x)
    model = models.build_model("MLP", 1, 8, 3, width=16)
    for k, v in experts.trajectories.items():
        torch.testing.assert_close(v[:, 0], plain.trajectories[k][:, 0], rtol=0, atol=0)
    w0 = {k: v[0, 0].clone().requires_grad_() for k, v in experts.trajectories.items()}
    loss = F.cross_entropy(torch.func.functional_call(model, w0, (augmented,)), y)
    for (k, v), gk in zip(w0.items(), torch.autograd.grad(loss, list(w0.values()))):
        torch.testing.assert_close(experts.trajectories[k][0, 1], v.detach() - EXPERT_LR * gk)
        assert not torch.allclose(experts.trajectories[k][0, 1], plain.trajectories[k][0, 1])

    def mtt_config(augment):
        return build_config({"method": "mtt", "data.dataset": "blobs", "model.arch": "MLP", "model.width": 16,
                             "model.init": "xavier", "methods.augment": augment, "results_dir": str(tmp_path)})
    read, _ = load_experts(mtt_config("dsa-noflip"), model)
    torch.testing.assert_close(read["net.1.weight"], experts.trajectories["net.1.weight"], rtol=0, atol=0)
    read, _ = load_experts(mtt_config("none"), model)
    torch.testing.assert_close(read["net.1.weight"], plain.trajectories["net.1.weight"], rtol=0, atol=0)
    with pytest.raises(ArtifactError, match="train-zoo --trajectories .*--augment dsa "):
        load_experts(mtt_config("dsa"), model)


def test_experts_written_before_augmentation_was_recorded_still_match(tmp_path, blobs_zoo):
    config = _zoo_config(tmp_path, 2)
    experts, path = blobs_zoo(config, trajectories=True)
    older = dataclasses.replace(experts, config={k: v for k, v in experts.config.items() if k != "augment"})
    artifacts.save_zoo(path, older)
    assert len(blobs_zoo(_zoo_config(tmp_path, 2), trajectories=True)[0]) == 2  # found, not refused


def test_experts_start_from_the_mtt_presets_init_unless_init_says_otherwise(tmp_path):
    """train-zoo --trajectories writes where an mtt run of the preset looks (its init in the folder
    name); --init overrides it, and an ordinary zoo keeps the global default."""
    common = ["train-zoo", "--dataset", "digits", "--arch", "MLP", "--width", "8", "--n_nets", "1", "--epochs", "1",
              "--no_progress", "--zoo_dir", str(tmp_path)]
    assert main([*common, "--trajectories"]) == 0
    assert main([*common, "--trajectories", "--init", "xavier"]) == 0
    assert main(common) == 0
    preset_init = build_config({"method": "mtt"}).model.init
    assert preset_init == "default" and build_config({"mode": "train"}, "train-zoo").model.init == "xavier"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"digits-MLP-{preset_init}-train-experts", "digits-MLP-xavier-train", "digits-MLP-xavier-train-experts"]


def test_train_zoo_refuses_augment_without_trajectories(tmp_path, capsys):
    assert main(["train-zoo", "--dataset", "digits", "--augment", "dsa", "--results_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--augment applies to train-zoo --trajectories only" in err
    assert not any(tmp_path.iterdir())


def test_expert_and_ordinary_zoos_never_mix(tmp_path, blobs_zoo):
    config = _zoo_config(tmp_path, 2)
    experts, expert_path = blobs_zoo(config, trajectories=True)
    ordinary, path = blobs_zoo(config)  # the same settings: another folder, trained anew with Adam
    assert path.parent.name == "blobs-MLP-xavier-train" and expert_path.parent.name.endswith("-experts")
    assert ordinary.trajectories is None and "trajectories" not in torch.load(path, weights_only=True)
    assert not torch.equal(ordinary.params["net.1.weight"], experts.params["net.1.weight"])
    # an ordinary zoo put where the experts live is refused, whichever way round
    artifacts.save_zoo(expert_path, ordinary)
    with pytest.raises(ArtifactError, match="other settings"):
        blobs_zoo(_zoo_config(tmp_path, 3), trajectories=True)
    with pytest.raises(ArtifactError, match="join"):
        type(experts).concat([experts, ordinary])
    model = models.build_model("MLP", 1, 8, 3, width=16)
    with pytest.raises(ArtifactError, match="no trajectories"):
        load_experts(config, model)


def test_experts_of_another_layout_say_to_train_them_again(tmp_path, blobs_zoo):
    # the same settings, but the class's layout changed since (as ConvNet's 28-pixel padding did)
    config = _zoo_config(tmp_path, 2)
    blobs_zoo(config, trajectories=True)
    other_layout = models.build_model("MLP", 1, 8, 3, width=12)
    with pytest.raises(ArtifactError, match="other shapes.*train-zoo --trajectories"):
        load_experts(config, other_layout)
    assert load_experts(config, models.build_model("MLP", 1, 8, 3, width=16))[0]  # the layout they fit


def test_segments_are_drawn_within_the_trajectories(tmp_path, blobs_zoo):
    experts, _ = blobs_zoo(_zoo_config(tmp_path, 2, epochs=4), trajectories=True)
    traj = experts.trajectories
    source = ExpertSegments(traj, expert_epochs=2, max_start_epoch=3, device="cpu")
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        state = g.get_state()
        nets = source.sample(g)
        g2 = torch.Generator()
        g2.set_state(state)
        (e,), (t,) = source.draw(g2)
        seen.add((int(e), int(t)))
        for k, v in traj.items():
            assert nets["start"][k].shape == (1, *v.shape[2:])
            torch.testing.assert_close(nets["start"][k][0], v[e, t], rtol=0, atol=0)
            torch.testing.assert_close(nets["target"][k][0], v[e, t + 2], rtol=0, atol=0)
    assert seen == {(e, t) for e in range(2) for t in range(3)}
    with pytest.raises(ConfigError, match=r"--max_start_epoch 4 with --expert_epochs 2 needs experts trained for "
                                          r"5 epochs .* but these were trained for 4; .*--epochs 5\)$"):
        ExpertSegments(traj, expert_epochs=2, max_start_epoch=4, device="cpu")


def test_the_set_is_one_batch_of_real_images_and_one_step_size(blobs):
    config = build_config({"method": "mtt", "synthetic.ipc": 4, "synthetic.init_lr": 0.02})
    assert config.preset == "mtt" and config.synthetic.image_init == "real"
    # the preset's oneDNN for its unrolled steps yields to an explicit --conv_backend
    assert config.conv_backend == "mkldnn"
    assert build_config({"method": "mtt", "conv_backend": "native"}).conv_backend == "native"
    model = models.build_model("MLP", 1, 8, 3, width=16)
    method = method_class("mtt").from_config(config, model, Runtime("cpu"))
    assert method.protocol == "from_scratch"
    setup = Setup(model, blobs.train, None, 3, (0.0,), (1.0,), torch.device("cpu"),
                  torch.Generator().manual_seed(0), 0)
    learned = method.initial(setup)
    assert learned.images.shape == (1, 12, 1, 8, 8) and learned.labels.tolist() == [[0] * 4 + [1] * 4 + [2] * 4]
    assert learned.lrs().tolist() == pytest.approx([0.02])
    for image, label in zip(learned.images[0], learned.labels[0]):  # real training images of their class
        match = (blobs.train.x == image).flatten(1).all(1)
        assert match.any() and (blobs.train.y[match] == label).all()
    images, labels, lrs = method.step_batches(learned)
    assert images.shape[0] == 1 and lrs.shape == (config.methods.syn_steps,)
    # with --augment dsa every step sees its own augmentation of the set, differentiably
    augmented = method_class("mtt").from_config(build_config({"method": "mtt", "synthetic.ipc": 4,
                                                              "methods.augment": "dsa"}), model, Runtime("cpu"))
    images, labels, lrs = augmented.step_batches(learned)
    assert images.shape == (config.methods.syn_steps, 12, 1, 8, 8) and labels.shape == (config.methods.syn_steps, 12)
    assert torch.autograd.grad(images.sum(), learned.images)[0].abs().sum() > 0


def test_missing_experts_say_how_to_train_them(tmp_path):
    config = build_config({"method": "mtt", "data.dataset": "blobs", "model.arch": "MLP", "results_dir": str(tmp_path)})
    model = models.build_model("MLP", 1, 8, 3)
    with pytest.raises(ArtifactError, match="train-zoo --trajectories --dataset blobs --arch MLP") as err:
        load_experts(config, model)
    assert str(err.value).endswith(f"--results_dir {tmp_path} (or --zoo_dir {tmp_path / 'zoo'})")
    # a --zoo_dir given is the one place this run reads: the only one named
    zoo_dir = dataclasses.replace(config, zoo_dir=str(tmp_path / "z"))
    with pytest.raises(ArtifactError) as err:
        load_experts(zoo_dir, model)
    assert str(err.value).endswith(f"--init default --zoo_dir {tmp_path / 'z'}") and "--results_dir" not in str(err.value)


# -- end to end ----------------------------------------------------------------------------------

def test_mtt_on_digits_beats_random_real_images(tmp_path, capsys):
    """Two experts of 3 epochs, one image per class distilled for one short epoch: the set trains
    fresh networks from scratch better than random real images of each class do, scored by the
    same networks under the same protocol: better than the real images the run started from (a
    paired comparison) and than independent draws on average (random real images at one per class
    vary by several points from draw to draw, hence four draws)."""
    zoo = ["--dataset", "digits", "--arch", "ConvNet", "--width", "8", "--zoo_dir", str(tmp_path / "zoo")]
    assert main(["train-zoo", "--trajectories", "--n_nets", "2", "--epochs", "3", "--batch_size", "32",
                 "--no_progress", *zoo]) == 0
    assert "expert trajectories of 2 ConvNet networks" in capsys.readouterr().out
    # from the mtt preset's init, which the run below looks its experts up by
    assert (tmp_path / "zoo" / "digits-ConvNet-default-train-experts" / "zoo.pt").is_file()
    n_nets, seed, epochs = 4, 3, 100
    config = build_config({"method": "mtt", "data.dataset": "digits", "model.arch": "ConvNet", "model.width": 8,
                           "synthetic.ipc": 1, "methods.syn_steps": 10, "methods.expert_epochs": 2,
                           "methods.max_start_epoch": 2, "outer.epochs": 1, "outer.batch_size": 32, "outer.lr": 0.1,
                           "evaluation.scratch_epochs": epochs, "nets.test_n_nets": n_nets, "seed": seed,
                           "results_dir": str(tmp_path / "mtt"), "zoo_dir": str(tmp_path / "zoo")})
    result = distill(config)
    assert result.metrics["protocol"] == "from_scratch" and result.metrics["mtt"]["experts"] == 2
    assert result.synthetic.images.shape == (1, 10, 1, 32, 32) and result.synthetic.lrs.shape == (1,)
    losses = [e["loss"] for e in result.metrics["history"]["losses"]]
    assert 0 < losses[-1] < 1  # closer to the experts' targets than standing still

    dataset = load_for(config)
    # 2 expert epochs of batches of 32, beside the set's 10 steps
    assert result.metrics["mtt"]["expert_steps"] == 2 * (len(dataset.train) // 32)
    model = model_for(config, dataset)
    assert config.model.init == "default"
    nets = fresh_nets(model, "default", 1.0, eval_seeds(seed, n_nets), "cpu")  # the run's scoring networks

    def scratch(images, labels):
        s = SyntheticSet(images, labels, torch.empty(0), dataset.mean, dataset.std, 10)
        return evaluate_from_scratch(model, s, nets, dataset.test, epochs, config.evaluation.scratch_lr,
                                     config.evaluation.scratch_batch_size,
                                     generator=torch.Generator().manual_seed(seed)).mean

    # the run's starting images: what Mtt.initial draws first from the run's stream
    setup = Setup(model, dataset.train, dataset.val, 10, dataset.mean, dataset.std, torch.device("cpu"),
                  torch.Generator().manual_seed(seed), seed)
    start = Mtt(model, Runtime("cpu"), ipc=1).initial(setup)
    started = scratch(start.images.detach(), start.labels)
    drawn = [scratch(*(t.unsqueeze(0) for t in class_balanced_sample(
        dataset.train, 1, 10, torch.Generator().manual_seed(200 + i)))) for i in range(4)]
    assert result.final.mean > started + 0.03, (result.final.mean, started)
    assert result.final.mean > sum(drawn) / len(drawn) + 0.03, (result.final.mean, drawn)
