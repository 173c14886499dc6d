"""Code contexts in the real agent: python (IPython), javascript (node) and bash cells.

The agent runs in a real jail on the ``python`` template image (the Debian IPython, pandas,
matplotlib and node the product ships), started through the jail backend itself, with the
agent staged from this source tree. Each test runs twice, once per user a context may run as
(the API's ``user``):

- ``jail``: as the sandbox's ``user`` (uid 1000), whose workers are started through the
  agent's spawner and forked from that user's fork server;
- ``jail-root``: as the sandbox's ``root``, whose workers the agent (itself root in the jail)
  starts directly, forked from root's own fork server.

(An earlier ``host`` variant ran the agent on this host with a local IPython, which this host
and CI lack, so it always skipped; contexts as root were all it covered beyond the jail, and
``jail-root`` covers them in the template's own interpreter.)

The daemon side is AgentClient.run_code, what the daemon's code endpoint reads a cell with.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from firebox import protocol
from firebox.agent.interrupts import GRACE
from firebox.agent_client import AgentClient, AgentError
from firebox.confine.cgroups import PARENT_ENV

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent tests run as root")

# How long a test waits for a context to start or a cell to end: past the agent's own limit
# on an interpreter's start, so that its error (not ours) says what went wrong.
WAIT = protocol.INTERPRETER_START_TIMEOUT + 30


# -- where the agent runs ---------------------------------------------------------------------


@dataclass
class Host:
    kind: str  # "jail" (contexts as the sandbox's user) | "jail-root" (as its root)
    client: AgentClient
    user: str  # who contexts run as
    home: str
    stop: Any = None
    made: list[str] = field(default_factory=list)  # contexts to remove after the test


async def _jail_host(tmp: Path, kind: str) -> Host:
    from firebox import images
    from firebox.backends.base import SandboxSpec
    from firebox.backends.jail.backend import JailBackend
    from firebox.backends.owner import Owner

    rootfs = images.image_path("python")
    if rootfs is None:
        pytest.skip("the 'python' template image is not built (firebox image build python)")
    # A uid range and cgroup parent of our own: a daemon of the functional tests may run
    # beside us with the defaults.
    old_parent = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = f"firebox-ctxtest-{os.getpid()}"
    backend = JailBackend(Owner.of_home(tmp), uid_base=1_800_000_000)
    verdict = backend.availability()
    if not verdict.ok:
        pytest.skip(f"the jail backend cannot run here: {verdict.reason}")
    spec = SandboxSpec(sandbox_id=f"ctx-{uuid.uuid4().hex[:12]}", template="python", rootfs=rootfs)
    sandbox = await backend.start(spec)
    client = AgentClient(sandbox.reader, sandbox.writer)
    await client.wait_hello(WAIT)

    async def stop() -> None:
        await client.close()
        await sandbox.cleanup()
        await backend.close()
        if old_parent is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = old_parent

    if kind == "jail-root":
        return Host(kind, client, "root", "/root", stop)
    return Host(kind, client, "user", "/home/user", stop)


@pytest_asyncio.fixture(scope="module", params=["jail", "jail-root"])
async def host(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Host]:
    tmp = tmp_path_factory.mktemp(f"contexts-{request.param}")
    h = await _jail_host(tmp, request.param)
    yield h
    await h.stop()


# -- driving code.run -------------------------------------------------------------------------


@dataclass
class Run:
    """What one code.run channel delivered, in order, with arrival times: events as
    AgentClient.run_code's stream yields them, ("stdout" | "stderr", text), ("result",
    CodeResult), ("error", CodeError), and the final CodeDone fields."""

    events: list[tuple[float, str, Any]] = field(default_factory=list)
    done: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0

    def _of(self, kind: str) -> list[Any]:
        return [v for _, k, v in self.events if k == kind]

    @property
    def stdout(self) -> str:
        return "".join(self._of("stdout"))

    @property
    def stderr(self) -> str:
        return "".join(self._of("stderr"))

    @property
    def results(self) -> list[protocol.CodeResult]:
        return self._of("result")

    @property
    def error(self) -> protocol.CodeError | None:
        errors = self._of("error")
        assert len(errors) <= 1, errors  # at most one per cell
        return errors[0] if errors else None

    @property
    def main(self) -> protocol.CodeResult | None:
        mains = [r for r in self.results if r.is_main_result]
        return mains[0] if mains else None

    @property
    def value(self) -> str | None:
        main = self.main
        return None if main is None else main.data.get("text/plain")


async def run(
    client: AgentClient,
    code: str,
    on_event: Callable[[str, Any], Awaitable[None]] | None = None,
    **kw: Any,
) -> Run:
    """Run a cell through AgentClient.run_code, as the daemon's code endpoint does;
    ``on_event(kind, value)`` is awaited on each event as it arrives."""
    out = Run()
    t0 = time.monotonic()
    stream = await client.run_code(protocol.CodeRun(code=code, **kw))
    async with asyncio.timeout(WAIT):
        async for kind, value in stream:
            out.events.append((time.monotonic() - t0, kind, value))
            if on_event is not None:
                await on_event(kind, value)
    assert stream.done is not None
    out.done = protocol.as_dict(stream.done)
    out.elapsed = time.monotonic() - t0
    return out


async def context(host: Host, language: str = "python", cwd: str | None = None) -> str:
    info = await host.client.call(
        protocol.ContextCreate(language=language, cwd=cwd, user=host.user), timeout=WAIT
    )
    assert info["language"] == language and info["cwd"] == (cwd or host.home)
    host.made.append(info["id"])
    return str(info["id"])


@pytest_asyncio.fixture(autouse=True)
async def _remove_contexts(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Each python context holds ~100 MB once pandas and matplotlib are in: a 512 MB sandbox
    fits a few at a time, not every test's."""
    yield
    if "host" in request.fixturenames:
        host: Host = request.getfixturevalue("host")
        while host.made:
            with contextlib.suppress(AgentError):
                await host.client.call(protocol.ContextRemove(id=host.made.pop()))


