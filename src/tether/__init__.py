"""Tether: identity, access and governance for autonomous AI agents."""

__version__ = "0.1.0"

__all__ = ["__version__"]
