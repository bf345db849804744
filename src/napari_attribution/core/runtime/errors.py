"""Exceptions with messages meant for the user, not for a debugger."""


class AttributionError(Exception):
    """Base class for every error this package raises on purpose."""


class InputError(AttributionError, ValueError):
    """The images, labels or arguments given cannot be used (the message says why)."""


class BundleError(AttributionError, ValueError):
    """A model bundle file is missing, unreadable, truncated or does not fit the data."""


class Cancelled(AttributionError):
    """Long work was cancelled by the user before it finished."""


class OutputError(AttributionError, OSError):
    """A result could not be written (the message names what, where and why)."""
