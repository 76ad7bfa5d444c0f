"""Test support, not shipped: the full fake provider and pieces of a real Prefect stack,
shared by tests/ and bench/."""
