"""Domain errors. The CLI maps each to a one-line message and an exit code."""


class LlamapackError(Exception):
    """Base for every error a user can cause or fix; never shown as a traceback."""


class SourceError(LlamapackError):
    """The model source is missing, unreadable or not a valid GGUF."""


class OutputError(LlamapackError):
    """The output cannot be written where it was asked for."""


class RuntimeStubError(LlamapackError):
    """The runtime stub is missing, broken or cannot be built."""


class UsageError(LlamapackError):
    """Options that contradict each other or name something unknown (exit code 2)."""


class BuiltFileError(LlamapackError):
    """A file given to inspect/verify/unpack/upgrade is not a complete llamapack file."""


class VerifyError(LlamapackError):
    """The weights inside a built file differ from its manifest."""
