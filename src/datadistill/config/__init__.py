"""Run configuration: frozen dataclasses, one per concern, validated once when built.

The CLI builds these from flags; the Python API builds them directly. Nothing mutates them: a
changed setting is a new config (``dataclasses.replace``).
"""
from .presets import PRESETS, build_config, default_preset
from .run import SECTIONS, RunConfig
from .scoring import AUGMENTS, PROTOCOLS, EvalConfig, MethodConfig, TestPhaseConfig
from .sections import (CONV_BACKENDS, IMAGE_INITS, INITS, LR_SCHEDULES, MODES, PHASES, PRETRAINED_ARCHS, RANDOM_INITS,
                       STOCHASTIC_IMAGES, TEST_IMAGES, TEST_LRS, TEST_NETS_TYPES, TRAIN_NETS_TYPES, DataConfig,
                       ModelConfig, NetsConfig, OuterConfig, SyntheticConfig, _choice, _positive, _seed)

__all__ = ["PRESETS", "build_config", "default_preset", "SECTIONS", "RunConfig", "AUGMENTS", "PROTOCOLS", "EvalConfig",
           "MethodConfig", "TestPhaseConfig", "CONV_BACKENDS", "IMAGE_INITS", "INITS", "LR_SCHEDULES", "MODES", "PHASES",
           "PRETRAINED_ARCHS", "RANDOM_INITS", "STOCHASTIC_IMAGES", "TEST_IMAGES", "TEST_LRS", "TEST_NETS_TYPES",
           "TRAIN_NETS_TYPES", "DataConfig", "ModelConfig", "NetsConfig", "OuterConfig", "SyntheticConfig",
           "_choice", "_positive", "_seed"]
