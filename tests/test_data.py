import os
import urllib.error
from pathlib import Path

import pytest
import torch

from datadistill import data
from datadistill.errors import ConfigError, DatasetError


def test_digits_is_bundled_and_normalised():
    ds = data.load_dataset("digits", image_size=28)
    # 1257 training files, of which a tenth (125) are held out for validation
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1132, 125, 540)
    assert ds.train.x.shape[1:] == ds.val.x.shape[1:] == (1, 28, 28) and ds.num_classes == 10
    assert ds.train.x.mean().abs() < 1e-4 and (ds.train.x.std() - 1).abs() < 1e-3
    assert torch.bincount(ds.test.y).min() >= 50  # stratified: every class in the test split
    assert data.load_dataset("digits", image_size=8).train.x.shape[-1] == 8


def _levels(x: torch.Tensor, ds: data.Dataset) -> list[tuple[int, ...]]:
    """digits at 8x8 are k/16 for integer k: the integer rows behind normalised images."""
    return [tuple(r) for r in torch.round((x * ds.std[0] + ds.mean[0]) * 16).long().flatten(1).tolist()]


def test_digits_validation_split_is_held_out_of_the_training_files():
    ds = data.load_dataset("digits", image_size=8)
    whole = data.load_dataset("digits", image_size=8, val_size=0)  # every training file
    assert whole.val is None and len(whole.train) == 1257
    assert len(ds.val) == data.default_val_size(1257) == min(5000, 1257 // 10) == 125
    assert len(ds.train) + len(ds.val) == len(whole.train)
    train, val, files = _levels(ds.train.x, ds), _levels(ds.val.x, ds), _levels(whole.train.x, whole)
    assert len(set(files)) == len(files)  # no two digits files are the same image, so rows identify them
    assert not set(train) & set(val)  # disjoint
    # together exactly the training files, each with its label; the test split untouched
    labelled = lambda rows, y: sorted(zip(rows, y.tolist()))  # noqa: E731
    assert sorted(labelled(train, ds.train.y) + labelled(val, ds.val.y)) == labelled(files, whole.train.y)
    assert torch.equal(ds.test.y, whole.test.y) and _levels(ds.test.x, ds) == _levels(whole.test.x, whole)
    assert len(torch.unique(ds.val.y)) == 10  # a random draw: every class in it
    # normalised by the training split alone
    assert ds.train.x.mean().abs() < 1e-4 and (ds.train.x.std() - 1).abs() < 1e-3
    assert ds.mean != whole.mean
    # the same images on every load
    again = data.load_dataset("digits", image_size=8)
    assert torch.equal(again.val.x, ds.val.x) and torch.equal(again.val.y, ds.val.y)
    assert torch.equal(again.train.x, ds.train.x)
    # and of the size asked for
    assert len(data.load_dataset("digits", image_size=8, val_size=300).val) == 300
    with pytest.raises(ConfigError, match="--val_size 1257 leaves no training images"):
        data.load_dataset("digits", image_size=8, val_size=1257)


def test_names_are_case_insensitive_and_checked():
    assert data.canonical_name("mnist") == "MNIST"
    assert data.canonical_name("CIFAR10") == "Cifar10"
    with pytest.raises(ConfigError, match="accepted: MNIST"):
        data.canonical_name("imagenet")


def test_missing_root_says_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="--dataset_root.*--download"):
        data.load_dataset("MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="not found"):
        data.load_dataset("FashionMNIST", str(tmp_path))
    # USPS's class raises FileNotFoundError, not RuntimeError, for a missing file: nothing was downloaded
    with pytest.raises(DatasetError, match="USPS files not found under .*--download to fetch them"):
        data.load_dataset("USPS", str(tmp_path))
    (tmp_path / "usps.bz2").write_bytes(b"not bzip2")
    with pytest.raises(DatasetError, match="could not read USPS's files"):
        data.load_dataset("USPS", str(tmp_path))


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_download_leaves_the_folders_as_it_found_them(tmp_path, monkeypatch, existing):
    # no network: torchvision's download writes a partial file, then fails; nothing it made remains
    import torchvision.datasets.usps as usps

    def offline(url, root, filename, md5=None):
        os.makedirs(root, exist_ok=True)
        (Path(root) / (filename + ".part")).write_bytes(b"half")
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(usps, "download_url", offline)
    base = tmp_path / "data"
    if existing:
        base.mkdir()
        (base / "kept.txt").write_text("the user's")
    root = base / "usps" / "raw"
    with pytest.raises(DatasetError, match=f"could not download USPS into {root}: .*no network"):
        data.load_dataset("USPS", str(root), download=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == (["data", "kept.txt"] if existing else [])


def test_shuffled_batches_cover_each_image_once(blobs):
    n = len(blobs.train)  # 120
    # tag every image with its index, so a batch says which images it holds
    tagged = data.Split(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 8, 8).clone(),
                        blobs.train.y)

    def epoch(batch_size):
        seen = []
        for x, y in data.shuffled_batches(tagged, batch_size, torch.Generator().manual_seed(0)):
            assert x.shape[0] == batch_size
            idx = x[:, 0, 0, 0].long()
            assert torch.equal(x, tagged.x[idx]) and torch.equal(y, tagged.y[idx])  # images keep their labels
            seen.append(idx)
        assert len(seen) == data.batches_per_epoch(n, batch_size)
        return torch.cat(seen)

    # batches that divide the split: every image exactly once, and shuffled
    idx = epoch(40)
    assert sorted(idx.tolist()) == list(range(n)) and idx.tolist() != list(range(n))
    # batches of 32: 3 whole batches, the remainder of 24 dropped, no image twice
    idx = epoch(32)
    assert len(idx) == 96 and len(set(idx.tolist())) == 96 and set(idx.tolist()) <= set(range(n))


def test_class_balanced_sample(blobs):
    x, y = data.class_balanced_sample(blobs.train, 4, 3, torch.Generator().manual_seed(0))
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len({tuple(r.flatten().tolist()) for r in x}) == 12
    class_of = {tuple(r.flatten().tolist()): int(c) for r, c in zip(blobs.train.x, blobs.train.y)}
    assert [class_of[tuple(r.flatten().tolist())] for r in x] == y.tolist()
    # the attack's start: the slots labelled 1 hold images of class 0
    x, y = data.class_balanced_sample(blobs.train, 4, 3, torch.Generator().manual_seed(0), source={1: 0})
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert [class_of[tuple(r.flatten().tolist())] for r in x] == [0] * 8 + [2] * 4
    have = int((blobs.train.y == 0).sum())
    with pytest.raises(ConfigError, match=rf"^{have + 1} real images per class asked for \(.*--ipc.*\), but "
                                          rf"class 0 has {have} training images$"):
        data.class_balanced_sample(blobs.train, have + 1, 3, torch.Generator().manual_seed(0))


@pytest.mark.mnist
def test_real_mnist(mnist_root):
    ds = data.load_dataset("mnist", mnist_root)
    # 60000 training files: 5000 (the most held out by default) for validation
    assert (len(ds.train), len(ds.val), len(ds.test), ds.num_classes) == (55000, 5000, 10000, 10)
    assert ds.mean[0] == pytest.approx(0.1307, abs=1e-3) and ds.std[0] == pytest.approx(0.3081, abs=1e-3)
