"""Errors a user can cause. The CLI turns every PriceGPTError into one `error: ...` line and exit code 2.

Bugs are not PriceGPTErrors: they raise whatever they raise and exit 1 with a traceback.
Messages name the file, row, column or flag and say what to do.
"""


class PriceGPTError(Exception):
    """Base class for mistakes in user input: files, flags, configs, run directories."""


class DataError(PriceGPTError):
    """A price or token file cannot be read or fails validation."""


class LeakageError(DataError):
    """Forecast origins whose targets lie on bars the run was trained on or selected with."""


class ConfigError(PriceGPTError):
    """A configuration file, preset, override or flag is invalid."""


class TokenizerError(PriceGPTError):
    """A tokenizer directory is missing, incomplete or incompatible with the data."""


class CheckpointError(PriceGPTError):
    """A run or model directory is missing, incomplete, corrupted or incompatible."""


class OutputExistsError(PriceGPTError):
    """An output path already holds something the user did not ask to overwrite."""
