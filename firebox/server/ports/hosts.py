"""Preview host names: ``<port>-<sandbox id>.<domain>``, as E2B's ``get_host`` builds them.

A sandbox id is ``sbx_<hex>``; an underscore is not valid in a DNS name, so firebox writes the
id with a hyphen (``8000-sbx-1a2b….localhost:8080``) and reads either form back (E2B's SDK
writes the id as the API gave it). The domain is the daemon's ``--domain``, compared without
its port and case.
"""

from __future__ import annotations

import re

_LABEL = re.compile(r"(?P<port>[1-9][0-9]{0,4})-sbx[_-](?P<hex>[0-9a-f]{16})")


def host_for(domain: str, sandbox_id: str, port: int) -> str:
    """The host name that reaches ``port`` of ``sandbox_id``."""
    return f"{port}-{sandbox_id.replace('_', '-')}.{domain}"


def parse(domain: str, host: str) -> tuple[str, int] | None:
    """(sandbox id, port) when ``host`` (a Host header) is a preview host of ``domain``."""
    name = _without_port(host).lower()
    suffix = "." + _without_port(domain).lower()
    if not name.endswith(suffix):
        return None
    m = _LABEL.fullmatch(name[: -len(suffix)])
    if m is None:
        return None
    port = int(m["port"])
    if port > 65535:
        return None
    return f"sbx_{m['hex']}", port


def _without_port(host: str) -> str:
    if host.startswith("["):  # an IPv6 literal is never a preview host; keep it whole
        return host
    return host.rsplit(":", 1)[0] if ":" in host else host
