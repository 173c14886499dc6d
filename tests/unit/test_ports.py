"""Preview host names and the port gate's decisions (server/ports), as pure logic."""

from __future__ import annotations

import time

import pytest

from firebox.server.ports import gate, hosts

SID = "sbx_0123456789abcdef"


def test_a_host_names_its_sandbox_and_port_in_either_id_form() -> None:
    host = hosts.host_for("localhost:8080", SID, 3000)
    assert host == "3000-sbx-0123456789abcdef.localhost:8080"
    assert hosts.parse("localhost:8080", host) == (SID, 3000)
    assert hosts.parse("localhost:8080", "3000-sbx_0123456789abcdef.localhost:8080") == (SID, 3000)
    assert hosts.parse("previews.example.com", "80-SBX-0123456789ABCDEF.Previews.Example.com") == (
        SID,
        80,
    )
    assert hosts.parse("example.com", "8000-sbx-0123456789abcdef.example.com:443") == (SID, 8000)


@pytest.mark.parametrize(
    "host",
    [
        "localhost:8080",
        "sbx-0123456789abcdef.localhost",  # no port
        "0-sbx-0123456789abcdef.localhost",
        "70000-sbx-0123456789abcdef.localhost",
        "8000-sbx-0123456789abcde.localhost",  # a short id
        "8000-sbx-0123456789abcdef.evil.localhost",  # one label too many
        "8000-sbx-0123456789abcdef.localhost.evil.com",  # the domain as a prefix only
        "8000-sbx-0123456789abcdef.notlocalhost",
        "x8000-sbx-0123456789abcdef.localhost",
        "[::1]:8080",
        "",
    ],
)
def test_anything_else_is_not_a_preview_host(host: str) -> None:
    assert hosts.parse("localhost", host) is None


def test_the_gate_opens_to_its_own_token_cookie_or_public_traffic() -> None:
    token = "t" * 48

    def allowed(headers: dict[str, str], cookies: dict[str, str], public: bool = False) -> bool:
        return gate.allowed(token, public, SID, 8000, headers, cookies)

    assert allowed({}, {}, public=True)
    assert not allowed({}, {})
    assert allowed({"firebox-traffic-token": token}, {})
    assert allowed({"e2b-traffic-access-token": token}, {})
    assert not allowed({"firebox-traffic-token": "u" * 48}, {})
    assert not allowed({"firebox-traffic-token": token[:-1]}, {})
    cookie = gate.cookie_value(token, SID, 8000)
    assert allowed({}, {gate.COOKIE: cookie})
    assert not allowed({}, {gate.COOKIE: token})  # the cookie is not the token
    assert not gate.allowed(
        token, False, SID, 8001, {}, {gate.COOKIE: cookie}
    )  # nor for another port


def test_a_link_opens_its_host_once_and_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    links = gate.Links()
    code, expires = links.mint(SID, 8000)
    assert expires > time.time()
    assert not links.redeem(code, SID, 8001)  # the wrong host spends it
    assert not links.redeem(code, SID, 8000)
    code, _ = links.mint(SID, 8000)
    assert links.redeem(code, SID, 8000)
    assert not links.redeem(code, SID, 8000)
    code, _ = links.mint(SID, 8000)
    monkeypatch.setattr(gate.time, "time", lambda: expires + gate.LINK_TTL + 1)
    assert not links.redeem(code, SID, 8000)
