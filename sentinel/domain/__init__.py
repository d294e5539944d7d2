"""Shared value types every layer may import: who is calling, tiers, plans and limits, usage.

Pure data and parsing, no I/O. `sentinel.native` (the pure wire-format core) is the only part of
Sentinel this package imports (for the tier names, spelled once there).
"""
