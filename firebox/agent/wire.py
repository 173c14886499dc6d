"""The private framing between the agent and its code workers (never seen by the daemon).

A code context is one interpreter process (python_worker.py, the node program in js_worker.py,
bash driven by bash_worker.py) started by the agent as the sandbox user. Three kinds of pipe
connect them:

- commands, agent → worker: one JSON object per line ``{"k": "run", "seq": N, "code": ...,
  "env": {...}}`` on a pipe of its own (bash instead reads shell text on its stdin, since an
  interactive shell only reads commands there; see bash_worker.py);
- messages, worker → agent: one JSON object per line, UTF-8, on a pipe of its own (``MESSAGE``
  kinds below);
- the worker's fd 1 and 2: whatever the cell's child processes and C code write, forwarded
  as output by the agent. Python's own ``sys.stdout`` goes as ``stream`` messages instead, so
  that prints and rich results keep their order.

Every message of a cell belongs to the cell that is running; ``done`` carries the cell's
``seq`` so a late or repeated one (bash after an interrupt) is recognised and dropped.

The worker runs the user's code, so for the agent every message is untrusted input: lines are
bounded (``MAX_LINE``), fields are checked, and nothing a worker sends can do more than add
output to its own cell.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # not typing's: the agent imports this on its start-up path
if TYPE_CHECKING:
    from typing import Any

# worker → agent message kinds, in the "k" field
READY = "ready"  # the interpreter is up: {"k": "ready"}
FATAL = "fatal"  # it cannot start: {"k": "fatal", "message": str}, then it exits
STREAM = "stream"  # {"k": "stream", "fd": 1|2, "text": str}
RESULT = "result"  # {"k": "result", "data": {mime: str|json}, "main": bool, "chart": dict|None}
ERROR = "error"  # {"k": "error", "name": str, "value": str, "traceback": str}
DONE = "done"  # {"k": "done", "seq": int, "count": int|None, "status": int|None}

# agent → worker
RUN = "run"  # {"k": "run", "seq": int, "code": str, "env": {str: str}, "silent"?: true}
RESEED = "reseed"  # between cells, after a VM restore: {"k": "reseed"} (python only)

# A line longer than this is dropped (a PNG of a huge figure, a runaway repr): the agent must
# not hold unbounded input from user code, and one protocol header carries at most 8 MiB
# (protocol.MAX_HEADER) anyway.
MAX_LINE = 9 << 20
# Text a worker puts in one stream message; the agent splits frames further as needed.
STREAM_CHUNK = 64 * 1024


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line. Lone surrogates (from undecodable bytes) become "?": JSON text
    must be valid Unicode for every reader after us."""
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"), default=repr)
    return text.encode("utf-8", "replace") + b"\n"


def decode(line: bytes) -> dict[str, Any] | None:
    """A message from a line, or None when it is not a JSON object with a string kind."""
    try:
        message = json.loads(line.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or not isinstance(message.get("k"), str):
        return None
    return message
