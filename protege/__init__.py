"""Protégé: a persona + example conversations + documents -> a private assistant that runs offline."""

__version__ = "0.1.0"
