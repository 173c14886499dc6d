"""The daemon's end of the agent channel (see firebox.protocol), on asyncio.

One reader task reads frames and routes each to its channel's queue; callers open channels
(odd, increasing ids), send a request and consume the replies. Data is credited back to the
agent only as the consumer takes it, so a slow HTTP client slows the agent down instead of
filling the daemon's memory.

The agent runs beside untrusted code and is treated as untrusted too: every frame is checked
against the limits we granted (credit, queue length, header shape), and a violation ends the
connection (``AgentGone``) rather than growing a queue or crashing a request handler.

It sits below the server and the backends (both use it) and above the protocol: it imports
neither of the first two. What the server wants to know of it comes out through ``agent_waits``.

Modules: ``client`` (``AgentClient``, the multiplexer), ``channel`` (one channel's queue and
credit), ``streams`` (the replies of a streaming request), ``errors``.

Exceptions::

    AgentError            the agent answered with an Error frame (.code in ERROR_CODES)
      AgentTimeout        ... or did not answer in time (code "timeout"; a TimeoutError)
    AgentGone             the connection is lost; every pending and later call raises it
"""

from __future__ import annotations

from firebox.agent_client.client import STREAM_LIMIT, AgentClient, agent_waits
from firebox.agent_client.errors import MAX_MESSAGE, AgentError, AgentGone, AgentTimeout
from firebox.agent_client.streams import (
    CodeStream,
    FileDownload,
    NetConnection,
    ProcessStream,
    Watch,
)

__all__ = [
    "MAX_MESSAGE",
    "STREAM_LIMIT",
    "AgentClient",
    "AgentError",
    "AgentGone",
    "AgentTimeout",
    "CodeStream",
    "FileDownload",
    "NetConnection",
    "ProcessStream",
    "Watch",
    "agent_waits",
]
