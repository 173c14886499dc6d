"""Where a template build may reach: the package sources this host is configured with.

A build's steps get network only through the egress proxy, and by default only to the hosts
the host's own apt, pip and npm use, read from their configuration (never a host name written
here): the apt sources' URIs, pip's ``index-url``/``extra-index-url`` (environment, then the
configuration files pip itself reads), npm's ``registry``. ``file:`` sources are local to the
host and mean nothing inside a sandbox; they are left out. The operator adds more with
``--build-allow``, a build request with its ``allow_out``; the always-denied floor applies to
all of it, as to any sandbox.

The same sources are handed to the build's processes (``PIP_INDEX_URL``,
``NPM_CONFIG_REGISTRY``), so ``pip install`` and ``npm install`` in a build go where the
host's would, not to a default the allow list does not open.
"""

from __future__ import annotations

import configparser
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from firebox.images import apt_sources

PIP_FILES = (Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"))


@dataclass(frozen=True)
class Sources:
    hosts: tuple[str, ...]  # what the build's egress policy allows
    envs: dict[str, str] = field(default_factory=dict)  # what its processes are given


def _host(url: str) -> str | None:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.hostname


def _pip_urls(environ: dict[str, str], home: Path) -> tuple[str | None, list[str]]:
    config = configparser.ConfigParser()
    config.read([*PIP_FILES, home / ".config/pip/pip.conf", home / ".pip/pip.conf"])
    index = environ.get("PIP_INDEX_URL") or config.get("global", "index-url", fallback=None)
    extra = environ.get("PIP_EXTRA_INDEX_URL") or config.get(
        "global", "extra-index-url", fallback=""
    )
    return index, (extra or "").split()


def _npm_registry(environ: dict[str, str]) -> str | None:
    """npm's registry as npm itself reports it (its configuration files, or its built-in
    default); None without npm on the host."""
    if environ.get("NPM_CONFIG_REGISTRY"):
        return environ["NPM_CONFIG_REGISTRY"]
    try:
        out = subprocess.run(
            ["npm", "config", "get", "registry"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def host_sources(environ: dict[str, str] | None = None) -> Sources:
    """The package sources of this host, as hosts to allow and variables to pass on."""
    env = dict(os.environ if environ is None else environ)
    home = Path(env.get("HOME", "/root"))
    hosts: list[str] = []
    envs: dict[str, str] = {}
    for entry in apt_sources.read_sources():
        if (h := _host(entry.uri)) is not None:
            hosts.append(h)
    index, extras = _pip_urls(env, home)
    pip_urls = [u for u in (index, *extras) if u and _host(u)]
    hosts += [h for u in pip_urls if (h := _host(u))]
    if index and _host(index):
        envs["PIP_INDEX_URL"] = index
    if net_extras := [u for u in extras if _host(u)]:
        envs["PIP_EXTRA_INDEX_URL"] = " ".join(net_extras)
    registry = _npm_registry(env)
    if registry is not None and (h := _host(registry)) is not None:
        hosts.append(h)
        envs["NPM_CONFIG_REGISTRY"] = registry
    return Sources(tuple(dict.fromkeys(hosts)), envs)
