"""The egress policy as data: rule parsing, precedence, and the floor no policy opens."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from firebox.server.egress import Resolver, _host_port, parse_resolve
from firebox.server.egress_policy import (
    ALWAYS_DENIED,
    FloorCheck,
    PolicyError,
    parse_networks,
    parse_policy,
    parse_rule,
)

FLOOR = FloorCheck()
PUBLIC = ipaddress.ip_address("93.184.215.14")  # never connected to: decisions only


def allowed(policy_kw: dict[str, object], name: str | None, addr: str) -> bool:
    policy = parse_policy(**policy_kw)  # type: ignore[arg-type]
    return policy.decide(name, ipaddress.ip_address(addr), FLOOR).allowed


def test_rules_parse_as_domains_wildcards_ips_and_cidrs() -> None:
    assert parse_rule("Example.COM.").domain == "example.com"
    wild = parse_rule("*.pypi.org")
    assert wild.wildcard and wild.matches_name("files.pypi.org")
    assert not wild.matches_name("pypi.org") and not wild.matches_name("evilpypi.org")
    assert parse_rule("10.0.0.0/8").network == ipaddress.ip_network("10.0.0.0/8")
    assert parse_rule("2001:db8::1").network == ipaddress.ip_network("2001:db8::1/128")
    for bad in ("*", "a..b", "-a.com", "exa mple.com", "*.*.com", "", "x" * 64 + ".com"):
        with pytest.raises(PolicyError):
            parse_rule(bad)


def test_nothing_is_allowed_by_default() -> None:
    assert not parse_policy().opens_anything
    assert not allowed({}, "example.com", str(PUBLIC))


def test_allow_out_beats_deny_out_which_beats_internet_access() -> None:
    assert allowed({"allow_internet_access": True}, "example.com", str(PUBLIC))
    kw = {"allow_internet_access": True, "deny_out": ["example.com"]}
    assert not allowed(kw, "example.com", str(PUBLIC))
    kw = {"allow_out": ["api.example.com"], "deny_out": ["*.example.com", "0.0.0.0/0"]}
    assert allowed(kw, "api.example.com", str(PUBLIC))
    assert not allowed(kw, "www.example.com", str(PUBLIC))
    assert allowed({"allow_out": ["93.184.0.0/16"]}, None, str(PUBLIC))


@pytest.mark.parametrize(
    "addr",
    ["127.0.0.1", "10.0.0.1", "172.16.5.5", "192.168.1.1", "100.64.0.1", "169.254.169.254",
     "224.0.0.1", "255.255.255.255", "0.0.0.0", "::1", "::", "fe80::1", "fd00::1", "ff02::1",
     "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:a00:1::1"],
)  # fmt: skip
def test_the_floor_holds_whatever_the_policy_says(addr: str) -> None:
    kw = {"allow_out": [addr, "0.0.0.0/0", "::/0", "*.test"], "allow_internet_access": True}
    policy = parse_policy(**kw)  # type: ignore[arg-type]
    verdict = policy.decide("x.test", ipaddress.ip_address(addr), FLOOR)
    assert not verdict.allowed and "no policy opens it" in verdict.reason


def test_every_floor_entry_has_a_reason() -> None:
    assert all(entry.reason for entry in ALWAYS_DENIED)


def test_the_hosts_own_addresses_and_operator_permits() -> None:
    floor = FloorCheck(host_addresses=frozenset({PUBLIC}))
    policy = parse_policy(allow_internet_access=True)
    assert policy.decide(None, PUBLIC, floor).reason.endswith("no policy opens it")
    permitted = FloorCheck(permitted=parse_networks(["127.0.0.3/32"]))
    assert policy.decide(None, ipaddress.ip_address("127.0.0.3"), permitted).allowed
    assert not policy.decide(None, ipaddress.ip_address("127.0.0.1"), permitted).allowed


def test_names_no_rule_could_allow_are_refused_before_resolving() -> None:
    only_names = parse_policy(allow_out=["pypi.org"])
    assert only_names.refuses_name("exfil.attacker.example") is not None
    assert only_names.refuses_name("pypi.org") is None
    with_cidr = parse_policy(allow_out=["203.0.113.0/24"])
    assert with_cidr.refuses_name("anything.example") is None  # its address may match
    denied = parse_policy(allow_internet_access=True, deny_out=["*.bad.example"])
    assert denied.refuses_name("x.bad.example") is not None


def test_resolver_entries_and_request_targets() -> None:
    fixed = parse_resolve(["Mirror.Internal=192.0.2.10,2001:db8::10"])
    assert fixed == {"mirror.internal": ["192.0.2.10", "2001:db8::10"]}
    got = asyncio.run(Resolver(fixed).resolve("mirror.internal"))
    assert [str(a) for a in got] == ["192.0.2.10", "2001:db8::10"]
    for bad in ("nameonly", "=1.2.3.4", "x=not-an-ip"):
        with pytest.raises(PolicyError):
            parse_resolve([bad])
    assert _host_port("Example.com:443", None) == ("example.com", 443)
    assert _host_port("[::1]:8080", None) == ("::1", 8080)
    assert _host_port("user@host", 80) == ("host", 80)
