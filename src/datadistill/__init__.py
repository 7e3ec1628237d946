"""datadistill: dataset distillation (Wang et al., 2018, and after) with torch.func.

Python API::

    from datadistill import build_config, distill, load_distilled, evaluate, load_dataset
    result = distill(build_config({"data.dataset": "digits"}))  # writes distilled.pt, metrics.json, plots
    synthetic = load_distilled("results/distilled.pt")
    print(evaluate(synthetic, load_dataset("MNIST", "data"), arch="LeNet", n_nets=20))
"""
__version__ = "0.1.0"

from .artifacts import load_distilled, save_distilled  # noqa: E402
from .config import (PRESETS, DataConfig, ModelConfig, NetsConfig, OuterConfig, RunConfig,  # noqa: E402
                     SyntheticConfig, build_config)
from .data import load_dataset  # noqa: E402
from .distill import Callback, Distillation  # noqa: E402
from .errors import ArtifactError, ConfigError, DatadistillError, DatasetError  # noqa: E402
from .evaluate import EvalResult  # noqa: E402
from .jobs import distill, evaluate, test_phase, train_zoo  # noqa: E402
from .synthetic import SyntheticSet  # noqa: E402

__all__ = ["build_config", "PRESETS", "test_phase", "train_zoo", "RunConfig", "DataConfig", "ModelConfig", "NetsConfig", "OuterConfig", "SyntheticConfig",
           "distill", "evaluate", "load_distilled", "save_distilled", "load_dataset", "Distillation",
           "Callback", "EvalResult", "SyntheticSet", "DatadistillError", "ConfigError", "DatasetError",
           "ArtifactError"]
