"""cloudx from Python."""

from ._cloudx import __version__

__all__ = ["__version__"]
