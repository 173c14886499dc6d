"""run_code through the real daemon into a real jail on the `python` template."""

from __future__ import annotations

import base64
import contextlib
import secrets
import threading
import time

import pytest

from firebox import Execution, OutputMessage, Sandbox
from firebox.agent.interrupts import GRACE
from firebox.exceptions import FireboxException
from tests.conftest import Daemon
from tests.functional.handshake import GIVE_UP, wait_for_file_py, write_when


def test_state_persists_across_cells(sbx: Sandbox) -> None:
    sbx.run_code("x = 41")
    ex = sbx.run_code("x += 1; x")
    assert ex.error is None and ex.text == "42"
    assert ex.execution_count is not None


def test_two_contexts_are_independent(sbx: Sandbox) -> None:
    a = sbx.create_code_context()
    b = sbx.create_code_context()
    sbx.run_code("v = 'a'", context=a)
    sbx.run_code("v = 'b'", context=b)
    assert sbx.run_code("v", context=a).text == "a"  # a string's value, as E2B shows it
    assert sbx.run_code("v", context=b).text == "b"
    assert {a.id, b.id} <= {c.id for c in sbx.list_code_contexts()}
    sbx.remove_code_context(b)
    assert b.id not in {c.id for c in sbx.list_code_contexts()}


def test_stdout_streams_before_the_cell_ends(sbx: Sandbox) -> None:
    # The cell prints "tick 1" only once a file exists that this test writes when it has
    # received "tick 0": so "tick 0" streamed while the cell still ran.
    go = f"/tmp/go-{secrets.token_hex(4)}"
    seen: list[str] = []
    first = threading.Event()

    def on_stdout(m: OutputMessage) -> None:
        seen.append(m.line)
        if "tick 0" in m.line:
            first.set()

    writer = write_when(first, sbx, go)
    ex = sbx.run_code(
        "import os\nprint('tick 0', flush=True)\n"
        + wait_for_file_py(go)
        + f"print('tick 1' if os.path.exists({go!r}) else 'gave up')",
        on_stdout=on_stdout,
        timeout=2 * GIVE_UP,
    )
    writer.join(GIVE_UP)
    assert ex.error is None, ex.error
    assert "".join(ex.logs.stdout) == "".join(seen) == "tick 0\ntick 1\n"


def test_dataframe_gives_html_and_text(sbx: Sandbox) -> None:
    ex = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})")
    main = [r for r in ex.results if r.is_main_result]
    assert main and main[0].html and "<table" in main[0].html and main[0].text
    assert "html" in main[0].formats() and "text" in main[0].formats()


CHARTS = {
    "line": "plt.plot([1, 2, 3], [4, 5, 7], label='price')\nplt.title('T')\nplt.xlabel('day')"
    "\nplt.ylabel('usd')\nplt.legend()\nplt.show()",
    "bar": "plt.bar(['a', 'b'], [3, 5])\nplt.title('B')\nplt.show()",
    "scatter": "plt.scatter([1, 2], [3, 4])\nplt.show()",
    "pie": "plt.pie([1, 3], labels=['x', 'y'])\nplt.show()",
}


@pytest.mark.parametrize("kind", list(CHARTS))
def test_each_chart_kind_gives_png_and_data(sbx: Sandbox, kind: str) -> None:
    ex = sbx.run_code("import matplotlib.pyplot as plt\n" + CHARTS[kind])
    assert ex.error is None, ex.error
    pngs = [r for r in ex.results if r.png]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0].png or "").startswith(b"\x89PNG")
    chart = pngs[0].chart
    assert chart is not None and chart["type"] == kind
    assert chart.get("elements")


# Its own sandbox too: a root context brings a root python fork server of its own.
def test_a_context_of_root_may_start_in_roots_home(sandbox: Sandbox) -> None:
    sbx = sandbox
    # a root server starts cold (under emulation, beside a loaded host: past the SDK's 30 s
    # default), within the daemon's own deadline for a context
    ctx = sbx.create_code_context(cwd="/root", user="root", request_timeout=120)
    assert sbx.run_code("import os; os.getcwd(), os.getuid()", context=ctx).text == "('/root', 0)"


