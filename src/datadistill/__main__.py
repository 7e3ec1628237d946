"""``python -m datadistill``: the same command line as ``datadistill``."""
from .commands import run

run()
