"""mtlkit: a notebook-first course and reproduction kit for multi-task dense prediction."""

__version__ = "0.1.0"