def test_each_show_of_a_cell_is_a_result_of_its_own(sbx: Sandbox) -> None:
    # plt.show() is ours on every backend, also where pyplot was imported before the
    # sandbox's interpreter existed (a microVM's fork server warm-imports it)
    ex = sbx.run_code("import matplotlib.pyplot as plt\n" + CHARTS["line"] + "\n" + CHARTS["bar"])
    assert ex.error is None, ex.error
    assert [r.chart["type"] for r in ex.results if r.chart] == ["line", "bar"]


def test_line_chart_data_is_what_was_plotted(sbx: Sandbox) -> None:
    ex = sbx.run_code("import matplotlib.pyplot as plt\n" + CHARTS["line"])
    chart = next(r.chart for r in ex.results if r.chart)
    assert chart["title"] == "T" and chart["x_label"] == "day" and chart["y_label"] == "usd"
    line = chart["elements"][0]
    assert line["label"] == "price"
    assert [list(p) for p in line["points"]] == [[1, 4], [2, 5], [3, 7]]


def test_errors_carry_name_value_and_the_users_traceback(sbx: Sandbox) -> None:
    ex = sbx.run_code("def f():\n    return 1 / 0\nf()")
    assert ex.error is not None
    assert ex.error.name == "ZeroDivisionError"
    assert "division by zero" in ex.error.value
    assert "return 1 / 0" in ex.error.traceback
    assert "firebox" not in ex.error.traceback  # the agent's frames are not shown


def test_timeout_interrupts_and_keeps_state(sbx: Sandbox) -> None:
    sbx.run_code("kept = 7")
    ex = sbx.run_code("while True:\n    pass", timeout=1)
    assert ex.error is not None and ex.error.name == "TimeoutError"
    assert sbx.run_code("kept").text == "7"


