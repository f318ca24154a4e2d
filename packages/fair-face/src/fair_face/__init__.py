"""fair-face: face-recognition parts for the fair toolkit (no component implemented yet)."""

__version__ = "0.1.0"
