"""Errors users can act on: each carries a one-line message saying what to do."""


class LostRegError(Exception):
    """Base class for errors shown to users as one line, without a traceback."""


class BackboneError(LostRegError):
    """A backbone or its weights could not be created or loaded."""


class DataError(LostRegError):
    """A dataset, image or annotation could not be read."""
