"""`firebox e2b env`: the environment that points E2B's SDKs at the daemon the CLI finds."""

from __future__ import annotations

import pytest

from firebox import cli


def _printed(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    out = {}
    for line in capsys.readouterr().out.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        out[name] = value
    return out


def test_it_names_the_control_api_the_sandbox_url_and_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "e2b_" + "0123456789abcdef" * 4
    monkeypatch.setenv("FIREBOX_URL", "http://10.0.0.5:7070/")
    monkeypatch.setenv("FIREBOX_API_KEY", key)
    assert cli.main(["e2b", "env"]) == 0
    assert _printed(capsys) == {
        "E2B_API_URL": "http://10.0.0.5:7070/e2b",
        "E2B_SANDBOX_URL": "http://10.0.0.5:7070",
        "E2B_API_KEY": key,
    }


def test_a_key_of_the_old_form_turns_off_e2bs_js_key_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FIREBOX_URL", "http://127.0.0.1:7070")
    monkeypatch.setenv("FIREBOX_API_KEY", "fbx_old-key with space")
    assert cli.main(["e2b", "env"]) == 0
    printed = _printed(capsys)
    assert printed["E2B_VALIDATE_API_KEY"] == "false"
    assert printed["E2B_API_KEY"] == "'fbx_old-key with space'"  # quoted for the shell


def test_no_key_anywhere_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("FIREBOX_API_KEY", raising=False)
    monkeypatch.setenv("FIREBOX_URL", "http://127.0.0.1:7070")
    monkeypatch.setenv("FIREBOX_HOME", str(tmp_path))
    with pytest.raises(SystemExit, match="FIREBOX_API_KEY"):
        cli.main(["e2b", "env"])
