"""The test suite: a package, so that conftest.py imports tests/helpers relative to itself."""
