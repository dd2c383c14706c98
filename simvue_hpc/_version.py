"""The package version, in a module of its own so that nothing imports it back through __init__."""

__version__ = "0.1.0"
