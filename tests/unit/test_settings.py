"""A sandbox's settings: one model, with the same names from the SDK to the agent."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from firebox import AsyncSandbox, protocol
from firebox.cli import parser
from firebox.settings import (
    Bound,
    Limits,
    LimitsRequest,
    SandboxSettings,
    SettingsError,
    resolve,
)


def test_the_same_names_from_the_sdk_to_the_rest_body() -> None:
    create = inspect.signature(AsyncSandbox.create).parameters
    client_side = {"api_key", "api_url", "request_timeout"}
    assert set(create) - client_side == set(SandboxSettings.model_fields)
    assert set(LimitsRequest.model_fields) == set(Limits.model_fields)


def test_the_agent_gets_its_limits_by_their_names() -> None:
    configured = set(protocol.as_dict(protocol.Configure()))
    assert configured and configured <= set(Limits.model_fields)


def test_every_limit_is_a_flag_of_firebox_serve() -> None:
    help_text = parser().parse_args(["serve"])
    for name, info in Limits.model_fields.items():
        assert getattr(help_text, name) == info.default


def test_a_create_names_only_what_it_changes() -> None:
    defaults = Limits(memory_mb=1024)
    got = resolve(LimitsRequest(processes=64), defaults)
    assert got == Limits(memory_mb=1024, processes=64)
    assert resolve(None, defaults) == defaults


def test_the_absolute_bounds_come_from_limits() -> None:
    with pytest.raises(ValidationError):
        LimitsRequest(memory_mb=32)
    with pytest.raises(ValidationError):
        LimitsRequest(swap_mb=1)  # no such limit
    with pytest.raises(ValidationError):
        SandboxSettings(limits={"cpu_count": 0})


def test_the_daemons_bounds_name_the_option_that_sets_them() -> None:
    most = {"memory_mb": Bound(2048, "--max-sandbox-memory-mb")}
    least = {"memory_mb": Bound(256, "a microvm sandbox")}
    with pytest.raises(SettingsError, match="--max-sandbox-memory-mb"):
        resolve(LimitsRequest(memory_mb=4096), Limits(), most, least)
    with pytest.raises(SettingsError, match="at least 256"):
        resolve(LimitsRequest(memory_mb=128), Limits(), most, least)
    assert resolve(LimitsRequest(memory_mb=2048), Limits(), most, least).memory_mb == 2048


def test_a_default_above_its_ceiling_is_lowered_to_it() -> None:
    most = {"output_mb": Bound(8, "--max-output-mb"), "cpu_count": Bound(0, "none")}
    assert resolve(None, Limits(), most).output_mb == 8
    assert resolve(None, Limits(), most).cpu_count == Limits().cpu_count  # 0: no bound
