"""Test support: real servers on real sockets, run in background threads."""
