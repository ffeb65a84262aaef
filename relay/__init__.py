"""Sluice: an ActivityPub filtering relay."""

__all__ = ["__version__"]

__version__ = "0.1.0"
