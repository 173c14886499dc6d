"""An agent loop: a model with firebox's tools, against any OpenAI-compatible endpoint.

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=... \\
        .venv/bin/python examples/agent_loop.py [--model NAME] [--prompt "..."]

The model is asked for a chart of a generated series. Each tool call it makes runs in a
firebox sandbox (``firebox.tools``: the daemon's own MCP tools, as function schemas), whose
answer goes back to it, until it answers in words; then its answer is printed with the data
of the charts it drew (firebox extracts a matplotlib chart's data: type, title, elements).
Any OpenAI-compatible server works: a hosted API, or a local model server (llama.cpp,
vLLM, Ollama's /v1). The daemon is found as the SDK finds it (FIREBOX_URL, FIREBOX_API_KEY).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

from firebox.tools import Tools

PROMPT = (
    "Generate a series of 30 daily temperatures (a gentle sine wave around 20 °C plus a "
    "little noise, seeded so it is reproducible), plot it as a line chart titled "
    "'Daily temperature' with matplotlib and plt.show(), and tell me its minimum and maximum."
)
MAX_TURNS = 8


def chat(http: httpx.Client, model: str, messages: list[dict[str, Any]], tools: list[Any]) -> Any:
    r = http.post("/chat/completions", json={"model": model, "messages": messages, "tools": tools})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", ""))
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    ap.add_argument("--model", default=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    ap.add_argument("--prompt", default=PROMPT)
    args = ap.parse_args()
    if not args.base_url:
        print("give the model endpoint: --base-url or OPENAI_BASE_URL", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    charts: list[dict[str, Any]] = []
    with (
        Tools() as tools,
        httpx.Client(base_url=args.base_url.rstrip("/"), headers=headers, timeout=300) as http,
    ):
        schemas = tools.openai()
        messages: list[dict[str, Any]] = [{"role": "user", "content": args.prompt}]
        for _ in range(MAX_TURNS):
            message = chat(http, args.model, messages, schemas)
            messages.append(message)
            calls = message.get("tool_calls") or []
            if not calls:
                print("model:", message.get("content") or "")
                break
            for call in calls:
                fn = call["function"]
                print(f"tool: {fn['name']}({fn['arguments'][:200]})", file=sys.stderr)
                reply = tools.call(fn["name"], fn["arguments"])
                for result in (reply.structured or {}).get("results", []):
                    if result.get("chart"):
                        charts.append(result["chart"])
                messages.append(
                    {"role": "tool", "tool_call_id": call["id"], "content": reply.openai_content()}
                )
        else:
            print(f"the model did not finish in {MAX_TURNS} turns", file=sys.stderr)
            return 1
    for chart in charts:
        print("chart data:", json.dumps(chart))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
