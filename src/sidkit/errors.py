"""One error family. Every message names the problem and the fix."""

from __future__ import annotations


class SidkitError(ValueError):
    """Base class of every error sidkit raises on purpose.

    ``problem`` says what is wrong, ``fix`` says what the user can do about it.
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")

    def __reduce__(self):   # keeps problem and fix across processes (experiment --jobs)
        return (type(self), (self.problem, self.fix))


class DataError(SidkitError):
    """Input data is missing, malformed or empty."""


class ConfigError(SidkitError):
    """An experiment config is invalid."""


class NotFittedError(SidkitError):
    """A fitted estimator was expected."""


class ArtifactError(SidkitError):
    """A stored artifact is missing, corrupt or of another schema version."""


class EncodingWarning(UserWarning):
    """A text file was not valid UTF-8 and was read as Latin-1 (every byte decodes, but
    accented names may come out wrong if the file is in another encoding)."""
