"""Sentinel: an AI API gateway."""

__version__ = "0.1.0"
