"""Sluice: an ActivityPub filtering relay."""

__version__ = "0.1.0"
