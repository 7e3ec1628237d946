"""The dataset files: torchvision's datasets, folders of JPEGs (PASCAL VOC, CUB-200-2011) and the
bundled digits, each read into raw [0, 1] float tensors (N, C, H, W) and int64 labels per split.

A loader is registered by name with ``@_loader``; ``data.load_dataset`` looks it up, holds out the
validation split and normalises.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DatasetError

# name -> loader(root, download, image_size) returning raw ([0,1] float (N,C,H,W), labels) per split
_LOADERS: dict[str, Callable] = {}
_DOWNLOADABLE: set[str] = set()  # what --download fetches; the others need no root or explain it
_BUNDLED: set[str] = set()  # read from inside the installed packages: no root, nothing to fetch
_CHANNELS: dict[str, int] = {}  # known before loading, for checks made ahead of minutes of it


def _loader(name: str, channels: int, downloadable: bool = True, bundled: bool = False):
    def deco(fn):
        _LOADERS[name] = fn
        _CHANNELS[name] = channels
        if downloadable:
            _DOWNLOADABLE.add(name)
        if bundled:
            _BUNDLED.add(name)
        return fn
    return deco


def check_source_flags(names: list[str], root: str | None, download: bool) -> None:
    """Refuse ``--dataset_root`` (``root`` not None) and ``--download`` where none of the datasets
    read (canonical ``names``) would use them, rather than ignore them."""
    if root is not None and all(n in _BUNDLED for n in names):
        raise ConfigError(f"--dataset_root does not apply to {' and '.join(names)}: its images come with the "
                          f"installed packages (leave it out)")
    if download and not any(n in _DOWNLOADABLE for n in names):
        raise ConfigError(f"--download does not apply to {' and '.join(names)}: datadistill downloads only "
                          f"{', '.join(sorted(_DOWNLOADABLE))}")


def dataset_names() -> list[str]:
    return list(_LOADERS)


def dataset_channels(name: str) -> int | None:
    """Colour channels of the images of registered dataset ``name`` (as spelled there); None for others."""
    return _CHANNELS.get(name)


def canonical_name(name: str) -> str:
    """The registered spelling of ``name``, matched case-insensitively (``cifar10`` -> ``Cifar10``)."""
    by_lower = {k.lower(): k for k in _LOADERS}
    if name.lower() not in by_lower:
        raise ConfigError(f"unknown dataset {name!r}; accepted: {', '.join(_LOADERS)}")
    return by_lower[name.lower()]


def _as_float_nchw(images, channels_last: bool) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(images))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif channels_last:
        t = t.permute(0, 3, 1, 2)
    t = t.float()
    return t / 255.0 if t.max() > 1.5 else t


def _entries(root: str) -> tuple[str, set[str] | None]:
    """The topmost missing folder on ``root``'s path (``root`` itself when it exists) and what it
    holds now (None: missing): what a failed download must leave as it found it."""
    top = os.path.abspath(root)
    while not os.path.exists(os.path.dirname(top)):
        top = os.path.dirname(top)
    return top, set(os.listdir(top)) if os.path.isdir(top) else None


def _remove_new(root: str, before: tuple[str, set[str] | None]) -> None:
    """Remove the folders and partial files a failed download made (``before`` from ``_entries``)."""
    top, held = before
    if not os.path.exists(top):
        return
    new = [top] if held is None else [os.path.join(top, n) for n in set(os.listdir(top)) - held]
    for path in new:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def _torchvision(cls_name: str, root: str, download: bool, split_kw: Callable[[bool], dict],
                 channels_last: bool, label_attr: str = "targets"):
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    before = _entries(root)
    out = []
    for train in (True, False):
        try:
            # torchvision prints download progress; keep our stdout for our own report
            with contextlib.redirect_stdout(io.StringIO()):
                ds = cls(root, download=download, **split_kw(train))
        except (RuntimeError, OSError) as e:
            # with --download, network failures surface as URLError / OSError; without it a missing
            # file is a RuntimeError from most classes and a FileNotFoundError from USPS's
            if download:
                _remove_new(root, before)
                raise DatasetError(f"could not download {cls_name} into {root}: {e}") from None
            if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
                raise DatasetError(f"could not read {cls_name}'s files under {root}: {e}") from None
            raise DatasetError(
                f"{cls_name} files not found under {root}; pass --dataset_root DIR holding "
                f"{cls_name}'s files, or --download to fetch them") from None
        out.append((_as_float_nchw(ds.data, channels_last),
                    torch.as_tensor(np.asarray(getattr(ds, label_attr)), dtype=torch.int64)))
    return out


@_loader("MNIST", channels=1)
def _mnist(root, download, image_size):
    return _torchvision("MNIST", root, download, lambda t: {"train": t}, False)


@_loader("FashionMNIST", channels=1)
def _fashion(root, download, image_size):
    return _torchvision("FashionMNIST", root, download, lambda t: {"train": t}, False)


@_loader("Cifar10", channels=3)
def _cifar10(root, download, image_size):
    return _torchvision("CIFAR10", root, download, lambda t: {"train": t}, True)


@_loader("SVHN", channels=3)
def _svhn(root, download, image_size):
    return _torchvision("SVHN", root, download, lambda t: {"split": "train" if t else "test"},
                        False, label_attr="labels")


@_loader("USPS", channels=1)
def _usps(root, download, image_size):
    return _torchvision("USPS", root, download, lambda t: {"train": t}, False)


@_loader("digits", channels=1, downloadable=False, bundled=True)
def _digits(root, download, image_size):
    """scikit-learn's 1797 8x8 handwritten digits (shipped inside the package, no file, no network),
    upsampled bilinearly to ``image_size``, split 70/30 per class with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=0,
                                           stratify=bunch.target)
    return [(x[idx_train], y[idx_train]), (x[idx_test], y[idx_test])]


