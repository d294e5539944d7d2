"""Quotas: limits (pure decisions), the atomic limiter, token counting."""
