"""Code contexts: named, stateful interpreters (python, javascript, typescript, bash) and
``code.run``.

A context is an id, a language, a user and a working directory, and at most one live
``Interpreter`` (interpreter.py; launch.py starts it) holding its state. Each language has a
default context whose id is the language's name ("python", "javascript", "typescript",
"bash"), made on first use; the python one is started in the background as soon as the agent
has said hello (``prestart``), so the first ``run_code`` of a sandbox does not wait for
IPython's start-up.

A context runs one cell at a time; a second ``code.run`` waits its turn (as a notebook queues
cells). A cell ends in one of these ways (``CodeDone`` fields in brackets):

- it finishes; an error it raised is its one ``CodeError``;
- its ``timeout`` passes: SIGINT, as a terminal's ^C (``timed_out``). The cell's error is then
  named ``TimeoutError``; the context and its variables are kept. If the cell has not stopped
  ``interrupts.GRACE`` seconds later, the interpreter is killed and started afresh (``restarted``);
- its interpreter dies (``os._exit``, the OOM killer, ``exit`` in bash): ``InterpreterDied``
  (``restarted``); a fresh interpreter is started at once, in the background;
- ``context.restart`` or ``context.remove`` ends it: ``ContextRestarted`` (``restarted``), or
  an ``Error`` ``not_found`` for a removed context;
- the daemon cancels the channel (its client went away): the cell is interrupted as on a
  timeout, since nobody is left to wait for it and it would hold the context.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from firebox import protocol
from firebox.agent import bash_worker, children, egress, interrupts, launch, process, users
from firebox.agent.cell import Cell
from firebox.agent.channel import Stream
from firebox.agent.errors import Fail, log
from firebox.agent.turns import Turns

TYPE_CHECKING = False  # not typing's: see main.py
if TYPE_CHECKING:
    from typing import Any

    from firebox.agent.interpreter import Interpreter

ALIASES = {"py": "python", "python3": "python", "js": "javascript", "node": "javascript"}
ALIASES.update(ts="typescript")
ALIASES.update(sh="bash", shell="bash")
RESTARTED = "the context was restarted by request"


class Context:
    def __init__(self, cid: str, language: str, user: users.User, cwd: str) -> None:
        self.id = cid
        self.language = language
        self.user = user
        self.cwd = cwd
        self.interp: Interpreter | None = None
        # Held by a running cell and by (re)starts: one thing at a time per interpreter, in
        # the order they came (turns.py).
        self.turns = Turns()
        self.removed = False

    def info(self) -> dict[str, Any]:
        return protocol.as_dict(protocol.ContextInfo(self.id, self.language, self.cwd))

    def ensure(self) -> Interpreter:
        """The live interpreter, started if there is none (call holding ``turns``)."""
        interp = self.interp
        if interp is None or interp.dead is not None:
            # An interpreter that died between cells is replaced here, when next needed.
            interp = launch.start(self.language, self.user, self.cwd)
            self.interp = interp
        return interp

    def restart_soon(self) -> None:
        """Start a fresh interpreter in the background, so the next cell does not wait."""

        def start() -> None:
            with self.turns.hold():
                if self.removed:
                    return
                try:
                    self.ensure()
                except Fail as e:
                    log(f"could not restart code context {self.id}: {e.message}")

        threading.Thread(target=start, name=f"restart-{self.id}", daemon=True).start()

    def acquire(self, stream: Stream, deadline: float | None, ticket: int | None = None) -> None:
        """Wait for our turn (``ticket``, else one drawn now) behind the cells ahead; give up
        if the daemon cancels, the context goes, or the cell's own timeout (which counts the
        wait) runs out first."""
        if ticket is None:
            ticket = self.turns.draw()
        while not self.turns.wait(ticket, 0.2):
            why = None
            if stream.cancelled:
                why = Fail("invalid", "cancelled while waiting for the cell ahead")
            elif self.removed:
                why = _removed(self.id)
            elif deadline is not None and time.monotonic() >= deadline:
                why = Fail(
                    "busy",
                    f"code context {self.id!r} was still running an earlier cell when this "
                    "one's timeout ran out; wait for it, interrupt it (restart the context) "
                    "or use another context",
                )
            if why is not None:
                self.turns.give_up(ticket)
                raise why
        if self.removed:
            self.turns.release()
            raise _removed(self.id)


RESTART_WAIT = protocol.CONTEXT_RESTART_WAIT  # for the killed cell to let go of its context

_contexts: dict[str, Context] = {}
_registry = threading.Lock()


def _removed(cid: str) -> Fail:
    return Fail("not_found", f"code context {cid!r} was removed")


def _language(value: object) -> str:
    if isinstance(value, str):
        value = ALIASES.get(value.lower(), value.lower())
    if value not in protocol.LANGUAGES:
        raise Fail(
            "invalid",
            f"unknown language {value!r}: a code context runs "
            f"{', '.join(protocol.LANGUAGES[:-1])} or {protocol.LANGUAGES[-1]}",
        )
    return str(value)


def _default(language: str) -> Context:
    """The language's default context (id = its name), made on first use."""
    with _registry:
        ctx = _contexts.get(language)
        if ctx is None:
            user = users.lookup("user")
            ctx = Context(language, language, user, user.home)
            _contexts[language] = ctx
        return ctx


