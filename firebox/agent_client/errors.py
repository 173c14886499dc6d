"""The agent client's errors: every failure of a call to the agent is one of these.

Exceptions::

    AgentError            the agent answered with an Error frame (.code in ERROR_CODES)
      AgentTimeout        ... or did not answer in time (code "timeout"; a TimeoutError)
    AgentGone             the connection is lost; every pending and later call raises it
"""

from __future__ import annotations

from typing import NoReturn

from firebox import protocol
from firebox.protocol import Message

MAX_MESSAGE = 4000  # characters of an agent's error message we pass on


class AgentError(Exception):
    """An ``Error`` frame from the agent."""

    def __init__(self, code: str, message: str) -> None:
        if code not in protocol.ERROR_CODES:
            code = "internal"
        message = str(message)[:MAX_MESSAGE]
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AgentTimeout(AgentError, TimeoutError):
    """The agent did not answer in time; the request was cancelled on the agent's side."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class AgentGone(Exception):
    """The connection to the agent is lost (the sandbox died, or the agent broke protocol)."""


def _raise_error(msg: Message, request: str) -> NoReturn:
    if isinstance(msg, protocol.Error):
        raise AgentError(str(msg.code), str(msg.message))
    raise AgentError("internal", f"the agent sent {msg.T!r} in reply to {request!r}")
