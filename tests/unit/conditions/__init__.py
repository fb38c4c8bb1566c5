"""Tests of conditions/."""
