"""Stateful code execution: ``sandbox.run_code`` and the code contexts behind it."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

import httpx

from firebox._async._callbacks import emit
from firebox._async._http import AsyncApiClient
from firebox._core.code import (
    Context,
    Execution,
    ExecutionError,
    OutputMessage,
    Result,
    context_id,
    end_error,
    output_message,
    parse_code_event,
    parse_context,
    parse_error,
    parse_result,
)
from firebox._core.errors import error_from_transport
from firebox._core.models import OutputHandler
from firebox._core.requests import command_timeout, context_start_timeout, sandbox_path
from firebox._core.responses import parse_list
from firebox.exceptions import SandboxException

LANGUAGES = ("python", "javascript", "typescript", "bash")


class AsyncCodeExecution:
    """The sandbox's code execution methods (``sbx.run_code``, ``sbx.create_code_context``…),
    mixed into ``AsyncSandbox``, whose ``_sandbox_id`` and ``_api`` they use."""

    _sandbox_id: str
    _api: AsyncApiClient

    async def run_code(
        self,
        code: str,
        language: str | None = None,
        context: Context | str | None = None,
        on_stdout: OutputHandler[OutputMessage] | None = None,
        on_stderr: OutputHandler[OutputMessage] | None = None,
        on_result: OutputHandler[Result] | None = None,
        on_error: OutputHandler[ExecutionError] | None = None,
        envs: Mapping[str, str] | None = None,
        timeout: float | None = None,
        request_timeout: float | None = None,
    ) -> Execution:
        """Runs a cell in a stateful context: the default python one, the default context of
        ``language`` ("python", "javascript" or "bash"), or ``context``.

        Output reaches the callbacks while the cell runs. The ``Execution`` holds every rich
        result (display calls and the final value, with ``png`` for matplotlib figures and
        ``chart`` for their data), the logs, and the error if the cell raised. ``timeout`` (in
        seconds) interrupts the cell and keeps the context's variables; a cell that cannot be
        interrupted, or whose interpreter dies, restarts the context, and the error says so.
        """
        if language is not None and language not in LANGUAGES:
            from firebox.exceptions import InvalidArgumentException

            raise InvalidArgumentException(
                f"language must be one of {', '.join(LANGUAGES)}, not {language!r}"
            )
        body: dict[str, Any] = {
            "code": code,
            "language": language,
            "context_id": context_id(context) if context is not None else None,
            "envs": dict(envs or {}),
            "timeout": timeout,
        }
        response = await self._api.open_stream(
            "POST",
            sandbox_path(self._sandbox_id, "code"),
            json=body,
            timeout=command_timeout(timeout, request_timeout or self._api.config.request_timeout),
        )
        execution = Execution()
        ended = False
        try:
            async for line in response.aiter_lines():
                event = parse_code_event(line)
                if event is None:
                    continue
                kind = event["type"]
                if kind in ("stdout", "stderr"):
                    message = output_message(event)
                    (execution.logs.stdout if kind == "stdout" else execution.logs.stderr).append(
                        message.line
                    )
                    await emit(on_stdout if kind == "stdout" else on_stderr, message)
                elif kind == "result":
                    result = parse_result(event)
                    execution.results.append(result)
                    await emit(on_result, result)
                elif kind == "error":
                    execution.error = parse_error(event)
                else:
                    ended = True
                    count = event.get("execution_count")
                    execution.execution_count = count if isinstance(count, int) else None
                    execution.output_truncated = event.get("output_truncated") is True
                    execution.error = end_error(event, execution.error)
        except httpx.HTTPError as e:
            raise error_from_transport(e, self._api.config.api_url) from e
        finally:
            await response.aclose()
        if not ended:
            raise SandboxException(
                "the daemon's answer to run_code ended without an end event; the sandbox may "
                "have died (check sbx.is_running())"
            )
        if execution.error is not None:
            await emit(on_error, execution.error)
        return execution

    async def create_code_context(
        self,
        language: str = "python",
        cwd: str | None = None,
        request_timeout: float | None = None,
        user: str = "user",
    ) -> Context:
        """A new, independent context (its own variables) for ``language``, run as ``user``
        ("user" or "root": E2B's contexts run as root, so ``cwd="/root"`` needs it here)."""
        response = await self._api.request(
            "POST",
            sandbox_path(self._sandbox_id, "contexts"),
            json={"language": language, "cwd": cwd, "user": user},
            timeout=context_start_timeout(request_timeout, self._api.config.request_timeout),
        )
        return parse_context(response.json())

    async def list_code_contexts(
        self, request_timeout: float | None = None
    ) -> builtins.list[Context]:
        response = await self._api.request(
            "GET", sandbox_path(self._sandbox_id, "contexts"), timeout=request_timeout
        )
        return [parse_context(c) for c in parse_list(response.json(), "code contexts")]

    async def restart_code_context(
        self, context: Context | str, request_timeout: float | None = None
    ) -> None:
        """Start the context's interpreter afresh: its variables are gone."""
        await self._api.request(
            "POST",
            sandbox_path(self._sandbox_id, "contexts", context_id(context), "restart"),
            timeout=context_start_timeout(request_timeout, self._api.config.request_timeout),
        )

    async def remove_code_context(
        self, context: Context | str, request_timeout: float | None = None
    ) -> None:
        await self._api.request(
            "DELETE",
            sandbox_path(self._sandbox_id, "contexts", context_id(context)),
            timeout=request_timeout,
        )
