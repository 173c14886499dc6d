"""Cluster mode: the shared registry in PostgreSQL, node membership, and placement."""
