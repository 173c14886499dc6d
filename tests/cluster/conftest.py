"""Cluster tests: a real cluster on this machine (tests/cluster/harness.py), one per module.

They run once per test run, not once per isolation backend as the daemon's tests do: the
nodes use the jail (the backend every host here has, and the fastest to start), so the
cluster tests run only when "jail" is among FIREBOX_TEST_BACKENDS. A module shapes its
cluster with ``CLUSTER_OPTIONS``, keyword arguments of ``Cluster``::

    CLUSTER_OPTIONS = {"node_args": {2: ["--max-sandboxes", "3"]}, "on_stop": "keep"}
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from firebox import images
from tests.cluster.harness import Cluster, Unavailable, unavailable


def _backends() -> list[str]:
    # as tests/conftest.py reads it
    names = os.environ.get("FIREBOX_TEST_BACKENDS", "jail,gvisor,microvm")
    return [b for b in names.split(",") if b]


@pytest.fixture(scope="session")
def cluster_host() -> None:
    """Skips the test unless a cluster may and can run here (for tests that make their
    own ``Cluster``)."""
    if "jail" not in _backends():
        pytest.skip("the cluster's nodes use the jail, which FIREBOX_TEST_BACKENDS leaves out")
    if reason := unavailable():
        pytest.skip(f"no cluster on this machine: {reason}")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, cluster_host: None) -> Iterator[Cluster]:
    # every node starts with the host's built images: "base" too, which templates build on
    # (built once and cached; the template tests would build it anyway)
    images.build_image("base")
    c = Cluster(**getattr(request.module, "CLUSTER_OPTIONS", {}))
    try:
        c.start()
    except Unavailable as e:
        pytest.skip(f"no cluster on this machine: {e}")
    print(f"[cluster] up in {c.timings['up']:.1f} s", file=sys.stderr)
    try:
        yield c
    finally:
        c.close()
        print(f"[cluster] down in {c.timings['down']:.1f} s", file=sys.stderr)
