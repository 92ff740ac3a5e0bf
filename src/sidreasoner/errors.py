"""Errors that the CLI reports as one line, without a traceback."""


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and what is allowed."""
