import os
import stat

import pytest
import torch
from PIL import Image

from datadistill import RunConfig, artifacts, checkpoint
from datadistill.errors import ArtifactError
from datadistill.synthetic import SyntheticSet


def _set():
    g = torch.Generator().manual_seed(0)
    return SyntheticSet(torch.randn(2, 3, 1, 8, 8, generator=g), torch.arange(3).repeat(2, 1),
                        torch.tensor([0.1, 0.2, 0.3, 0.4]), (0.5,), (0.25,), 3, {"arch": "MLP"})


def test_distilled_file_round_trips_and_is_a_plain_dict(tmp_path):
    path = artifacts.save_distilled(tmp_path / "d.pt", _set())
    raw = torch.load(path, weights_only=True)
    assert raw["images"].shape == (2, 3, 1, 8, 8) and raw["lrs"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert raw["mean"] == [0.5] and raw["steps"] == 2 and raw["epochs"] == 2 and raw["arch"] == "MLP"
    back = artifacts.load_distilled(path)
    assert torch.equal(back.images, _set().images) and torch.equal(back.labels, _set().labels)
    assert back.meta["arch"] == "MLP"
    torch.testing.assert_close(back.denormalised(), (_set().images * 0.25 + 0.5).clamp(0, 1))


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        artifacts.load_distilled(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="cannot read .*not a PyTorch file of plain tensors"):
        artifacts.load_distilled(tmp_path / "junk.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ArtifactError, match="not a distilled set"):
        artifacts.load_distilled(tmp_path / "other.pt")
    with pytest.raises(ArtifactError, match="not a datadistill checkpoint"):
        artifacts.load_checkpoint(tmp_path / "other.pt")


def _refusal(path, load=artifacts.load_distilled) -> str:
    with pytest.raises(ArtifactError) as e:
        load(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message, message
    return message


def _soft(rows):
    return torch.tensor(rows).expand(2, 3, 3).clone()


@pytest.mark.parametrize("change, problem", [
    ({"images": None}, "lacks images (a distilled set holds images, labels, lrs, mean, std, num_classes)"),
    ({"labels": None, "num_classes": None}, "lacks labels, num_classes"),
    ({"images": "hello"}, "images is 'hello'; expected a float tensor of shape (steps, images per step, C, H, W)"),
    ({"images": torch.zeros(6, 1, 8, 8)}, "images is a float32 tensor of shape (6, 1, 8, 8); expected"),
    ({"images": torch.zeros(2, 3, 1, 8, 8, dtype=torch.int64)}, "images is an int64 tensor"),
    ({"images": torch.zeros(2, 3, 1, 8, 8).index_fill(0, torch.tensor([1]), float("nan"))},
     "images holds 192 NaN or infinite value(s)"),
    ({"labels": torch.zeros(1, 7, dtype=torch.int64)},
     "labels is an int64 tensor of shape (1, 7); expected class indices, an integer tensor (2, 3), or "
     "probability vectors, a float tensor (2, 3, 3)"),
    ({"labels": torch.ones(2, 3, dtype=torch.bool)}, "labels is a bool tensor of shape (2, 3)"),
    ({"labels": torch.tensor([[0, 1, 3], [0, 1, 2]])}, "labels holds class 3; expected classes 0 to 2"),
    ({"labels": torch.tensor([[0, 1, 2], [-1, 1, 2]])}, "labels holds class -1"),
    ({"labels": torch.zeros(2, 3, 4)}, "labels is a float32 tensor of shape (2, 3, 4)"),
    ({"labels": _soft([0.5, 0.4, 0.0])}, "labels holds float rows that are not probability vectors"),
    ({"labels": _soft([1.5, -0.5, 0.0])}, "not probability vectors"),
    ({"lrs": torch.full((3,), 0.1)}, "lrs is a float32 tensor of shape (3,); expected a 1-D float tensor of "
                                     "steps x epochs step sizes (2 x E), or an empty one"),
    ({"lrs": torch.full((2, 2), 0.1)}, "lrs is a float32 tensor of shape (2, 2)"),
    ({"lrs": [0.1, 0.2]}, "lrs is [0.1, 0.2]"),
    ({"lrs": torch.tensor([0.1, -0.5])}, "lrs holds the step size -0.5; expected positive, finite ones"),
    ({"lrs": torch.tensor([0.1, float("inf")])}, "lrs holds the step size inf"),
    ({"mean": [0.5, 0.5]}, "mean is [0.5, 0.5]; expected a list of 1 finite numbers, one per image channel"),
    ({"std": [0.0]}, "std is [0.0]; expected a list of 1 positive, finite numbers"),
    ({"std": "wide"}, "std is 'wide'"),
    ({"num_classes": 0}, "num_classes is 0; expected a positive integer"),
    ({"num_classes": "three"}, "num_classes is 'three'"),
    ({"steps": 3}, "steps is 3, but images and lrs make it 2"),
    ({"epochs": 5}, "epochs is 5, but images and lrs make it 2"),
    ({"config": "fast"}, "config is 'fast'; expected a dict"),
    ({"arch": 7}, "arch is 7; expected a str"),
    ({"factor": 2}, "factor is 2 with 3 images per step; expected a positive integer f whose f x f tiles"),
    ({"stored_images": torch.zeros(2, 1, 1, 8, 8)},
     "stored_images is a float32 tensor of shape (2, 1, 1, 8, 8); expected a float tensor (2, 3, 1, 8, 8)"),
])
def test_a_distilled_file_with_a_missing_or_malformed_field_is_refused_in_one_line(tmp_path, change, problem):
    d = _set().to_dict()
    for key, value in change.items():
        if value is None:
            del d[key]
        else:
            d[key] = value
    torch.save(d, tmp_path / "d.pt")
    assert problem in _refusal(tmp_path / "d.pt")


def test_a_distilled_file_in_every_documented_form_is_read(tmp_path):
    """Soft labels (S, N, K), no step sizes, any integer label type (made int64, as cross-entropy
    takes them), mean and std as tensors, and a file without the redundant steps and epochs."""
    d = _set().to_dict()
    d.update(labels=_soft([0.98, 0.01, 0.01]), lrs=torch.empty(0), epochs=0)
    torch.save(d, tmp_path / "soft.pt")
    soft = artifacts.load_distilled(tmp_path / "soft.pt")
    assert soft.labels.shape == (2, 3, 3) and soft.epochs == 0 and soft.hard_labels.eq(0).all()
    d = _set().to_dict()
    d.update(labels=d["labels"].int(), mean=torch.tensor([0.5]), std=torch.tensor([0.25]))
    del d["steps"], d["epochs"]
    torch.save(d, tmp_path / "int32.pt")
    hard = artifacts.load_distilled(tmp_path / "int32.pt")
    assert hard.labels.dtype == torch.int64 and torch.equal(hard.labels, _set().labels)
    assert (hard.mean, hard.std, hard.steps, hard.epochs) == ((0.5,), (0.25,), 2, 2)


class _Opaque:
    """An object torch.load(weights_only=True) refuses to build."""


def test_unreadable_files_are_refused_in_one_short_line(tmp_path):
    """Torch's own words (miniz's paragraph, the weights_only advice, a bare "101") stay out."""
    good = artifacts.save_distilled(tmp_path / "good.pt", _set()).read_bytes()
    (tmp_path / "text.pt").write_text("hello\n")
    (tmp_path / "truncated.pt").write_bytes(good[:len(good) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    Image.new("RGB", (4, 4)).save(tmp_path / "picture.png")
    torch.save(_Opaque(), tmp_path / "zipped.pt")
    expected = {"text.pt": "it is not the zip archive torch.save writes",
                "picture.png": "it is not the zip archive torch.save writes",
                "truncated.pt": "a truncated or damaged archive",
                "empty.pt": "the file is empty",
                "zipped.pt": "it holds objects other than tensors and plain values"}
    for name, reason in expected.items():
        message = _refusal(tmp_path / name)
        assert f"not a PyTorch file of plain tensors, or a damaged one ({reason}); expected a distilled.pt" in message
        assert len(message.replace(str(tmp_path / name), "")) < 200, message
    message = _refusal(tmp_path)
    assert message == f"distilled file {tmp_path} is a directory; expected a distilled.pt written by datadistill"


def _checkpoint_state():
    return {"config": RunConfig().to_dict(), "learned": [torch.zeros(2)], "averaged": None, "optimizer": {},
            "scheduler": {}, "generator": torch.Generator().get_state(), "nets": {}, "method": {},
            "world_size": 1, "conv_backend": None, "epoch": 1, "iteration": 3, "best": None,
            "history": {"evaluations": [], "losses": [], "seconds": 0.0}}


@pytest.mark.parametrize("change, problem", [
    ({"learned": None}, "lacks learned: damaged, or written by another version of datadistill"),
    ({"optimizer": None, "epoch": None}, "lacks optimizer, epoch: damaged"),
    ({"config": None}, "lacks config"),
    ({"config": [1]}, "holds a list as config: damaged"),
    ({"learned": {"images": torch.zeros(2)}}, "holds a dict as learned"),
    ({"learned": [[0.0, 1.0]]}, "holds learned values that are not tensors"),
    ({"history": {"losses": []}}, "history lacks evaluations, seconds: damaged"),
    ({"learned": [torch.tensor([0.0, float("nan")])]}, "holds NaN or infinite learned values: damaged"),
    ({"epoch": "two"}, "holds 'two' as epoch, not a whole number >= 0: damaged"),
    ({"iteration": -1}, "holds -1 as iteration, not a whole number >= 0"),
    ({"world_size": 0}, "holds 0 as world_size, not a whole number >= 1"),
    ({"conv_backend": "bogus"}, "holds an unknown conv_backend 'bogus': damaged"),
])
def test_a_checkpoint_with_a_missing_or_malformed_entry_is_refused_in_one_line(tmp_path, change, problem):
    state = _checkpoint_state()
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    path = artifacts.save_checkpoint(tmp_path / "checkpoint.pt", state)
    message = _refusal(path, lambda p: checkpoint.read_checkpoint(p, RunConfig()))
    assert problem in message and message.endswith("run without --resume to start afresh")


def test_a_whole_checkpoint_passes_the_resume_checks(tmp_path):
    path = artifacts.save_checkpoint(tmp_path / "checkpoint.pt", _checkpoint_state())
    assert checkpoint.read_checkpoint(path, RunConfig())["iteration"] == 3


def test_checkpoint_round_trips_with_its_format(tmp_path):
    state = {"epoch": 2, "learned": [torch.arange(3.0)], "history": {"losses": [{"epoch": 1, "loss": 0.5}]}}
    path = artifacts.save_checkpoint(tmp_path / "ckpt.pt", state)
    back = artifacts.load_checkpoint(path)
    assert back["format"] == artifacts.CHECKPOINT_FORMAT == "datadistill.checkpoint/2"
    assert back["epoch"] == 2 and torch.equal(back["learned"][0], torch.arange(3.0))
    assert back["history"] == state["history"]


def test_checkpoints_of_the_first_format_are_refused_in_one_line(tmp_path):
    """Format 1 (datadistill 0.1) is no longer migrated: resuming one must say so, not crash later."""
    torch.save({"format": "datadistill.checkpoint/1", "epoch": 3, "synthetic": {}, "optimizer": {}},
               tmp_path / "old.pt")
    with pytest.raises(ArtifactError) as e:
        artifacts.load_checkpoint(tmp_path / "old.pt")
    message = str(e.value)
    assert "\n" not in message and str(tmp_path / "old.pt") in message
    assert "does not continue" in message and "without --resume" in message
    torch.save({"format": "datadistill.checkpoint/3"}, tmp_path / "newer.pt")
    with pytest.raises(ArtifactError, match="not a datadistill checkpoint"):
        artifacts.load_checkpoint(tmp_path / "newer.pt")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "m.json"
    artifacts.write_json(target, {"a": 1})

    def broken(f):
        f.write(b"{half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        artifacts.atomic_write(target, broken)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_the_umask_gives_a_new_file(tmp_path, umask, mode):
    """Not mkstemp's 0600 whatever the umask: others may read results under umask 022."""
    saved = os.umask(umask)
    try:
        fresh = artifacts.write_json(tmp_path / "m.json", {"a": 1})
        (tmp_path / "old.json").write_text("{}")
        (tmp_path / "old.json").chmod(0o600)
        replaced = artifacts.write_json(tmp_path / "old.json", {"a": 2})  # a new file, a new mode
    finally:
        os.umask(saved)
    assert stat.S_IMODE(fresh.stat().st_mode) == mode
    assert stat.S_IMODE(replaced.stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "old.json"]


def test_pictures_are_pngs(tmp_path):
    paths = artifacts.save_image_grids(tmp_path / "images", _set())
    paths.append(artifacts.plot_step_sizes(tmp_path / "lrs.png", _set().lrs, 2))
    paths.append(artifacts.plot_accuracy(tmp_path / "acc.png", [{"iteration": 0, "mean": 0.1, "std": 0.0},
                                                                 {"iteration": 9, "mean": 0.8, "std": 0.1}]))
    assert len(paths) == 4
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and min(im.size) > 50