def png_of(result: protocol.CodeResult) -> bytes:
    return base64.b64decode(result.data["image/png"])


async def touch(host: Host, path: str) -> None:
    """Create an empty file in the jail, as the contexts' user (a cell waits for it)."""

    async def empty() -> AsyncIterator[bytes]:
        yield b""

    await host.client.write_file(path, host.user, empty())


def wait_for_file(path: str, seconds: int = 60) -> str:
    """Python that waits until ``path`` exists, for ``seconds`` at most (then goes on)."""
    return (
        f"import os as _os, time as _time\n_end = _time.monotonic() + {seconds}\n"
        f"while not _os.path.exists({path!r}) and _time.monotonic() < _end:\n"
        "    _time.sleep(0.01)\n"
    )


# -- python -----------------------------------------------------------------------------------


async def test_state_persists_across_cells(host: Host) -> None:
    cid = await context(host)
    first = await run(host.client, "x = 41", context_id=cid)
    assert first.events == [] and first.done["execution_count"] == 1
    second = await run(host.client, "x += 1; x", context_id=cid)
    assert second.value == "42" and second.error is None
    assert second.done == {
        "execution_count": 2,
        "timed_out": False,
        "restarted": False,
        "reason": None,
        "output_truncated": False,
    }


async def test_the_worker_leaves_no_trace_in_the_users_imports(host: Host) -> None:
    cid = await context(host)
    code = (
        "import os, sys\n[m for m in sys.modules if 'firebox' in m] + "
        "[p for p in sys.path if os.path.isdir(os.path.join(p or '.', 'firebox'))]"
    )
    assert (await run(host.client, code, context_id=cid)).value == "[]"


async def test_two_contexts_are_independent(host: Host) -> None:
    a, b = await context(host), await context(host)
    await run(host.client, "v = 'a'", context_id=a)
    await run(host.client, "v = 'b'", context_id=b)
    assert (await run(host.client, "v", context_id=a)).value == "'a'"
    assert (await run(host.client, "v", context_id=b)).value == "'b'"


async def test_stdout_streams_before_the_cell_ends(host: Host) -> None:
    # The cell goes on past "one" only once a file exists that this test writes when it has
    # received "one": so "one" arrived while the cell still ran.
    cid = await context(host)
    go = f"/tmp/go-{uuid.uuid4().hex}"
    code = (
        "import os, sys\nprint('one', flush=True)\n"
        + wait_for_file(go)
        + f"if not os.path.exists({go!r}):\n    print('gave up')\n"
        "print('two', file=sys.stderr)\nos.system('echo three')"
    )

    async def on_event(kind: str, value: Any) -> None:
        if kind == "stdout" and "one" in value:
            await touch(host, go)

    r = await run(host.client, code, on_event, context_id=cid)
    assert r.error is None, r.error
    assert (r.stdout, r.stderr) == ("one\nthree\n", "two\n")


