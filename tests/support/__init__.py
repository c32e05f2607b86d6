"""Helpers shared by the tests, bench/ and docs/ scripts (run those with `python -m`
from the repository root so this package is importable)."""
