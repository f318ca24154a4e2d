"""fair-data: datasets for the fair toolkit."""

__version__ = "0.1.0"
