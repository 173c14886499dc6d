"""Which destinations a sandbox may reach: its network policy, and the floor beneath it.

A sandbox has no network of its own; what it reaches goes through the daemon's proxy
(server/egress.py), which asks this module about every connection, twice: once for the name the
sandbox asked for, and once for every address the proxy itself resolved that name to. The
proxy connects only to an address that passed, so a name that resolves to a private address
(DNS rebinding) is refused however the policy reads.

Order of the checks, first match wins:

1. the floor (``ALWAYS_DENIED`` and the host's own addresses): loopback, private, link-local
   (cloud metadata), multicast and the like, and the host itself: denied whatever the policy
   says. Only the operator can lift it, per range, with ``--egress-permit``;
2. ``allow_out``: a domain (``example.com``, ``*.example.com``), an IP or a CIDR;
3. ``deny_out``: the same forms;
4. ``allow_internet_access``: everything else (default: nothing).

``allow_out`` before ``deny_out`` follows E2B: allow-listed destinations are reachable even
inside a denied range (deny the internet, allow one API).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_RULES = 256


@dataclass(frozen=True, slots=True)
class Floor:
    """A range no sandbox reaches, and why."""

    network: Network
    reason: str


def _floor(cidr: str, reason: str) -> Floor:
    return Floor(ipaddress.ip_network(cidr), reason)


# The security policy as data: every range with the reason it is closed.
ALWAYS_DENIED: tuple[Floor, ...] = (
    _floor("0.0.0.0/8", "'this network' (0.0.0.0/8) reaches the host itself"),
    _floor("10.0.0.0/8", "a private network (RFC 1918)"),
    _floor("100.64.0.0/10", "carrier-grade NAT space (RFC 6598), private to a provider"),
    _floor("127.0.0.0/8", "loopback: the host's own services"),
    _floor("169.254.0.0/16", "link-local, where cloud metadata (169.254.169.254) lives"),
    _floor("172.16.0.0/12", "a private network (RFC 1918)"),
    _floor("192.0.0.0/24", "IETF protocol assignments, not the internet"),
    _floor("192.0.2.0/24", "documentation addresses (TEST-NET-1)"),
    _floor("192.88.99.0/24", "6to4 relay anycast, a tunnel into other networks"),
    _floor("192.168.0.0/16", "a private network (RFC 1918)"),
    _floor("198.18.0.0/15", "benchmarking networks, often internal"),
    _floor("198.51.100.0/24", "documentation addresses (TEST-NET-2)"),
    _floor("203.0.113.0/24", "documentation addresses (TEST-NET-3)"),
    _floor("224.0.0.0/4", "multicast"),
    _floor("240.0.0.0/4", "reserved, and broadcast"),
    _floor("::/128", "the unspecified address reaches the host itself"),
    _floor("::1/128", "IPv6 loopback: the host's own services"),
    _floor("64:ff9b::/96", "NAT64, which embeds IPv4 addresses the floor would refuse"),
    _floor("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    _floor("100::/64", "the discard prefix"),
    _floor("2001::/32", "Teredo, a tunnel into other networks"),
    _floor("2001:db8::/32", "documentation addresses"),
    _floor("2002::/16", "6to4, which embeds IPv4 addresses the floor would refuse"),
    _floor("fc00::/7", "IPv6 unique local addresses (private)"),
    _floor("fe80::/10", "IPv6 link-local"),
    _floor("fec0::/10", "IPv6 site-local (deprecated, private)"),
    _floor("ff00::/8", "IPv6 multicast"),
)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class PolicyError(ValueError):
    """A rule that is not a domain, an IP or a CIDR; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of ``allow_out``/``deny_out``: a domain pattern or a network."""

    text: str
    domain: str | None = None  # lower case, without "*."
    wildcard: bool = False  # "*.example.com": subdomains only
    network: Network | None = None

    def matches_name(self, name: str) -> bool:
        if self.domain is None:
            return False
        if self.wildcard:
            return name.endswith("." + self.domain)
        return name == self.domain

    def matches_address(self, address: Address) -> bool:
        return self.network is not None and address in self.network


def parse_rule(text: str) -> Rule:
    raw = text.strip()
    try:
        return Rule(text=raw, network=ipaddress.ip_network(raw, strict=False))
    except ValueError:
        pass
    name = normalize_name(raw)
    wildcard = name.startswith("*.")
    if wildcard:
        name = name[2:]
    labels = name.split(".")
    if not name or "*" in name or not all(_LABEL.match(label) for label in labels):
        raise PolicyError(
            f"{text!r} is not a domain (example.com, *.example.com), an IP or a CIDR "
            "(10.0.0.0/8, 2001:db8::/32)"
        )
    return Rule(text=raw, domain=name, wildcard=wildcard)


def normalize_name(name: str) -> str:
    return name.strip().lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Policy:
    """A sandbox's network policy, parsed (``parse_policy``)."""

    allow_out: tuple[Rule, ...] = ()
    deny_out: tuple[Rule, ...] = ()
    allow_internet_access: bool = False

    @property
    def opens_anything(self) -> bool:
        """Whether the sandbox gets a proxy at all: with nothing allowed it has none."""
        return self.allow_internet_access or bool(self.allow_out)

    def refuses_name(self, name: str) -> Verdict | None:
        """A refusal on the name alone, before it is resolved: a name no rule could allow is
        never looked up, since the lookup itself would carry it out (DNS exfiltration)."""
        if any(rule.matches_name(name) for rule in self.allow_out):
            return None
        for rule in self.deny_out:
            if rule.matches_name(name):
                return Verdict(False, f"deny_out has {rule.text!r}")
        if self.allow_internet_access or any(r.network is not None for r in self.allow_out):
            return None
        return Verdict(False, f"{name} is not in allow_out and internet access is off")

    def decide(self, name: str | None, address: Address, floor: FloorCheck) -> Verdict:
        """May a connection asked for as ``name`` (None: an IP literal) go to ``address``?"""
        address = _unmapped(address)
        closed = floor.reason(address)
        if closed is not None:
            return Verdict(False, f"{address} is {closed}; no policy opens it")
        for rule in self.allow_out:
            if (name is not None and rule.matches_name(name)) or rule.matches_address(address):
                return Verdict(True, f"allow_out has {rule.text!r}")
        for rule in self.deny_out:
            if (name is not None and rule.matches_name(name)) or rule.matches_address(address):
                return Verdict(False, f"deny_out has {rule.text!r}")
        if self.allow_internet_access:
            return Verdict(True, "allow_internet_access")
        target = name or str(address)
        return Verdict(False, f"{target} is not in allow_out and internet access is off")


