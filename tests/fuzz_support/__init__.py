"""Helpers for the fuzz tests: a reference validator and a small model server built on it."""
