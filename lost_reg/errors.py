"""Errors users can act on: each carries a one-line message saying what to do."""


class LostRegError(Exception):
    """Base class for errors shown to users as one line, without a traceback."""


class OptionError(LostRegError, ValueError):
    """An option's text that cannot be read (the CLI shows it as its usage error)."""


class BackboneError(LostRegError):
    """A backbone or its weights could not be created or loaded."""


class DataError(LostRegError):
    """A dataset, image or annotation could not be read."""


class NotAnImage(DataError):
    """A file that is no image (of an accepted format)."""


class TooManyPixels(DataError):
    """An image whose header declares more pixels than allowed (a decompression bomb, or just too big)."""


class ImageTooSmall(DataError):
    """An image smaller than one patch (after any downscaling): there is nothing to find in it."""


class DecodeTimeout(DataError):
    """An image whose decoding ran past its deadline (a hostile or broken file): its decoding process was stopped."""
