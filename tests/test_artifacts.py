import os
import stat

import pytest
import torch
from PIL import Image

from datadistill import artifacts
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