async def test_prints_and_results_keep_their_order(host: Host) -> None:
    cid = await context(host)
    code = "from IPython.display import display, Markdown\nprint('a')\ndisplay(Markdown('*b*'))\n"
    code += "print('c')\n'd'"
    r = await run(host.client, code, context_id=cid)
    seen = [v if k == "stdout" else v.data.get("text/markdown", v.data) for _, k, v in r.events]
    assert seen == ["a\n", "*b*", "c\n", {"text/plain": "'d'"}]
    assert [m.is_main_result for m in r.results] == [False, True]


async def test_dataframe_gives_html_and_text(host: Host) -> None:
    cid = await context(host)
    r = await run(host.client, "import pandas as pd\npd.DataFrame({'a': [1, 2]})", context_id=cid)
    assert r.main is not None
    assert "<table" in r.main.data["text/html"]
    assert r.main.data["text/plain"].split() == ["a", "0", "1", "1", "2"]


CHARTS: dict[str, tuple[str, dict[str, Any]]] = {
    "line": (
        "plt.plot([1, 2, 3], [4, 5, 7], label='price')\nplt.plot([1, 2], [0.5, 1.5])\n"
        "plt.title('T'); plt.xlabel('day'); plt.ylabel('usd'); plt.legend()\nplt.show()",
        {
            "type": "line",
            "title": "T",
            "x_label": "day",
            "y_label": "usd",
            "x_scale": "linear",
            "y_scale": "linear",
            "elements": [
                {"label": "price", "points": [[1, 4], [2, 5], [3, 7]]},
                {"label": "", "points": [[1, 0.5], [2, 1.5]]},
            ],
        },
    ),
    "bar": (
        "fig, ax = plt.subplots()\nax.bar(['a', 'b'], [3, 5], label='2023')\n"
        "ax.bar(['a', 'b'], [1, 2], bottom=[3, 5], label='2024')\nax.set_title('B')\nfig",
        {
            "type": "bar",
            "title": "B",
            "x_label": "",
            "y_label": "",
            "x_scale": "linear",
            "y_scale": "linear",
            "elements": [
                {"label": "2023", "group": "a", "value": 3},
                {"label": "2023", "group": "b", "value": 5},
                {"label": "2024", "group": "a", "value": 1},
                {"label": "2024", "group": "b", "value": 2},
            ],
        },
    ),
    "scatter": (
        "plt.scatter([1, 2], [3, 4], label='s')\nplt.yscale('log')",  # left open at the end
        {
            "type": "scatter",
            "title": "",
            "x_label": "",
            "y_label": "",
            "x_scale": "linear",
            "y_scale": "log",
            "elements": [{"label": "s", "points": [[1, 3], [2, 4]]}],
        },
    ),
    "pie": (
        "plt.pie([1, 3], labels=['x', 'y'])\nplt.title('P')\nplt.show()",
        {
            "type": "pie",
            "title": "P",
            "elements": [
                {"label": "x", "angle": 90, "fraction": 0.25, "radius": 1},
                {"label": "y", "angle": 270, "fraction": 0.75, "radius": 1},
            ],
        },
    ),
}


@pytest.mark.parametrize("kind", list(CHARTS))
async def test_each_chart_kind_gives_png_and_its_data(host: Host, kind: str) -> None:
    cid = await context(host)
    code, expected = CHARTS[kind]
    r = await run(host.client, "import matplotlib.pyplot as plt\n" + code, context_id=cid)
    assert r.error is None, r.error
    figures = [m for m in r.results if "image/png" in m.data]
    assert len(figures) == 1  # shown once, never again as "left open"
    assert png_of(figures[0]).startswith(b"\x89PNG\r\n\x1a\n")
    chart = dict(figures[0].chart or {})
    ticks = {k: chart.pop(k) for k in list(chart) if "_tick" in k}  # the axes' own: not data
    assert chart == expected
    assert sorted(ticks) == (
        ["x_tick_labels", "x_ticks", "y_tick_labels", "y_ticks"]
        if kind in ("line", "scatter")
        else []
    )
    assert figures[0].is_main_result == (kind == "bar")  # the figure was the last expression
    again = await run(host.client, "1", context_id=cid)
    assert [m.data for m in again.results] == [{"text/plain": "1"}]  # closed after showing


