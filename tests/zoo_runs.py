"""The distill job's outer loop against a zoo, on in-memory data (adaptation and attack tests)."""
import torch

from datadistill.data import Dataset
from datadistill.distill import Distillation
from datadistill.methods import Setup
from datadistill.methods.wang2018 import Wang2018
from datadistill.nets import ZooNets
from datadistill.runtime import Runtime


def distil_against_zoo(config, model, data: Dataset, train_zoo) -> tuple[Distillation, Setup]:
    """wang2018 distilled against the networks of ``train_zoo`` as the distill job runs it: the
    finished run, and the setup its method's report reads."""
    generator = torch.Generator().manual_seed(config.seed)
    with Runtime("cpu", config.conv_backend) as runtime:
        method = Wang2018.from_config(config, model, runtime)
        setup = Setup(model, data.train, data.val, data.num_classes, data.mean, data.std, torch.device("cpu"),
                      generator, config.seed)
        run = Distillation(method, method.initial(setup), ZooNets(train_zoo, config.nets.nets_per_iteration, "cpu"),
                           config.outer, data.train, generator)
        run.run()
    return run, setup
