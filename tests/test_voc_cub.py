"""PASCAL_VOC and CUB200 from tiny fake copies of their folder layouts, written here with PIL.

Each object (VOC) or class (CUB) gets its own flat colour, so the colour of a loaded image tells
which pixels it was cut from: labels, crops and splits are checked against what was written.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datadistill import data, datasets
from datadistill.commands import main
from datadistill.errors import ConfigError, DatasetError

# RGB, one per VOC object / CUB class
COLOURS = [(230, 30, 30), (30, 200, 40), (40, 60, 220), (240, 220, 20), (200, 40, 200)]
LOSSLESS_JPEG = {"quality": 100, "subsampling": 0}  # flat colours survive within a few levels
GREY = (128, 128, 128)


def _mean_rgb(x: torch.Tensor) -> torch.Tensor:
    """Mean colour (N, 3) of [0, 1] images (N, 3, H, W), in 0..255."""
    return x.mean(dim=(2, 3)) * 255


# -- PASCAL VOC -----------------------------------------------------------------------------------
# image id -> (width, height, [(class name, (xmin, ymin, xmax, ymax)) 1-based inclusive, as VOC])
VOC_TRAIN = {
    "2008_000001": (120, 90, [("dog", (11, 21, 50, 80)), ("person", (61, 6, 110, 85))]),
    "2008_000002": (80, 100, [("cat", (1, 1, 80, 60))]),
}
VOC_VAL = {
    # VOC2012 has a few float coordinates; a 4x4-pixel bottle shows a box off by one pixel
    "2008_000003": (100, 100, [("tvmonitor", (31, 31, 90, "70.0")), ("bottle", (5, 5, 8, 8))]),
}


def write_voc(root: Path, year: str = "2012") -> Path:
    """A VOCdevkit/VOC<year> with VOC_TRAIN as its train image set and VOC_VAL as val."""
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    colour = iter(COLOURS)
    for image_set, images in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in images))
        for image_id, (w, h, objects) in images.items():
            pixels = np.full((h, w, 3), GREY, dtype=np.uint8)
            xml = [f"<annotation><filename>{image_id}.jpg</filename>"
                   f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"]
            for name, (x0, y0, x1, y1) in objects:
                pixels[int(y0) - 1:int(float(y1)), int(x0) - 1:int(x1)] = next(colour)
                xml.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                           f"<difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                           f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
            Image.fromarray(pixels).save(base / "JPEGImages" / f"{image_id}.jpg", **LOSSLESS_JPEG)
            (base / "Annotations" / f"{image_id}.xml").write_text("".join(xml) + "</annotation>")
    return base


@pytest.mark.parametrize("year", ["2007", "2012"])
def test_voc_gives_one_sample_per_object(tmp_path, year):
    write_voc(tmp_path, year)
    (xtr, ytr), (xte, yte) = datasets._LOADERS["PASCAL_VOC"](str(tmp_path), False, 24)
    assert xtr.shape == (3, 3, 24, 24) and xte.shape == (2, 3, 24, 24) and xtr.dtype == torch.float32
    classes = datasets.VOC_CLASSES
    assert ytr.tolist() == [classes.index("dog"), classes.index("person"), classes.index("cat")]
    assert yte.tolist() == [classes.index("tvmonitor"), classes.index("bottle")] == [19, 4]
    # each crop is exactly its object: its own flat colour, no grey background around it
    got = _mean_rgb(torch.cat([xtr, xte]))
    torch.testing.assert_close(got, torch.tensor(COLOURS, dtype=torch.float32), atol=1.0, rtol=0)
    assert 0 <= float(xtr.min()) and float(xtr.max()) <= 1


def test_voc_boxes_are_one_based_and_inclusive(tmp_path):
    base = write_voc(tmp_path)
    # the 4x4 bottle at VOC (5, 5, 8, 8), i.e. pixels [4:8, 4:8], gets a white first row and column
    path = base / "JPEGImages" / "2008_000003.jpg"
    pixels = np.array(Image.open(path))
    pixels[4, 4:8] = pixels[4:8, 4] = 255
    Image.fromarray(pixels).save(path, **LOSSLESS_JPEG)
    _, (xte, yte) = datasets._LOADERS["PASCAL_VOC"](str(tmp_path), False, 4)  # the bottle's own size: no resize
    assert yte[1] == datasets.VOC_CLASSES.index("bottle")
    expected = torch.tensor(COLOURS[4], dtype=torch.float32)[:, None, None].repeat(1, 4, 4)
    expected[:, 0, :] = expected[:, :, 0] = 255
    torch.testing.assert_close(xte[1] * 255, expected, atol=3.0, rtol=0)  # JPEG: a few levels


def test_voc_through_load_dataset(tmp_path):
    write_voc(tmp_path)
    ds = data.load_dataset("pascal_voc", str(tmp_path), image_size=16)
    assert ds.name == "PASCAL_VOC" and ds.train.x.shape == (3, 3, 16, 16) and ds.image_size == 16
    assert torch.allclose(ds.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)  # normalised
    assert ds.val is None  # a tenth of 3 training images: no validation split by default


def test_voc_validation_is_held_out_of_the_training_objects(tmp_path):
    write_voc(tmp_path)
    (xtr, ytr), (_, yte) = datasets._LOADERS["PASCAL_VOC"](str(tmp_path), False, 16)
    ds = data.load_dataset("PASCAL_VOC", str(tmp_path), image_size=16, val_size=1)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (2, 1, 2)
    assert sorted(ds.train.y.tolist() + ds.val.y.tolist()) == sorted(ytr.tolist())  # every object once
    assert torch.equal(ds.test.y, yte)  # the test split is untouched
    # the statistics are the training split's alone, and the held-out crop is normalised with them
    assert torch.allclose(ds.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    mean, std = torch.tensor(ds.mean)[:, None, None], torch.tensor(ds.std)[:, None, None]
    held = ytr.tolist().index(int(ds.val.y[0]))
    torch.testing.assert_close(ds.val.x[0] * std + mean, xtr[held], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="--val_size 3 leaves no training images"):
        data.load_dataset("PASCAL_VOC", str(tmp_path), image_size=16, val_size=3)


def test_voc_missing_files_name_the_folder(tmp_path):
    for root in (tmp_path, tmp_path / "nowhere"):
        with pytest.raises(DatasetError) as err:
            data.load_dataset("PASCAL_VOC", str(root), image_size=16)
        message = str(err.value)
        assert f"expected {root / 'VOCdevkit' / 'VOC2007'} (or VOC2012)" in message and "\n" not in message
        assert "ImageSets/Main/train.txt" in message and "--dataset_root" in message
    base = write_voc(tmp_path)
    (base / "JPEGImages" / "2008_000002.jpg").unlink()
    with pytest.raises(DatasetError, match="cannot read image .*2008_000002.jpg"):
        data.load_dataset("PASCAL_VOC", str(tmp_path), image_size=16)


# -- CUB-200-2011 ---------------------------------------------------------------------------------
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def write_cub(root: Path, labels: list[int], is_train: list[int], size: int = 30) -> Path:
    """CUB_200_2011 with one image per entry of ``labels`` (0-based classes), coloured by class,
    in the training split where ``is_train`` is 1."""
    folder = root / "CUB_200_2011"
    rows = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    for i, (label, train) in enumerate(zip(labels, is_train), start=1):
        path = f"{CUB_CLASSES[label]}/{CUB_CLASSES[label].split('.')[1]}_{i:04d}.jpg"
        (folder / "images" / CUB_CLASSES[label]).mkdir(parents=True, exist_ok=True)
        # not square, so the resize to a square is exercised
        Image.new("RGB", (size + 10, size), COLOURS[label]).save(folder / "images" / path, **LOSSLESS_JPEG)
        rows["images.txt"].append(f"{i} {path}")
        rows["image_class_labels.txt"].append(f"{i} {label + 1}")
        rows["train_test_split.txt"].append(f"{i} {train}")
    rows["classes.txt"] = [f"{c + 1} {name}" for c, name in enumerate(CUB_CLASSES)]
    for name, lines in rows.items():
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_cub_split_and_zero_based_labels(tmp_path):
    labels, is_train = [0, 1, 2, 2, 1, 0, 2], [1, 1, 1, 0, 0, 1, 1]
    write_cub(tmp_path, labels, is_train)
    (xtr, ytr), (xte, yte) = datasets._LOADERS["CUB200"](str(tmp_path), False, 20)
    assert ytr.tolist() == [0, 1, 2, 0, 2] and yte.tolist() == [2, 1]  # in images.txt order
    assert xtr.shape == (5, 3, 20, 20) and xte.shape == (2, 3, 20, 20)
    colours = torch.tensor(COLOURS, dtype=torch.float32)
    torch.testing.assert_close(_mean_rgb(xtr), colours[ytr], atol=1.0, rtol=0)
    torch.testing.assert_close(_mean_rgb(xte), colours[yte], atol=1.0, rtol=0)
    # the loader itself lets download=True pass (nothing to fetch); the commands refuse --download for it
    ds = data.load_dataset("cub200", str(tmp_path), download=True, image_size=20)
    assert ds.name == "CUB200" and ds.num_classes == 3 and len(ds.train) == 5 and len(ds.test) == 2


def test_cub_missing_files_name_the_folder(tmp_path):
    with pytest.raises(DatasetError) as err:
        data.load_dataset("CUB200", str(tmp_path / "nowhere"), image_size=16)
    message = str(err.value)
    assert f"expected {tmp_path / 'nowhere' / 'CUB_200_2011'} holding images/, images.txt" in message
    assert "--dataset_root" in message and "\n" not in message
    folder = write_cub(tmp_path, [0, 1], [1, 0])
    (folder / "train_test_split.txt").unlink()
    with pytest.raises(DatasetError, match="CUB200 files not found: expected .*CUB_200_2011"):
        data.load_dataset("CUB200", str(tmp_path), image_size=16)
    write_cub(tmp_path, [0, 1], [1, 0])
    (folder / "image_class_labels.txt").write_text("1 1\n")  # image 2 has no label
    with pytest.raises(DatasetError, match="list different image ids"):
        data.load_dataset("CUB200", str(tmp_path), image_size=16)
    write_cub(tmp_path, [0, 1], [1, 0])
    (folder / "classes.txt").write_text("1 001.Black_footed_Albatross\n")  # one class, labels go to 2
    with pytest.raises(DatasetError, match="labels outside 1..1"):
        data.load_dataset("CUB200", str(tmp_path), image_size=16)


def test_new_datasets_are_registered():
    assert {"PASCAL_VOC", "CUB200"} <= set(datasets.dataset_names())
    assert datasets.canonical_name("cub200") == "CUB200" and datasets.canonical_name("Pascal_VOC") == "PASCAL_VOC"


@pytest.mark.parametrize("name", ["PASCAL_VOC", "CUB200"])
def test_download_is_refused_for_the_folders_datadistill_never_fetches(tmp_path, capsys, name):
    out = tmp_path / "out"
    assert main(["distill", "--dataset", name, "--arch", "AlexNet", "--download", "--dataset_root",
                 str(tmp_path / "data"), "--results_dir", str(out), "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"datadistill: error: --download does not apply to {name}: datadistill downloads only ")
    assert not out.exists() and not (tmp_path / "data").exists()