def _find(cid: object) -> Context:
    if not isinstance(cid, str) or not cid:
        raise Fail("invalid", "a code context id is required")
    with _registry:
        ctx = _contexts.get(cid)
    if ctx is None:
        if cid in protocol.LANGUAGES:
            return _default(cid)
        raise Fail(
            "not_found",
            f"no code context {cid!r} in this sandbox (the defaults are "
            f"{', '.join(protocol.LANGUAGES)}; list the others with context.list)",
        )
    return ctx


# -- requests ---------------------------------------------------------------------------------


def create(stream: Stream, msg: protocol.ContextCreate, payload: bytes) -> dict[str, Any]:
    language = _language(msg.language)
    user = users.lookup(msg.user)
    if msg.cwd is not None and not isinstance(msg.cwd, str):
        raise Fail("invalid", "cwd must be a path")
    cwd = children.workdir(user, msg.cwd)
    ctx = Context(os.urandom(16).hex(), language, user, cwd)
    with ctx.turns.hold():
        ctx.ensure()  # a context that cannot run says so now, not at its first cell
    with _registry:
        _contexts[ctx.id] = ctx
    return ctx.info()


def list_(stream: Stream, msg: protocol.ContextList, payload: bytes) -> list[dict[str, Any]]:
    with _registry:
        return [ctx.info() for ctx in _contexts.values()]


def restart(stream: Stream, msg: protocol.ContextRestart, payload: bytes) -> dict[str, Any]:
    ctx = _find(msg.id)
    interp = ctx.interp
    if interp is not None:
        # Not waiting for the lock first: restarting is how a user unsticks a hung cell.
        interp.kill(RESTARTED)
    ctx.acquire(stream, time.monotonic() + RESTART_WAIT, ctx.turns.draw(first=True))
    try:
        if ctx.interp is interp:  # else one started since we killed: fresh already
            ctx.interp = None
        ctx.ensure()
    finally:
        ctx.turns.release()
    return ctx.info()


def remove(stream: Stream, msg: protocol.ContextRemove, payload: bytes) -> None:
    ctx = _find(msg.id)
    with _registry:
        _contexts.pop(ctx.id, None)
    ctx.removed = True
    if ctx.interp is not None:
        ctx.interp.kill("the context was removed")


def _context_of(msg: protocol.CodeRun) -> Context:
    if msg.context_id is not None:
        ctx = _find(msg.context_id)
        if msg.language is not None and _language(msg.language) != ctx.language:
            raise Fail(
                "invalid",
                f"code context {ctx.id!r} runs {ctx.language}, not {_language(msg.language)}",
            )
        return ctx
    return _default(_language(msg.language or "python"))


# a cell's context and ticket, drawn as its request was read
_arrivals: dict[Stream, tuple[Context, int]] = {}


def arrived(stream: Stream, msg: protocol.CodeRun) -> None:
    """On the reading thread, as a cell's request is read: its place in its context's queue
    (a request that names no valid context gets none: ``run`` says why)."""
    with contextlib.suppress(Fail):
        ctx = _context_of(msg)
        ticket = ctx.turns.draw()
        with _registry:
            _arrivals[stream] = (ctx, ticket)


def not_run(stream: Stream) -> None:
    """A cell that ``arrived`` will not run (the agent had no thread for it): its turn goes."""
    with _registry:
        arrival = _arrivals.pop(stream, None)
    if arrival is not None:
        ctx, ticket = arrival
        ctx.turns.give_up(ticket)


