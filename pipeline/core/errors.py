"""One exception type for every *expected* failure (bad input, mismatched artefacts).

The CLI turns a ShoprankError into a single line on stderr and a non-zero exit; anything
else is a bug and keeps its traceback. Stages may import this leaf module.
"""


class ShoprankError(Exception):
    """A user-facing error: its message is one line that says what is wrong and where."""

    exit_code = 2


class DataError(ShoprankError):
    """Input data is unreadable or violates its contract (file, column, row named)."""


class ArtifactError(ShoprankError):
    """A saved model or index is missing, corrupt, or does not match its partner."""