async def test_pandas_plots_dates_and_unclassifiable_figures(host: Host) -> None:
    cid = await context(host)
    code = (
        "import pandas as pd, matplotlib.pyplot as plt\n"
        "s = pd.Series([1.0, 2.5], index=pd.date_range('2024-03-01', periods=2), name='p')\n"
        "s.plot(title='Prices')\nplt.axhline(2, label='target')\nplt.show()\n"
        "df = pd.DataFrame({'q1': [1, 2], 'q2': [3, 4]}, index=['north', 'south'])\n"
        "df.plot.bar()\nplt.show()\n"
        "plt.imshow([[0, 1], [1, 0]])\nplt.show()\n"
        "fig, (a, b) = plt.subplots(1, 2)\na.plot([1, 2])\nb.bar([1], [2])\nplt.show()"
    )
    r = await run(host.client, code, context_id=cid)
    charts = [m.chart for m in r.results if "image/png" in m.data]
    assert len(charts) == 4
    assert charts[0] is not None and charts[0]["elements"] == [  # the axhline is no data
        {"label": "p", "points": [["2024-03-01", 1], ["2024-03-02", 2.5]]}
    ]
    assert charts[1] is not None and charts[1]["elements"] == [
        {"label": "q1", "group": "north", "value": 1},
        {"label": "q1", "group": "south", "value": 2},
        {"label": "q2", "group": "north", "value": 3},
        {"label": "q2", "group": "south", "value": 4},
    ]
    assert charts[2] is None  # an image: no guess
    # two plots: each read on its own (a bar at x=1 without a placed tick is group "1")
    assert charts[3] is not None and charts[3]["type"] == "superchart"
    assert [c["type"] for c in charts[3]["elements"]] == ["line", "bar"]
    assert charts[3]["elements"][1]["elements"] == [{"label": "", "group": "1", "value": 2}]


async def test_matplotlib_magic_keeps_figures_as_results(host: Host) -> None:
    cid = await context(host)
    code = "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"
    r = await run(host.client, code, context_id=cid)
    assert r.error is None and (r.stdout, r.stderr) == ("", "")
    assert [png_of(m)[:4] for m in r.results] == [b"\x89PNG"]


async def test_errors_carry_name_value_and_the_users_traceback(host: Host) -> None:
    cid = await context(host)
    r = await run(host.client, "def f(x):\n    return 1 / x\n\nf(0)", context_id=cid)
    assert r.error is not None
    assert (r.error.name, r.error.value) == ("ZeroDivisionError", "division by zero")
    assert "----> 2     return 1 / x" in r.error.traceback
    assert "----> 4 f(0)" in r.error.traceback
    assert "firebox" not in r.error.traceback and "\x1b[" not in r.error.traceback
    syntax = await run(host.client, "x = (", context_id=cid)
    assert syntax.error is not None and syntax.error.name == "SyntaxError"
    assert (await run(host.client, "1 + 1", context_id=cid)).value == "2"


async def test_timeout_interrupts_and_keeps_state(host: Host) -> None:
    cid = await context(host)
    await run(host.client, "kept = 7", context_id=cid)
    r = await run(host.client, "while True:\n    pass", context_id=cid, timeout=1)
    # ended by the interrupt at its timeout, not by the kill GRACE later (restarted is False
    # below); the upper bound only has a loaded host's slack
    assert 1 <= r.elapsed < 1 + GRACE + 5
    assert r.error is not None and r.error.name == "TimeoutError"
    assert "KeyboardInterrupt" in r.error.traceback and "while True" in r.error.traceback
    assert r.done["timed_out"] is True and r.done["restarted"] is False
    assert (await run(host.client, "kept", context_id=cid)).value == "7"


