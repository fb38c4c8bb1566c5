"""Unit tests: pure, milliseconds each."""
