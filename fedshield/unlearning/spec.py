"""Settings of one unlearning run: defined once in fedshield/spec/unlearning.py."""

from ..spec.unlearning import UnlearningSpec

__all__ = ["UnlearningSpec"]
