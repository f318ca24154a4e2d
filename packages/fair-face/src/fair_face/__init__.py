"""fair-face: face-recognition parts for the fair toolkit: embedding backbones and the
verification metrics at an operating point (group TPR/FPR at a global FPR threshold)."""

__version__ = "0.1.0"
