"""watchkeep: a video management system whose every link is secured by its own CA."""

__version__ = "0.1.0"

__all__ = ["__version__"]
