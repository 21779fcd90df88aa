"""Runnable examples; each is exercised by tests/integration/test_examples.py."""
