"""Helpers for the proxy tests: upstream stand-ins and process fixtures (no conftest needed)."""