def test_a_dying_interpreter_is_reported_and_restarted(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context()
    sbx.run_code("y = 1", context=ctx)
    ex = sbx.run_code("import os; os._exit(1)", context=ctx)
    assert ex.error is not None
    after = sbx.run_code("1 + 1", context=ctx)
    assert after.error is None and after.text == "2"
    gone = sbx.run_code("y", context=ctx)
    assert gone.error is not None and gone.error.name == "NameError"


# Its own sandbox (not the module's): a node with the TypeScript compiler loaded holds ~100 MB,
# which the module's shared 512 MB microVM, already holding its tests' contexts, cannot spare.
def test_typescript_cells_are_stripped_of_types_and_keep_state(sandbox: Sandbox) -> None:
    sbx = sandbox
    sbx.run_code("type N = number;\nlet total: N = 40;", language="typescript")
    ex = sbx.run_code(
        "function add(a: N, b: N = 2): N { return a + b }\nadd(total)", language="typescript"
    )
    assert ex.error is None, ex.error
    assert ex.text == "42"
    assert sbx.run_code("typeof total", language="javascript").text == "undefined"  # its own


def test_javascript_state_persists(sbx: Sandbox) -> None:
    sbx.run_code("let n = 40; const add = (a) => a + 2;", language="javascript")
    ex = sbx.run_code("console.log('hi'); add(n)", language="javascript")
    assert ex.logs.stdout == ["hi\n"] and ex.text == "42"
    ex = sbx.run_code("await Promise.resolve(n + 1)", language="javascript")
    assert ex.text == "41"


def test_bash_state_persists(sbx: Sandbox) -> None:
    sbx.run_code("cd /tmp && export GREETING=hello", language="bash")
    ex = sbx.run_code("pwd; echo $GREETING", language="bash")
    assert "".join(ex.logs.stdout) == "/tmp\nhello\n"


def test_a_cell_that_exhausts_memory_is_reported_and_the_context_restarts(
    sbx: Sandbox, backend_name: str
) -> None:
    if backend_name == "gvisor":
        # gVisor's kernel is one host process: the host's OOM killer ends the whole sandbox
        # (docs/BACKENDS.md), and the error says so and what to do. On a sandbox of its own:
        # the module's shared one must live on for the tests after
        doomed = Sandbox.create(timeout=300)
        try:
            ex = doomed.run_code("b = bytearray(2 * 1024**3)", timeout=60)
            assert ex.error is not None
            assert "ended" in ex.error.value and "memory_mb" in ex.error.value, ex.error
            deadline = time.monotonic() + 15  # the daemon records the end just after the call
            while doomed.is_running():
                assert time.monotonic() < deadline, "the sandbox was not reported ended"
                time.sleep(0.1)
        finally:
            with contextlib.suppress(FireboxException):
                doomed.kill()
        return
    ctx = sbx.create_code_context()
    ex = sbx.run_code("b = bytearray(2 * 1024**3)", context=ctx, timeout=60)
    assert ex.error is not None
    assert "memory" in (ex.error.value + ex.error.name).lower()
    assert sbx.run_code("1 + 1", context=ctx).text == "2"
    assert sbx.commands.run("echo alive").stdout == "alive\n"  # the sandbox itself lives on


def test_bar_scatter_and_pie_data_is_what_was_plotted(sbx: Sandbox) -> None:
    def chart_of(kind: str) -> dict:
        ex = sbx.run_code("import matplotlib.pyplot as plt\n" + CHARTS[kind])
        return next(r.chart for r in ex.results if r.chart)

    bar = chart_of("bar")
    assert bar["title"] == "B"
    assert [(e["group"], e["value"]) for e in bar["elements"]] == [("a", 3), ("b", 5)]
    scatter = chart_of("scatter")
    assert [list(p) for p in scatter["elements"][0]["points"]] == [[1, 3], [2, 4]]
    pie = chart_of("pie")
    assert [e["label"] for e in pie["elements"]] == ["x", "y"]
    fractions = [round(e["fraction"], 2) for e in pie["elements"]]
    assert fractions == [0.25, 0.75]


def test_restarting_a_context_clears_its_state(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context()
    sbx.run_code("z = 3", context=ctx)
    sbx.restart_code_context(ctx)
    assert sbx.run_code("z", context=ctx).error.name == "NameError"  # type: ignore[union-attr]


def test_results_display_themselves_in_jupyter(sbx: Sandbox) -> None:
    ex = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1]})")
    main = next(r for r in ex.results if r.is_main_result)
    assert main._repr_html_() == main.html and "<table" in (main.html or "")


async def test_async_run_code(daemon: Daemon) -> None:
    from firebox import AsyncSandbox

    async with await AsyncSandbox.create() as s:
        await s.run_code("a = 20")
        seen: list[str] = []
        ex = await s.run_code("print('hi'); a * 2 + 2", on_stdout=lambda m: seen.append(m.line))
        assert ex.text == "42" and seen == ["hi\n"]