def run(stream: Stream, msg: protocol.CodeRun, payload: bytes) -> dict[str, Any]:
    with _registry:
        arrival = _arrivals.pop(stream, None)
    ctx = _context_of(msg)
    if arrival is not None and arrival[0] is not ctx:  # its context was replaced meanwhile
        arrival[0].turns.give_up(arrival[1])
        arrival = None
    ticket = arrival[1] if arrival is not None else ctx.turns.draw()
    try:
        code, env, timeout = _check_run(ctx, msg)
    except Fail:
        ctx.turns.give_up(ticket)
        raise
    # A context may predate the sandbox's egress (a pooled sandbox's): every cell gets the
    # proxy variables, and what it starts inherits them.
    env = {**egress.proxy_env(), **env}
    deadline = time.monotonic() + timeout if timeout is not None else None
    ctx.acquire(stream, deadline, ticket)
    try:
        if deadline is not None:  # the time spent queued behind another cell counts
            timeout = max(0.001, deadline - time.monotonic())
        interp = ctx.ensure()
        cell = Cell(stream, interp.next_seq())
        cell.timeout = timeout
        cell.output_left = process.output_limit(msg.output_limit)
        stream.on_cancel(cell.cancel)
        interp.start(cell, code, env, silent=msg.silent is True)
        interrupts.wait(cell, interp, timeout)
    finally:
        ctx.turns.release()
    return _outcome(ctx, cell)


def _check_run(ctx: Context, msg: protocol.CodeRun) -> tuple[str, dict[str, str], float | None]:
    if not isinstance(msg.code, str):
        raise Fail("invalid", "code must be a string")
    env = msg.envs if msg.envs is not None else {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in env.items()
    ):
        raise Fail("invalid", "envs must map variable names to strings")
    timeout = msg.timeout
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise Fail("invalid", f"timeout must be a positive number of seconds, not {timeout!r}")
    if ctx.language == "bash":
        if "\0" in msg.code:
            raise Fail("invalid", "bash code cannot contain NUL characters")
        bad = [name for name in env if not bash_worker.NAME.match(name)]
        if bad:
            raise Fail("invalid", f"{bad[0]!r} is not a name bash can export")
    return msg.code, env, timeout


def _outcome(ctx: Context, cell: Cell) -> dict[str, Any]:
    done = protocol.CodeDone(
        execution_count=cell.count,
        timed_out=cell.timed_out,
        output_truncated=cell.output_truncated,
    )
    if cell.died is not None:
        if ctx.removed:
            raise Fail("not_found", f"code context {ctx.id!r} was removed while the cell ran")
        done.restarted = True
        done.execution_count = None
        if cell.killed and cell.died == RESTARTED:
            name, reason = "ContextRestarted", cell.died
        elif cell.killed and cell.timed_out:
            name = "TimeoutError"
            reason = f"{cell.died}; the context was restarted and its state is lost"
        else:
            name = "InterpreterDied"
            reason = (
                f"{cell.died} while running the cell; "
                "the context was restarted and its state is lost"
            )
            reason = reason[0].upper() + reason[1:]
        done.reason = reason
        cell.send_error(name, reason)
        if name != "ContextRestarted":  # else the restart request starts the new one
            ctx.restart_soon()
    elif cell.timed_out:
        done.reason = cell.timeout_message()
        if not cell.error_sent:  # it ended at the very moment of the interrupt
            cell.send_error("TimeoutError", cell.timeout_message())
    elif ctx.language == "bash" and cell.status:
        cell.send_error(
            "ExitCode",
            str(cell.status),
            f"the cell's last command exited with status {cell.status}",
        )
    return protocol.as_dict(done)


# -- lifecycle --------------------------------------------------------------------------------


def prestart(preforked: Interpreter | None = None) -> None:
    """Start the default python context's interpreter in the background (after hello), or
    adopt the one the agent forked (launch.prefork): either way the first cell finds it
    ready or waits for it."""

    def start() -> None:
        try:
            ctx = _default("python")
            with ctx.turns.hold():
                if preforked is not None and ctx.interp is None:
                    ctx.interp = preforked
                    preforked.wait_ready()
                ctx.ensure()  # a fresh start if the adopted one failed
        except Fail as e:  # the first run_code reports it to the user
            log(f"the default python context did not start: {e.message}")

    if preforked is not None or os.environ.get("FIREBOX_PRESTART", "1") != "0":
        threading.Thread(target=start, name="prestart", daemon=True).start()


def reseed() -> None:
    """A restored VM: every python interpreter reseeds its generators (see resume.py)."""
    with _registry:
        contexts = list(_contexts.values())
    for ctx in contexts:
        if ctx.interp is not None:
            ctx.interp.reseed()


def kill_all() -> None:
    """The daemon is gone: end every interpreter (each leads a session of its own)."""
    with _registry:
        contexts = list(_contexts.values())
    for ctx in contexts:
        if ctx.interp is not None:
            ctx.interp.kill("the agent is stopping")
