"""The whole configuration of one job: the sections together, validated once when built."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError
from .scoring import EvalConfig, MethodConfig, TestPhaseConfig
from .sections import (CONV_BACKENDS, MODES, PHASES, DataConfig, ModelConfig, NetsConfig, OuterConfig, SyntheticConfig,
                       _choice, _positive, _seed)


@dataclass(frozen=True)
class RunConfig:
    """Everything one job needs; ``to_dict`` is what goes into result files.

    The defaults are those of the ``fresh`` preset; ``build_config`` applies the preset a run's
    setting calls for (``PRESETS``) under the flags given explicitly.
    """

    mode: str = "distill_basic"
    method: str = "wang2018"
    preset: str = "fresh"  # the preset the defaults came from (recorded, not applied here)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    nets: NetsConfig = field(default_factory=NetsConfig)
    test: TestPhaseConfig = field(default_factory=TestPhaseConfig)  # the test phase (``datadistill test``)
    methods: MethodConfig = field(default_factory=MethodConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    skip_test: bool = False  # report on the validation split only (tuning runs never read the test split)
    eval_every: int = 0  # validate every N outer epochs; 0: about five times per run
    keep_best: bool = False  # give the snapshot that validated best, not the last (early stopping)
    results_dir: str = "./results"
    seed: int = 1
    device: str = "cpu"
    phase: str = "train"  # train-zoo: which zoo to fill
    attack_class: int | None = None  # distill_attack: images of this class ...
    target_class: int | None = None  # ... should be taken for this one
    attack_weight: float = 1.0  # distill_attack: weight of attack_class images in the outer loss (1: the paper's)
    zoo_dir: str | None = None  # None: <results_dir>/zoo
    conv_backend: str = "native"  # CPU convolutions of the unrolled steps; auto: timed on the first step
    compile: bool = False  # torch.compile for training steps on a set and dm's embeddings (inner.training_loss)

    def __post_init__(self):
        _choice("mode", self.mode, MODES)
        _choice("--phase", self.phase, PHASES)
        _choice("--conv_backend", self.conv_backend, CONV_BACKENDS)
        from .presets import PRESETS  # the table refers to this class's fields: imported when needed

        _choice("--preset", self.preset, tuple(PRESETS))
        if self.mode == "distill_attack":
            if self.attack_class is None or self.target_class is None:
                raise ConfigError("--mode distill_attack needs --attack_class and --target_class")
            if self.attack_class == self.target_class:
                raise ConfigError(f"--attack_class and --target_class are both {self.attack_class}; "
                                  f"an attack needs two different classes")
            if min(self.attack_class, self.target_class) < 0:
                raise ConfigError("--attack_class and --target_class must be class indices >= 0")
        _positive("--attack_weight", self.attack_weight)
        if self.mode == "distill_adapt":
            if self.data.source_dataset is None:
                raise ConfigError("--mode distill_adapt needs --source_dataset, the domain the "
                                  "loaded networks were trained on")
            if self.nets.train_nets_type != "loaded":
                raise ConfigError("--mode distill_adapt needs --train_nets_type loaded (networks "
                                  "trained on --source_dataset with train-zoo)")
            if self.nets.test_nets_type == "unknown_init":  # fresh, untrained networks have nothing to adapt
                raise ConfigError("--mode distill_adapt scores networks trained on --source_dataset: give "
                                  "--test_nets_type loaded (a test zoo) or same_as_train")
        if self.synthetic.teacher_labels and self.mode in ("distill_adapt", "distill_attack"):
            # adaptation's zoo is another dataset's; an attack's labels are the attack
            raise ConfigError(f"--label_mode teacher labels a set by networks trained on its own dataset; "
                              f"it applies to --mode distill_basic, not {self.mode}")
        if self.eval_every < 0:
            raise ConfigError(f"--eval_every must be >= 0, got {self.eval_every}")
        _seed("--seed", self.seed)

    @property
    def setting(self) -> str:
        """basic, adapt or attack: the mode without its prefix."""
        return self.mode.removeprefix("distill_")

    @property
    def zoo_dataset(self) -> str:
        """The dataset whose zoo loaded networks come from: the source domain when adapting."""
        return self.data.source_dataset if self.mode == "distill_adapt" else self.data.dataset

    @property
    def zoo_root(self) -> str:
        return self.zoo_dir or f"{self.results_dir.rstrip('/')}/zoo"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        kwargs = {k: (SECTIONS[k](**v) if k in SECTIONS else v) for k, v in d.items()}
        return cls(**kwargs)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "synthetic": SyntheticConfig, "outer": OuterConfig,
            "nets": NetsConfig, "test": TestPhaseConfig, "methods": MethodConfig, "evaluation": EvalConfig}
