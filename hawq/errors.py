"""One exception family for errors a user can cause; the CLI prints them in one line, exit 2."""
from __future__ import annotations


class HawqError(Exception):
    """Base class: the message says what went wrong and what to do."""


class ConfigError(HawqError, ValueError):
    """A bad recipe, option or argument (a ValueError too, as Python's own checks raise)."""


class DataError(HawqError):
    """Missing, empty or malformed data."""


class ArtifactError(HawqError):
    """A profile, plan or other artifact that is malformed or belongs to another model."""


class InfeasibleBudgetError(HawqError):
    """No plan satisfies the budget."""


class NumericalError(HawqError):
    """A NaN or infinite loss or result."""


class UnsupportedModelError(HawqError, TypeError):
    """A model or layer hawq cannot handle."""


class VerificationError(HawqError):
    """An exported model that does not match the PyTorch model."""