async def test_a_cell_that_ignores_the_interrupt_is_killed_and_restarted(host: Host) -> None:
    cid = await context(host)
    await run(host.client, "lost = 1", context_id=cid)
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    # a timeout long enough that the interrupt comes after signal.signal has run
    r = await run(host.client, code, context_id=cid, timeout=3)
    assert r.done["timed_out"] is True and r.done["restarted"] is True
    assert r.error is not None and r.error.name == "TimeoutError"
    assert "state is lost" in r.done["reason"]
    after = await run(host.client, "lost", context_id=cid)
    assert after.error is not None and after.error.name == "NameError"
    assert after.done["execution_count"] == 1


async def test_os_exit_is_reported_and_the_context_restarts(host: Host) -> None:
    cid = await context(host)
    await run(host.client, "y = 1", context_id=cid)
    r = await run(host.client, "print('bye', flush=True)\nimport os; os._exit(3)", context_id=cid)
    assert r.stdout == "bye\n"
    assert r.error is not None and r.error.name == "InterpreterDied"
    assert "exited with status 3" in r.error.value
    assert r.done["restarted"] is True and "exited with status 3" in r.done["reason"]
    assert (await run(host.client, "1 + 1", context_id=cid)).value == "2"
    gone = await run(host.client, "y", context_id=cid)
    assert gone.error is not None and gone.error.name == "NameError"


async def test_exhausting_memory_is_reported_and_the_context_restarts(host: Host) -> None:
    cid = await context(host)
    r = await run(
        host.client,
        "blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 26))",
        context_id=cid,
    )
    assert r.done["restarted"] is True, r.done
    assert r.error is not None and r.error.name in ("InterpreterDied", "MemoryError")
    if r.error.name == "InterpreterDied":
        assert "SIGKILL" in r.error.value and "memory" in r.error.value
    assert (await run(host.client, "2 * 21", context_id=cid)).value == "42"


async def test_env_applies_to_one_cell(host: Host) -> None:
    cid = await context(host)
    code = "import os; os.environ.get('GREETING')"
    assert (await run(host.client, code, context_id=cid, envs={"GREETING": "hi"})).value == "'hi'"
    assert (await run(host.client, code, context_id=cid)).value is None


async def test_cells_of_one_context_queue(host: Host) -> None:
    cid = await context(host)
    slow = run(host.client, "import time; time.sleep(0.3); n = 1", context_id=cid)
    fast = run(host.client, "n", context_id=cid)
    a, b = await asyncio.gather(slow, fast)
    assert a.error is None and b.value == "1"


async def test_restart_unsticks_a_running_cell(host: Host) -> None:
    cid = await context(host)
    running = asyncio.Event()

    async def on_event(kind: str, value: Any) -> None:
        if kind == "stdout" and "running" in value:
            running.set()

    code = "print('running', flush=True)\nwhile True: pass"
    hung = asyncio.ensure_future(run(host.client, code, on_event, context_id=cid))
    async with asyncio.timeout(WAIT):
        await running.wait()  # the cell holds the context now
    info = await host.client.call(protocol.ContextRestart(id=cid), timeout=WAIT)
    assert info["id"] == cid
    r = await hung
    assert r.error is not None and r.error.name == "ContextRestarted"
    assert r.done["restarted"] is True
    assert (await run(host.client, "3", context_id=cid)).value == "3"


# -- javascript and bash ----------------------------------------------------------------------


async def test_javascript_state_persists(host: Host) -> None:
    cid = await context(host, "javascript")
    await run(
        host.client,
        "let n = 40; const add = (a) => a + 2; function twice(x) { return 2 * x }",
        context_id=cid,
    )
    r = await run(host.client, "console.log('hi'); add(n)", context_id=cid)
    assert (r.stdout, r.value) == ("hi\n", "42")
    r = await run(
        host.client, "const later = await Promise.resolve(twice(n)); later + 1", context_id=cid
    )
    assert r.value == "81"
    assert (await run(host.client, "later", context_id=cid)).value == "80"
    r = await run(host.client, "function f() { throw new TypeError('bad') }\nf()", context_id=cid)
    assert r.error is not None and (r.error.name, r.error.value) == ("TypeError", "bad")
    assert "at f (cell5:1:" in r.error.traceback and "node:" not in r.error.traceback
    # 3 s, not less: an interrupt that comes before node has read the cell (a loaded host) is
    # ignored as between cells, and the cell is then killed at the grace instead
    r = await run(host.client, "while (true) {}", context_id=cid, timeout=3)
    assert r.error is not None and r.error.name == "TimeoutError" and not r.done["restarted"]
    r = await run(host.client, "await new Promise(() => {})", context_id=cid, timeout=3)
    assert r.error is not None and r.error.name == "TimeoutError" and not r.done["restarted"]
    assert (await run(host.client, "n", context_id=cid)).value == "40"


