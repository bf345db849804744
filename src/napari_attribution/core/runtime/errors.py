"""Exceptions with messages meant for the user, not for a debugger."""


class AttributionError(Exception):
    """Base class for every error this package raises on purpose."""


class InputError(AttributionError, ValueError):
    """The images, labels or arguments given cannot be used (the message says why)."""


class UsageError(InputError):
    """Options or arguments that are missing or contradict each other (the command line
    exits 2 for these, as for its own parsing errors; 1 for every other error)."""


class BundleError(AttributionError, ValueError):
    """A model bundle file is missing, unreadable, truncated or does not fit the data."""


class Cancelled(AttributionError):
    """Long work was cancelled by the user before it finished."""


class OutputError(AttributionError, OSError):
    """A result could not be written (the message names what, where and why)."""
