"""``firebox.tools``: the daemon's MCP tools for LLM APIs without MCP. The schemas in OpenAI's
and Anthropic's shapes are valid JSON Schema; the dispatcher's answers for each kind of call
(a cell with a chart, a failing command, files, bad arguments); a session's sandbox ends with it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from jsonschema import Draft202012Validator

from firebox.tools import Tools
from tests.conftest import Daemon

pytestmark = pytest.mark.daemon_only


@pytest.fixture
def tools(daemon: Daemon) -> Iterator[Tools]:
    with Tools(api_key=daemon.key, api_url=daemon.url) as t:
        yield t


def test_schemas_in_both_shapes_are_json_schema(tools: Tools) -> None:
    openai, anthropic = tools.openai(), tools.anthropic()
    assert {t["function"]["name"] for t in openai} == {t["name"] for t in anthropic}
    assert {"run_code", "run_command", "read_file", "write_file"} <= {t["name"] for t in anthropic}
    for t in openai:
        assert t["type"] == "function" and t["function"]["description"]
        Draft202012Validator.check_schema(t["function"]["parameters"])
        assert t["function"]["parameters"]["type"] == "object"
    for t in anthropic:
        Draft202012Validator.check_schema(t["input_schema"])
    run_code = next(t for t in anthropic if t["name"] == "run_code")
    assert run_code["input_schema"]["required"] == ["code"]


def test_the_dispatcher_answers_each_kind_of_call(tools: Tools, daemon: Daemon) -> None:
    chart = tools.call(
        "run_code",
        '{"code": "import matplotlib.pyplot as plt\\nplt.plot([1, 2], [3, 1]); plt.show()"}',
    )
    assert not chart.is_error, chart.text
    assert chart.images and chart.images[0][0] == "image/png"
    blocks = chart.anthropic_content()
    assert blocks[0]["type"] == "text" and blocks[1]["type"] == "image"
    assert blocks[1]["source"]["media_type"] == "image/png"
    assert chart.structured and chart.structured["results"][0]["chart"]["type"] == "line"
    sid = "sbx_" + chart.text.split("sbx_", 1)[1][:16]

    state = tools.call("run_code", {"code": "x = 20\nx * 2"})  # the session's sandbox again
    assert "40" in state.text and "created" not in state.text

    failed = tools.call("run_command", {"command": "ls /nowhere"})
    assert failed.is_error and "No such file" in failed.text
    assert failed.openai_content().startswith("error: ")

    assert not tools.call("write_file", {"path": "/home/user/a.txt", "content": "42"}).is_error
    assert tools.call("read_file", {"path": "/home/user/a.txt"}).text == "42"

    bad = tools.call("run_code", "{not json")
    assert bad.is_error and "not JSON" in bad.text
    unknown = tools.call("no_such_tool", {})
    assert unknown.is_error

    tools.close()
    with daemon.client() as api:
        deadline = time.monotonic() + 30
        while api.get(f"/sandboxes/{sid}").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert api.get(f"/sandboxes/{sid}").status_code == 404


def test_the_environment_finds_the_daemon(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in daemon.env().items():
        monkeypatch.setenv(k, v)
    assert os.environ["FIREBOX_URL"] == daemon.url
    with Tools() as t:
        assert t.anthropic()