async def test_bash_state_persists(host: Host) -> None:
    cid = await context(host, "bash")
    await run(host.client, "cd /tmp && export GREETING=hello; count=3", context_id=cid)
    r = await run(host.client, "pwd; echo $GREETING $count", context_id=cid)
    assert (r.stdout, r.error) == ("/tmp\nhello 3\n", None)
    r = await run(host.client, "echo oops >&2; false", context_id=cid)
    assert r.stderr == "oops\n"
    assert r.error is not None and (r.error.name, r.error.value) == ("ExitCode", "1")
    # 3 s: time for bash to have read the whole cell. An interrupt while it still parses the
    # cell's framing (a loaded host, a short timeout) leaves the cell's lines to run outside
    # it, and the interpreter is restarted instead (agent/bash_worker.py).
    r = await run(host.client, "sleep 30; echo never", context_id=cid, timeout=3)
    assert r.error is not None and r.error.name == "TimeoutError"
    assert "never" not in r.stdout and not r.done["restarted"]
    r = await run(host.client, 'echo "$count $ONCE"', context_id=cid, envs={"ONCE": "x"})
    assert r.stdout == "3 x\n"
    r = await run(host.client, 'echo "[$ONCE]"; exit 4', context_id=cid)
    assert r.stdout == "[]\n" and r.error is not None and r.error.name == "InterpreterDied"
    assert (await run(host.client, "echo ${count:-gone}", context_id=cid)).stdout == "gone\n"


# -- the registry -----------------------------------------------------------------------------


async def test_create_list_restart_remove(host: Host) -> None:
    cid = await context(host, "bash", cwd="/tmp")
    listed = await host.client.call(protocol.ContextList())
    assert {"id": cid, "language": "bash", "cwd": "/tmp"} in listed
    await run(host.client, "mark=1", context_id=cid)
    await host.client.call(protocol.ContextRestart(id=cid))
    assert (await run(host.client, "echo ${mark:-fresh}", context_id=cid)).stdout == "fresh\n"
    await host.client.call(protocol.ContextRemove(id=cid))
    assert cid not in {c["id"] for c in await host.client.call(protocol.ContextList())}
    with pytest.raises(AgentError) as e:
        await run(host.client, "true", context_id=cid)
    assert e.value.code == "not_found" and cid in e.value.message


async def test_bad_requests_say_what_is_wrong(host: Host) -> None:
    with pytest.raises(AgentError) as e:
        await host.client.call(protocol.ContextCreate(language="cobol", user=host.user))
    assert e.value.code == "invalid" and "python" in e.value.message
    with pytest.raises(AgentError) as e:
        await host.client.call(protocol.ContextCreate(cwd="/no/such/dir", user=host.user))
    assert e.value.code == "not_found"
    with pytest.raises(AgentError) as e:
        await run(host.client, "1", context_id="nope")
    assert e.value.code == "not_found"
    cid = await context(host, "bash")
    with pytest.raises(AgentError) as e:
        await run(host.client, "1", context_id=cid, language="python")
    assert e.value.code == "invalid"
    with pytest.raises(AgentError) as e:
        await run(host.client, "1", context_id=cid, timeout=-1)
    assert e.value.code == "invalid"
    with pytest.raises(AgentError) as e:
        await run(host.client, "true", context_id=cid, envs={"A-B": "1"})
    assert e.value.code == "invalid"


async def test_default_contexts(host: Host) -> None:
    # the default contexts run as the sandbox's user, whoever this module's others run as
    r = await run(host.client, "import os; os.getcwd(), os.environ['USER']")
    assert r.value == "('/home/user', 'user')"
    assert (await run(host.client, "echo $PWD", language="bash")).stdout == "/home/user\n"
    assert (await run(host.client, "1 + 1", language="javascript")).value == "2"
    listed = {c["id"]: c for c in await host.client.call(protocol.ContextList())}
    assert listed["python"] == {"id": "python", "language": "python", "cwd": "/home/user"}
    assert {"javascript", "bash"} <= set(listed)
