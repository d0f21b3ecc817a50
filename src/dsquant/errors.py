"""dsquant's own exception, in a module of its own so that every layer (readers, encoders,
methods, outputs) can raise it without importing the others."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A dataset, features, checkpoint or scores file that cannot be used; the message is one
    line that names the file and says what was expected. The CLI prints it as
    ``dsquant: error: <message>`` and exits with status 2."""
