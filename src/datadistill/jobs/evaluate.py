"""The evaluate job: score a saved set on fresh networks of any architecture, or on the fixed
networks it was distilled for; unrolled as distilled, or trained from scratch."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from .. import artifacts
from ..augment import augmenter
from ..config import AUGMENTS, INITS, EvalConfig, _choice, _positive, _seed
from ..config.sections import SEED_LIMIT
from ..data import Dataset, Split, canonical_name, check_source_flags, load_dataset
from ..errors import ArtifactError, ConfigError
from ..evaluate import EvalResult, evaluate_from_scratch, evaluate_synthetic, scratch_chunk
from ..models import arch_class, build_model, check_image_size, check_takes_width, has_width
from ..methods import METHODS, method_class
from ..nets import eval_seeds, fresh_nets
from ..synthetic import SyntheticSet
from .common import check_writable_folder, prepare_compile, resolve_device

PROTOCOLS = ("unrolled", "from_scratch")
NETS = ("fixed", "fresh")
RESULTS = "results.json"
DEFAULT_N_NETS = 10  # fresh networks a set is scored on, as a distill run scores it
Progress = Callable[[str, int], Callable[[], None]] | None


@dataclass(frozen=True)
class EvaluateConfig:
    """``None`` fields take what the file says (dataset, arch, init, fixed networks)."""

    distilled: str
    dataset: str | None = None
    dataset_root: str | None = None  # None: the root the run read, when it is the file's dataset; else ./data
    download: bool = False
    arch: str | None = None
    init: str | None = None
    init_param: float | None = None
    pretrained_weights: str | None = None
    nets: str | None = None  # fixed: the file's init_params; fresh: new networks; None: fixed if the file has them
    width: int | None = None  # ConvNet channels / MLP units; None: the file's when the arch is the file's
    test_n_nets: int | None = None  # fresh networks to score; None: DEFAULT_N_NETS (fixed ones: all the file's)
    # None below: what the run that wrote the file used (its config), else EvalConfig's default
    protocol: str | None = None  # the run's (its method's: wang2018 unrolled, the others from_scratch)
    scratch_epochs: int | None = None
    scratch_lr: float | None = None
    scratch_batch_size: int | None = None
    eval_augment: str | None = None  # the run's --eval_augment, else its --augment
    seed: int | None = None  # the run's seed, else 0: the run's own evaluation networks
    results_dir: str | None = None
    device: str = "cpu"
    compile: bool = False  # from-scratch training's loss through torch.compile (inner.training_loss)

    def __post_init__(self):
        if self.protocol is not None:
            _choice("--protocol", self.protocol, PROTOCOLS)
        if self.eval_augment is not None:
            _choice("--eval_augment", self.eval_augment, AUGMENTS)
        if self.init is not None:
            _choice("init", self.init, INITS)
        if self.nets is not None:
            _choice("--nets", self.nets, NETS)
        if self.pretrained_weights is not None and self.init != "imagenet_pretrained":
            raise ConfigError("--pretrained_weights is only read with --init imagenet_pretrained, "
                              + ("add it" if self.init is None else f"not --init {self.init}"))
        for flag in ("test_n_nets", "width", "scratch_epochs", "scratch_batch_size", "scratch_lr"):
            if getattr(self, flag) is not None:
                _positive(f"--{flag}", getattr(self, flag))
        if self.seed is not None:
            _seed("--seed", self.seed)


def from_file(cfg: EvaluateConfig, meta: dict, same_arch: bool) -> EvaluateConfig:
    """``cfg`` with its None settings filled in from the config of the run that wrote the file
    (``meta["config"]``), so that a plain ``evaluate`` scores the set as that run did."""
    run = meta.get("config", {})
    method = run.get("method", meta.get("method", "wang2018"))
    # the run's scoring settings over EvalConfig's defaults; None entries (protocol, augment) fall
    # back to what the run's method and --augment decided
    given = lambda d: {k: v for k, v in d.items() if v is not None}  # noqa: E731
    scoring = {**given(asdict(EvalConfig())), **given(run.get("evaluation", {}))}
    scoring.setdefault("protocol", method_class(method).protocol if method in METHODS else "unrolled")
    scoring.setdefault("augment", run.get("methods", {}).get("augment", "none"))
    pick = lambda given, key: scoring[key] if given is None else given  # noqa: E731
    seed = cfg.seed if cfg.seed is not None else run.get("seed", 0)
    if cfg.seed is None and not (isinstance(seed, int) and 0 <= seed < SEED_LIMIT):
        raise ConfigError(f"{cfg.distilled} was distilled with seed {seed!r}, outside 0..{SEED_LIMIT - 1} (written "
                          f"before seeds were checked); pass --seed")
    return replace(
        cfg,
        width=cfg.width if cfg.width is not None or not same_arch else run.get("model", {}).get("width"),
        protocol=pick(cfg.protocol, "protocol"),
        scratch_epochs=pick(cfg.scratch_epochs, "scratch_epochs"),
        scratch_lr=pick(cfg.scratch_lr, "scratch_lr"),
        scratch_batch_size=pick(cfg.scratch_batch_size, "scratch_batch_size"),
        eval_augment=pick(cfg.eval_augment, "augment"),
        seed=seed,
        test_n_nets=cfg.test_n_nets if cfg.test_n_nets is not None else DEFAULT_N_NETS)


def evaluate_file(cfg: EvaluateConfig, progress: Progress = None) -> tuple[EvalResult, dict]:
    """Run the evaluation ``cfg`` describes; (result, what was evaluated). ``progress(what, total)``,
    when given, is called once before the networks train and returns a callback told once per unit
    of ``total`` (from-scratch epochs of each chunk of networks; unrolled: once, at the end)."""
    device = resolve_device(cfg.device)
    if cfg.compile:
        prepare_compile(device)
    synthetic = artifacts.load_distilled(cfg.distilled)
    meta = synthetic.meta
    if cfg.dataset is None and not meta.get("dataset"):
        raise ConfigError(f"{cfg.distilled} does not name its dataset; pass --dataset")
    arch_cls = arch_class(cfg.arch or meta.get("arch") or "LeNet")
    init = cfg.init or meta.get("init") or "xavier"
    if init not in INITS:  # the file's own (a typed --init is checked with the flags)
        raise ArtifactError(f"{cfg.distilled} names the init {init!r}; pass --init, one of {', '.join(INITS)}")
    init_param = cfg.init_param if cfg.init_param is not None else meta.get("init_param", 1.0)
    same_nets = arch_cls.__name__ == meta.get("arch") and init == meta.get("init", init)
    if cfg.width is not None:
        check_takes_width(arch_cls)
    given = cfg
    cfg = from_file(cfg, meta, arch_cls.__name__ == meta.get("arch"))
    if cfg.protocol == "unrolled":  # the from-scratch settings would be ignored: refuse them
        stray = [f for f in ("scratch_epochs", "scratch_lr", "scratch_batch_size", "eval_augment")
                 if getattr(given, f) is not None]
        if stray:
            raise ConfigError(f"--{stray[0]} applies to --protocol from_scratch; this set is scored unrolled "
                              f"(add --protocol from_scratch)")
        if given.compile:
            raise ConfigError("--compile applies to --protocol from_scratch (networks trained by SGD steps); this "
                              "set is scored unrolled (add --protocol from_scratch)")
    fixed = meta.get("init_params")
    file_width = meta.get("config", {}).get("model", {}).get("width")
    nets_kind = cfg.nets or ("fixed" if fixed is not None and same_nets and cfg.width == file_width else "fresh")
    if nets_kind == "fixed" and fixed is None:
        raise ConfigError(f"{cfg.distilled} holds no fixed networks (init_params); use --nets fresh")
    if nets_kind == "fixed" and not same_nets:
        raise ConfigError(f"the file's fixed networks are {meta.get('arch')} with {meta.get('init')} init; "
                          f"--arch/--init ask for {arch_cls.__name__} with {init}; use --nets fresh")
    if nets_kind == "fixed" and cfg.width != file_width:
        raise ConfigError(f"the file's fixed networks have width {file_width}; --width {cfg.width} needs --nets fresh")
    if nets_kind == "fixed":  # scored as they are, all of them: what draws or counts fresh ones is refused
        stray = [f"--{f}" for f in ("test_n_nets", "init_param") if getattr(given, f) is not None]
        if cfg.protocol == "unrolled" and given.seed is not None:  # fixed batches too: nothing to seed
            stray.append("--seed")
        if stray:
            raise ConfigError(f"{stray[0]} has nothing to change here: the file's {next(iter(fixed.values())).shape[0]} "
                              f"fixed networks are scored as they are (--nets fresh for new ones)")
    size = synthetic.images.shape[-1]
    pad = padding_for(size, arch_cls)
    if not pad:  # before the dataset is loaded at a size the set could not match
        check_image_size(arch_cls, size, f"{cfg.distilled}'s images have")
    name = canonical_name(cfg.dataset or meta["dataset"])
    check_source_flags([name], cfg.dataset_root, cfg.download)
    # the run's own validation hold-out, so the test split is normalised as the set was distilled
    val_size = meta.get("config", {}).get("data", {}).get("val_size") if name == meta.get("dataset") else None
    # only the bundled digits and JPEG folders are resized; load them at the set's size when the arch takes it
    run_root = meta.get("config", {}).get("data", {}).get("root") if name == meta.get("dataset") else None
    dataset = load_dataset(name, cfg.dataset_root or run_root or "./data", cfg.download,
                           image_size=size if pad or size in arch_cls.supported_sizes else arch_cls.default_size,
                           device=device, val_size=val_size)
    check_fits(synthetic, dataset)
    if pad:  # the set and the test images alike, with the background of the raw images (0)
        synthetic = replace(synthetic, images=pad_images(synthetic.images, pad, dataset.mean, dataset.std))
        dataset = replace(dataset, test=Split(pad_images(dataset.test.x, pad, dataset.mean, dataset.std),
                                              dataset.test.y))
    model = build_model(arch_cls.__name__, dataset.in_channels, size + 2 * pad, dataset.num_classes,
                        pretrained_weights=cfg.pretrained_weights, width=cfg.width)
    if nets_kind == "fixed":
        nets = {k: v.to(device) for k, v in fixed.items()}
    else:
        nets = fresh_nets(model, init, init_param, eval_seeds(cfg.seed, cfg.test_n_nets), device)
    synthetic = synthetic.to(device)
    n_nets = next(iter(nets.values())).shape[0]
    chunk_nets = scratch_chunk(device)
    chunks = -(-n_nets // chunk_nets)
    what = f"training {n_nets} {nets_kind} {arch_cls.__name__}s ({cfg.protocol.replace('_', ' ')})"
    if cfg.protocol == "unrolled":
        if not synthetic.lrs.numel():
            raise ConfigError(f"{cfg.distilled} has no step sizes to unroll; use --protocol from_scratch")
        done = None if progress is None else progress(what, 1)
        result = evaluate_synthetic(model, synthetic, nets, dataset.test)
        if done is not None:
            done()
    else:
        on_epoch = None if progress is None else progress(what, chunks * cfg.scratch_epochs)
        result = evaluate_from_scratch(model, synthetic, nets, dataset.test, cfg.scratch_epochs, cfg.scratch_lr,
                                       cfg.scratch_batch_size, generator=torch.Generator().manual_seed(cfg.seed),
                                       chunk_nets=chunk_nets, augment=augmenter(cfg.eval_augment, siamese=False),
                                       on_epoch=on_epoch, compiled=cfg.compile)
    return result, {"dataset": dataset.name, "arch": arch_cls.__name__, "init": init, "nets": nets_kind,
                    "settings": asdict(cfg)}


MAX_PAD = 2  # pixels a side: 28-pixel MNIST padded to 32, as LeNet-5 read it


def padding_for(size: int, arch_cls) -> int:
    """Pixels of border on each side that make ``size``-pixel images fit ``arch_cls``: 0 when it
    takes them; else the least padding, up to ``MAX_PAD``, to a size it takes; 0 again when none
    does (``build_model`` then says which sizes it takes)."""
    return next((p for p in range(MAX_PAD + 1) if size + 2 * p in arch_cls.supported_sizes), 0)


def pad_images(x: torch.Tensor, pad: int, mean, std) -> torch.Tensor:
    """Normalised images (..., C, H, W) with ``pad`` pixels on each side holding the normalised
    raw 0, (0 - mean) / std of each channel."""
    if pad == 0:
        return x
    fill = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=x.dtype, device=x.device).view(-1, 1, 1)
    padded = fill.expand(*x.shape[:-2], x.shape[-2] + 2 * pad, x.shape[-1] + 2 * pad).clone()
    padded[..., pad:-pad, pad:-pad] = x
    return padded


def check_fits(synthetic: SyntheticSet, dataset: Dataset) -> None:
    got = tuple(synthetic.images.shape[2:])
    want = (dataset.in_channels, dataset.image_size, dataset.image_size)
    if got != want:
        raise ConfigError(f"distilled images are {got} (C, H, W), {dataset.name} images are {want}")
    if synthetic.num_classes != dataset.num_classes:
        raise ConfigError(f"distilled set has {synthetic.num_classes} classes, {dataset.name} has {dataset.num_classes}")


def archs_of(cfg: EvaluateConfig) -> list[str | None]:
    """The architectures ``cfg.arch`` names, one or a comma-separated list (the cross-architecture
    table); [None] (the file's) when it names none."""
    if cfg.arch is None:
        return [None]
    archs = [a.strip() for a in cfg.arch.split(",")]
    if "" in archs or len(set(archs)) < len(archs):
        raise ConfigError(f"--arch {cfg.arch!r}: give one architecture or a comma-separated list of different ones")
    for a in archs:
        arch_class(a)  # an unknown name is refused before any network trains
    return archs


def evaluate_command(cfg: EvaluateConfig, command: str, progress: Progress = None) -> list[tuple[EvalResult, dict]]:
    """``evaluate_file`` for each architecture ``cfg.arch`` names, in order; with ``results_dir``
    their results.json: one architecture's fields at the top level, several under ``by_arch``.
    ``--width`` goes to the architectures that have one."""
    start = time.perf_counter()
    if cfg.results_dir is not None:
        check_writable_folder(cfg.results_dir, "--results_dir")
    archs = archs_of(cfg)
    if cfg.width is not None and None not in archs:  # else checked against the file's arch
        check_takes_width(*(arch_class(arch) for arch in archs))
    scored = []
    for arch in archs:
        takes_width = arch is None or has_width(arch_class(arch))
        scored.append(evaluate_file(replace(cfg, arch=arch, width=cfg.width if takes_width else None), progress))
    if cfg.results_dir is not None:
        runs = [{**what, "result": result.to_dict()} for result, what in scored]
        artifacts.write_json(Path(cfg.results_dir) / RESULTS, {
            "command": command, **(runs[0] if len(runs) == 1 else {"by_arch": runs}),
            "wall_seconds": time.perf_counter() - start})
    return scored


def evaluate(synthetic: SyntheticSet, dataset: Dataset, arch: str | None = None, n_nets: int = 10,
             init: str = "xavier", init_param: float = 1.0, seed: int = 0,
             pretrained_weights: str | None = None) -> EvalResult:
    """Train ``n_nets`` fresh networks of ``arch`` (default: the set's) on ``synthetic`` with its
    step sizes and score them on ``dataset``'s test split."""
    arch = arch or synthetic.meta.get("arch") or "LeNet"
    if n_nets < 1:
        raise ConfigError(f"n_nets must be positive, got {n_nets}")
    check_fits(synthetic, dataset)
    device = dataset.train.x.device
    model = build_model(arch, dataset.in_channels, dataset.image_size, dataset.num_classes,
                        pretrained_weights=pretrained_weights)
    nets = fresh_nets(model, init, init_param, eval_seeds(seed, n_nets), device)
    return evaluate_synthetic(model, synthetic.to(device), nets, dataset.test)
