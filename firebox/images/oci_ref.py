"""OCI image references, the cache key of an OCI base, what a registry's refusal means, and
reading the layout skopeo writes: the logic of oci.py, without processes or network.

A reference is ``[registry/]repository[:tag][@digest]``, normalised as skopeo's docker
transport does (no registry: Docker Hub; one word: its ``library/``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import post
from .adapt import source_hash as adapt_hash
from .cache import content_key
from .errors import ImageBuildError

OCI_VERSION = 1  # bump when the pull or unpack changes in a way the key does not capture
LAYOUT_TAG = "base"  # the one image in the layout a pull writes
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_PATH = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_DOMAIN = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class OciRef:
    """``[registry/]repository[:tag][@digest]``, normalised as skopeo's docker transport does."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, ref: str) -> OciRef:
        name, _, digest = ref.partition("@")
        colon = name.rfind(":")
        tag = None
        if colon > name.rfind("/"):
            name, tag = name[:colon], name[colon + 1 :]
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first.startswith("[") or first == "localhost"):
            registry, repository = first, rest
        else:
            registry, repository = "docker.io", name if "/" in name else f"library/{name}"
        if (
            not _DOMAIN.fullmatch(registry)
            or not _PATH.fullmatch(repository)
            or (tag is not None and not _TAG.fullmatch(tag))
            or (digest and not DIGEST.fullmatch(digest))
        ):
            raise ImageBuildError(
                f"{ref!r} is not an image reference; write [registry/]name[:tag][@sha256:…], "
                "e.g. debian:bookworm or registry.example:5000/team/image:1.2"
            )
        return cls(registry, repository, tag, digest or None)

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (
            f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        )

    def pinned(self, digest: str) -> str:
        return f"docker://{self.registry}/{self.repository}@{digest}"

    @property
    def loopback(self) -> bool:
        host = self.registry
        host = host[1 : host.index("]")] if host.startswith("[") else host.split(":")[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a name: whatever it resolves to, it is not known to stay here


@dataclass(frozen=True)
class OciKey:
    """What an OCI base's tree is made from: its cache key (``cache.CacheKey``)."""

    digest: str
    arch: str
    post_hash: str
    adapt_hash: str
    version: int = OCI_VERSION

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "oci", **dataclasses.asdict(self)}

    @property
    def key(self) -> str:
        return content_key(self.as_dict())

    @property
    def name(self) -> str:
        return f"oci-{self.key}"


def oci_key(digest: str, arch: str) -> OciKey:
    return OciKey(digest, arch, post.source_hash(), adapt_hash())


def explain(output: str, ref: OciRef, arch: str) -> str:
    """What a failed skopeo run means, and what to do, from its output."""
    text = output.lower()
    registry = ref.registry
    # Most specific first: a "not found" or an address's digits may appear in any message.
    causes = (
        (
            ("http response to https client",),
            f"{registry} speaks plain HTTP: use its HTTPS address (only a registry on this host's "
            "loopback may be used without TLS)",
        ),
        (
            ("manifest unknown", "name unknown", "not found"),
            f"{ref} does not exist there: check the name and the tag",
        ),
        (
            ("unauthorized", "authentication required", "denied", " 401 ", " 403 "),
            f"{registry} refused access to {ref.repository}: check the username and password "
            "given for it (some registries also answer so for an image that does not exist)",
        ),
        (
            ("no image found in", "choosing image instance"),
            f"{ref} has no linux/{arch} variant, which this host needs: pick a tag built for it",
        ),
        (
            ("x509", "certificate"),
            f"{registry}'s TLS certificate is not trusted here: install its CA certificate as "
            f"/etc/containers/certs.d/{registry}/ca.crt",
        ),
        (
            ("connection refused", "no such host", "timeout", "unreachable", "dial tcp", "eof"),
            f"{registry} could not be reached: check the registry's name and that this host "
            "can reach it (through HTTPS_PROXY if it needs a proxy)",
        ),
    )
    for needles, cause in causes:
        if any(needle in text for needle in needles):
            return cause
    return "see skopeo's output below"


def check_platform(ref: OciRef, config: dict[str, Any], arch: str) -> None:
    # skopeo inspect says "Os"/"Architecture"; an image's config, "os"/"architecture"
    found = (
        config.get("Os", config.get("os")),
        config.get("Architecture", config.get("architecture")),
    )
    if found != ("linux", arch):
        raise ImageBuildError(
            f"{ref} is an image for {found[0]}/{found[1]}, but this host runs linux/{arch}: "
            f"use a tag (or a multi-platform image) that has linux/{arch}"
        )


def _blob(layout: Path, digest: object) -> dict[str, Any]:
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise ImageBuildError(f"the pulled image names a malformed digest {digest!r}")
    data = json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())
    if not isinstance(data, dict):
        raise ImageBuildError(f"the pulled image's {digest} is not a JSON object")
    return data


def read_layout(layout: Path) -> tuple[str, dict[str, Any]]:
    """The digest of the manifest skopeo wrote into ``layout``, and the image's config."""
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        m
        for m in index.get("manifests", [])
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == LAYOUT_TAG
    ]
    manifest = _blob(layout, entry.get("digest"))
    return entry["digest"], _blob(layout, manifest.get("config", {}).get("digest"))
