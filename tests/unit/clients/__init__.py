"""Unit tests of the client library (no server: see tests/integration/test_client.py)."""
