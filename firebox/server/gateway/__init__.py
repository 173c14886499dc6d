"""The gateway: a cluster's public API in front of its nodes (``firebox gateway``)."""
