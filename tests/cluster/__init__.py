"""Multi-node tests on real network namespaces (see conftest.py)."""
