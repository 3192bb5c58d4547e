"""The one user-facing error type. Library code raises it; only cli.py prints it and exits."""


class OptcmpError(Exception):
    """A user mistake (bad config, missing file, impossible device...).

    The message is complete and one line: it names the file, the key and what is allowed.
    The CLI prints it and exits with status 2, never with a traceback.
    """

    exit_code = 2


class ConfigError(OptcmpError):
    """A bad value found while building from a config key, before the file is known.

    `runner.preflight` turns it into a full message with the file and line
    (`config.Source.error`), naming the swept key where a sweep value caused it.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
