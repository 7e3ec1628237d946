"""Exceptions a user can act on.

Everything raised here carries one sentence that says what was wrong and what is accepted; the CLI
prints it on one line and exits with status 2. Anything else escaping is a bug.
"""


class DatadistillError(Exception):
    """Base class: bad input the user can fix."""


class ConfigError(DatadistillError, ValueError):
    """A flag or configuration value is out of range or unknown."""


class DatasetError(DatadistillError):
    """A dataset cannot be found, read or downloaded."""


class ArtifactError(DatadistillError):
    """A checkpoint or distilled file is missing, unreadable or of the wrong kind."""
