"""The project's own error types.

Every failure caused by user input (a config, a data folder, a GGUF or .mhc file, an HTTP
request) is raised as one of these, with a message naming the file/key and the problem, so the
CLI can print one clean line instead of a traceback.
"""


class NanochatError(Exception):
    """Base class: an error the user can act on; the CLI prints it without a traceback."""


class ConfigError(NanochatError):
    """A config file or override is invalid (unknown key, wrong type, impossible shape)."""


class DataError(NanochatError):
    """A data source, tokenizer or shard folder is missing or malformed."""


class FormatError(NanochatError):
    """A model file (GGUF, .mhc, checkpoint) is truncated, corrupted or inconsistent."""


class NotSupportedError(NanochatError):
    """A feature is configured that this build does not implement yet."""