def test_cli_run_prints_text_and_writes_images(daemon: Daemon, tmp_path) -> None:  # noqa: ANN001
    import os
    import subprocess
    import sys

    env = {**os.environ, **daemon.env()}
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()\n6 * 7"
    out = subprocess.run(
        [sys.executable, "-m", "firebox.cli", "run", "--code", code, "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "42" in out.stdout.splitlines()
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes().startswith(b"\x89PNG")


def test_huge_non_ascii_results_and_errors_keep_the_context(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context()
    sbx.run_code("kept = 5", context=ctx)
    big = sbx.run_code("'é' * 2_000_000", context=ctx, timeout=60)
    assert big.error is None and big.results  # a result (or a note that it was left out)
    err = sbx.run_code("raise ValueError('é' * 800_000)", context=ctx, timeout=60)
    assert err.error is not None and err.error.name == "ValueError"
    assert len(err.error.value) < 800_000
    assert sbx.run_code("kept", context=ctx).text == "5"


def test_time_queued_behind_another_cell_counts_against_the_timeout(sbx: Sandbox) -> None:
    # The first cell says it holds the context, then holds it until this test lets it go: the
    # second cell, sent in between, can only wait its 1 s and fail (busy or timed out).
    ctx = sbx.create_code_context()
    release = f"/tmp/release-{secrets.token_hex(4)}"
    holding = threading.Event()
    first_done: list[Execution] = []

    def hold() -> None:
        first_done.append(
            sbx.run_code(
                "print('holding', flush=True)\n" + wait_for_file_py(release) + "'released'",
                context=ctx,
                on_stdout=lambda m: holding.set(),
                timeout=2 * GIVE_UP,
            )
        )

    first = threading.Thread(target=hold)
    first.start()
    try:
        assert holding.wait(GIVE_UP), "the first cell never started"
        start = time.monotonic()
        try:
            ex = sbx.run_code("1", context=ctx, timeout=1)
            failed = ex.error is not None
        except FireboxException:  # refused as busy before the answer began
            failed = True
        # its wait counted against its 1 s: it ended long before the first cell could have;
        # the bound is a sanity check with a loaded host's slack, not a speed
        assert time.monotonic() - start < 1 + 10
        assert failed, "the queued cell ran although its timeout had passed"
    finally:
        sbx.files.write(release, "")
        first.join(2 * GIVE_UP)
    assert first_done and first_done[0].text == "released"


def test_a_worker_that_stops_reading_cannot_hold_a_cell_past_its_timeout(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context(language="javascript")
    token = secrets.token_hex(4)
    blocked, unblock = f"/tmp/blocked-{token}", f"/tmp/unblock-{token}"
    # the cell returns at once; then node's event loop says so and is blocked (until a file
    # nobody writes exists, 60 s at most)
    sbx.run_code(
        f"setTimeout(() => {{ const fs = require('fs'); fs.writeFileSync('{blocked}', ''); "
        "const end = Date.now() + 60000; "
        f"while (Date.now() < end && !fs.existsSync('{unblock}')) {{}} }}, 200); 1",
        context=ctx,
    )
    deadline = time.monotonic() + GIVE_UP
    while not sbx.files.exists(blocked) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sbx.files.exists(blocked), "node's event loop never got blocked"
    start = time.monotonic()
    big = "let filler = 0;\n" + "filler += 1;\n" * 20000  # larger than a pipe's buffer
    ex = sbx.run_code(big, context=ctx, timeout=2)
    # ended at its timeout and the worker's kill GRACE after it, with a loaded host's slack
    assert time.monotonic() - start < 2 + GRACE + 8
    assert ex.error is not None
    assert sbx.run_code("1 + 1", context=ctx).text == "2"  # restarted, usable again


FRESH_STATE = (
    "import os, random, sys\n"
    "(random.getrandbits(64), sys.getrecursionlimit() >= 1000, '' in sys.path, os.getcwd(),"
    " os.environ['HOME'], os.getuid(), sys.argv)"
)


def test_each_sandbox_starts_a_python_of_its_own(daemon: Daemon) -> None:
    # A jail's first interpreter is a fork of the template's zygote: it must still look like
    # a python started for this user in this sandbox, with its own random state.
    seen = []
    for _ in range(2):
        with Sandbox.create() as s:
            ex = s.run_code(FRESH_STATE)
            assert ex.error is None, ex.error
            seen.append(ex.text)
    states = [eval(text) for text in seen]  # noqa: S307  (our own cell's repr of a tuple)
    assert states[0][0] != states[1][0], "two sandboxes share a random state"
    for state in states:
        assert state[1:] == (True, True, "/home/user", "/home/user", 1000, [""]), state
