"""examples/agent_loop.py, run as a user runs it, against a small stand-in for an
OpenAI-compatible model endpoint on loopback that replays a recorded conversation: a tool call
that draws the chart, then an answer in words. The stand-in checks what the example sends it
(the tools' schemas, the tool's answer); the example is the one that works against a real
endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon

pytestmark = pytest.mark.daemon_only
ROOT = Path(__file__).resolve().parents[2]

CELL = (
    "import numpy as np, matplotlib.pyplot as plt\n"
    "rng = np.random.default_rng(7)\n"
    "t = 20 + 3 * np.sin(np.arange(30) / 5) + rng.normal(0, 0.3, 30)\n"
    "plt.plot(range(30), t); plt.title('Daily temperature'); plt.show()\n"
    "print(round(t.min(), 1), round(t.max(), 1))"
)
# what a model answered, recorded: a tool call, then words
REPLIES = [
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "run_code", "arguments": json.dumps({"code": CELL})},
            }
        ],
    },
    {"role": "assistant", "content": "The series ranges from {low} to {high} °C."},
]


class Model(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        assert self.path == "/v1/chat/completions", self.path
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Model.requests.append(body)
        reply = dict(REPLIES[min(len(Model.requests), len(REPLIES)) - 1])
        if reply.get("content"):  # the answer quotes what the tool printed
            printed = body["messages"][-1]["content"].split("stdout:\n", 1)[1].split()
            reply["content"] = reply["content"].format(low=printed[0], high=printed[1])
        data = json.dumps({"choices": [{"index": 0, "message": reply}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_the_example_agent_loop_draws_the_chart_and_answers(daemon: Daemon) -> None:
    Model.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Model)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "FIREBOX_"))},
            **daemon.env(),
            "OPENAI_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}/v1",
            "OPENAI_API_KEY": "test-key",
        }
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "agent_loop.py"), "--model", "stand-in"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    first, second = Model.requests
    names = {t["function"]["name"] for t in first["tools"]}
    assert "run_code" in names and first["model"] == "stand-in"
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_1"
    lines = done.stdout.splitlines()
    assert lines[0].startswith("model: The series ranges from ")
    chart = json.loads(lines[1].removeprefix("chart data: "))
    assert chart["type"] == "line" and chart["title"] == "Daily temperature"
    assert len(chart["elements"][0]["points"]) == 30
