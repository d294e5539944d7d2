"""Tests of the pure native layer."""
