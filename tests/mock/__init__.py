"""Tests of the mock upstream provider (sentinel.mock)."""