# -- folders of JPEGs (PASCAL VOC, CUB-200-2011): never downloaded, read from --dataset_root -------

def _resized_rgb(path: str, size: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The image at ``path`` (cropped to ``box``, PIL's (left, top, right, bottom)) as uint8
    (size, size, 3). Squashed to a square, not centre-cropped: a tight object box would lose its
    ends (a standing person's head and feet), and it is the original code's transform."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if box is not None:
                img = img.crop(box)
            # bicubic as in the original code; PIL widens the filter when shrinking, so no aliasing
            return np.array(img.resize((size, size), Image.BICUBIC))
    except OSError as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


def _stack_images(samples: list, size: int, read: Callable) -> torch.Tensor:
    """``read(sample)``, a uint8 (size, size, 3) array, of every sample into one [0, 1] float
    (N, 3, size, size) tensor; uint8 while filling, so the peak is the result plus a quarter."""
    out = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    for i, sample in enumerate(samples):
        out[i] = torch.from_numpy(read(sample)).permute(2, 0, 1)
    return out.float().div_(255.0)


VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
VOC_YEARS = ("2007", "2012")  # the first found is read; 2007 is the one the paper used


def _voc_objects(voc, image_index: int) -> list[tuple[str, tuple[int, int, int, int], int]]:
    """(image path, PIL crop box, class) of every object annotated in image ``image_index``."""
    import xml.etree.ElementTree as ET

    path = voc.annotations[image_index]
    objects = []
    try:
        for obj in voc.parse_voc_xml(ET.parse(path).getroot())["annotation"].get("object", []):
            if obj["name"] not in VOC_CLASSES:
                raise DatasetError(f"{path} has an object of unknown class {obj['name']!r}; "
                                   f"accepted: the 20 VOC classes")
            b = {k: int(float(v)) for k, v in obj["bndbox"].items()}  # some VOC2012 boxes say "273.0"
            # VOC boxes are 1-based and inclusive; PIL's are 0-based with an exclusive right/bottom
            objects.append((voc.images[image_index], (b["xmin"] - 1, b["ymin"] - 1, b["xmax"], b["ymax"]),
                            VOC_CLASSES.index(obj["name"])))
    except (OSError, ET.ParseError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"cannot read VOC annotation {path}: {type(e).__name__}: {e}") from None
    return objects


@_loader("PASCAL_VOC", channels=3, downloadable=False)
def _pascal_voc(root, download, image_size):
    """PASCAL VOC (2007, else 2012) as 20-class classification: ``train`` image set -> train split,
    ``val`` -> test split (VOC2012's test annotations were never published).

    Every annotated object is one sample: the image cropped to its bounding box, labelled with its
    class. A whole VOC image holds about 2.4 objects, often of different classes (a person on a
    horse), so any one label per image (say, of the largest object) calls part of what it shows by
    another class's name; a crop shows one object. It is also what the original code did, on which
    the paper's VOC figures were measured. The cost is memory: VOC2012 train has 13.6k objects,
    8 GB as 224-pixel float32.
    """
    from torchvision.datasets import VOCDetection

    year = next((y for y in VOC_YEARS if os.path.isdir(os.path.join(root, "VOCdevkit", f"VOC{y}"))), None)
    out = []
    for image_set in ("train", "val"):
        try:
            voc = VOCDetection(root, year=year or VOC_YEARS[0], image_set=image_set)
        except (RuntimeError, OSError):
            raise DatasetError(
                f"PASCAL_VOC files not found: expected {os.path.join(root, 'VOCdevkit', 'VOC2007')} (or "
                f"VOC2012) holding Annotations/, JPEGImages/ and ImageSets/Main/train.txt and val.txt; "
                f"extract VOCtrainval_*.tar into --dataset_root {root} (datadistill does not download it)"
            ) from None
        objects = [o for i in range(len(voc)) for o in _voc_objects(voc, i)]
        x = _stack_images(objects, image_size, lambda o: _resized_rgb(o[0], image_size, o[1]))
        out.append((x, torch.tensor([o[2] for o in objects], dtype=torch.int64)))
    return out


def _cub_table(folder: str, name: str) -> dict[int, str]:
    """``name`` of CUB_200_2011 as {1-based id: value}; every line is ``<id> <value>``."""
    path = os.path.join(folder, name)
    try:
        with open(path) as f:
            rows = [line.split(maxsplit=1) for line in f if line.strip()]
        return {int(key): value.strip() for key, value in rows}
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read CUB200 file {path}: {e}") from None


@_loader("CUB200", channels=3, downloadable=False)
def _cub200(root, download, image_size):
    """Caltech-UCSD Birds-200-2011: 200 species, the dataset's own train/test split (5994 / 5794
    whole images), labels 0-based. Whole images, not bounding-box crops, as in the original code."""
    folder = os.path.join(root, "CUB_200_2011")
    files = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
    if not all(os.path.isfile(os.path.join(folder, f)) for f in files):
        raise DatasetError(f"CUB200 files not found: expected {folder} holding images/, {', '.join(files)}; "
                           f"extract CUB_200_2011.tgz into --dataset_root {root} (datadistill does not "
                           f"download it)")
    paths, labels, is_train = (_cub_table(folder, f) for f in files[:3])
    if not paths.keys() == labels.keys() == is_train.keys():
        raise DatasetError(f"{', '.join(files[:3])} in {folder} list different image ids")
    n_classes = len(_cub_table(folder, "classes.txt"))
    out = []
    for train in (True, False):
        ids = sorted(i for i, flag in is_train.items() if (flag == "1") == train)
        y = torch.tensor([int(labels[i]) - 1 for i in ids], dtype=torch.int64)
        if len(y) and not (0 <= int(y.min()) and int(y.max()) < n_classes):
            raise DatasetError(f"{os.path.join(folder, 'image_class_labels.txt')} has labels outside "
                               f"1..{n_classes}, the classes of classes.txt")
        x = _stack_images(ids, image_size,
                          lambda i: _resized_rgb(os.path.join(folder, "images", paths[i]), image_size))
        out.append((x, y))
    return out