def parse_policy(
    allow_out: Sequence[str] = (), deny_out: Sequence[str] = (), allow_internet_access: bool = False
) -> Policy:
    """Raises PolicyError naming the first bad rule."""
    if len(allow_out) > MAX_RULES or len(deny_out) > MAX_RULES:
        raise PolicyError(f"allow_out and deny_out take at most {MAX_RULES} rules each")
    return Policy(
        allow_out=tuple(parse_rule(r) for r in allow_out),
        deny_out=tuple(parse_rule(r) for r in deny_out),
        allow_internet_access=allow_internet_access,
    )


@dataclass(slots=True)
class FloorCheck:
    """The floor as this host has it: ``ALWAYS_DENIED``, the host's own addresses, minus the
    ranges the operator permitted (``--egress-permit``)."""

    host_addresses: frozenset[Address] = frozenset()
    permitted: tuple[Network, ...] = ()
    floor: tuple[Floor, ...] = field(default=ALWAYS_DENIED)

    def reason(self, address: Address) -> str | None:
        if any(address in net for net in self.permitted):
            return None
        for entry in self.floor:
            if address in entry.network:
                return entry.reason
        if address in self.host_addresses:
            return "an address of this host"
        return None


def _unmapped(address: Address) -> Address:
    """``::ffff:10.0.0.1`` is 10.0.0.1: an IPv4-mapped address is judged as the IPv4 one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    nets = []
    for text in texts:
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise PolicyError(f"{text!r} is not an IP or CIDR") from None
    return tuple(nets)
