"""E2B's code-interpreter SDK (``e2b_code_interpreter``), unchanged, against firebox: cells,
rich results and charts, languages, contexts, timeouts (server/e2b/interpreter.py)."""

from __future__ import annotations

import asyncio
import base64
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

# The E2B edge translates onto the same core on every backend (which the functional, interpreter
# and security suites check on each): its translation is checked once.
pytestmark = [pytest.mark.usefixtures("e2b_env"), pytest.mark.daemon_only]


def test_run_code_streams_output_and_gives_the_value(e2b_ci_sandbox: Any) -> None:
    out: list[Any] = []
    err: list[Any] = []
    results: list[Any] = []
    ex = e2b_ci_sandbox.run_code(
        "import sys\nprint('hello')\nprint('oops', file=sys.stderr)\nx = 40\nx + 2",
        on_stdout=out.append,
        on_stderr=err.append,
        on_result=results.append,
    )
    assert ex.error is None
    assert ex.logs.stdout == ["hello\n"] and [m.line for m in out] == ["hello\n"]
    assert ex.logs.stderr == ["oops\n"] and [m.line for m in err] == ["oops\n"]
    assert ex.text == "42" and len(results) == 1 and results[0].is_main_result


def test_a_string_value_is_shown_without_its_quotes(e2b_ci_sandbox: Any) -> None:
    # E2B's interpreter strips the quotes of a string's repr (its SDK tests rely on it)
    assert e2b_ci_sandbox.run_code("'abc'").text == "abc"


def test_an_error_has_name_value_and_traceback(e2b_ci_sandbox: Any) -> None:
    errors: list[Any] = []
    ex = e2b_ci_sandbox.run_code("def f():\n    return 1 / 0\nf()", on_error=errors.append)
    assert ex.error is not None and errors and errors[0].name == "ZeroDivisionError"
    assert ex.error.name == "ZeroDivisionError"
    assert ex.error.value == "division by zero"
    assert "return 1 / 0" in ex.error.traceback


def test_execution_count_increases(e2b_ci_sandbox: Any) -> None:
    first = e2b_ci_sandbox.run_code("1").execution_count
    second = e2b_ci_sandbox.run_code("2").execution_count
    assert isinstance(first, int) and second == first + 1


def test_a_timeout_raises_and_interrupts_the_cell(e2b_ci_sandbox: Any) -> None:
    from e2b import TimeoutException

    e2b_ci_sandbox.run_code("import time\nstate = 'kept'")
    with pytest.raises(TimeoutException):
        e2b_ci_sandbox.run_code("while True: time.sleep(0.1)", timeout=3)
    # the abandoned cell was interrupted: the context runs the next one, its state intact
    assert e2b_ci_sandbox.run_code("state", timeout=60).text == "kept"


def test_languages(e2b_ci_sandbox: Any) -> None:
    js = e2b_ci_sandbox.run_code("console.log('from js'); 6 * 7", language="js")
    assert js.logs.stdout == ["from js\n"] and js.text == "42"
    sh = e2b_ci_sandbox.run_code("echo $FOO", language="bash", envs={"FOO": "bar"})
    assert sh.logs.stdout == ["bar\n"]


def test_a_language_firebox_lacks_is_refused(e2b_ci_sandbox: Any) -> None:
    from e2b import SandboxException

    with pytest.raises(SandboxException, match="no r interpreter"):
        e2b_ci_sandbox.run_code("1 + 1", language="r")


def test_contexts(e2b_ci_sandbox: Any) -> None:
    ctx = e2b_ci_sandbox.create_code_context(cwd="/root")
    assert ctx.language == "python" and ctx.cwd == "/root"
    assert ctx.id in [c.id for c in e2b_ci_sandbox.list_code_contexts()]
    assert e2b_ci_sandbox.run_code("import os; os.getcwd()", context=ctx).text == "/root"
    e2b_ci_sandbox.run_code("y = 1", context=ctx)
    e2b_ci_sandbox.restart_code_context(ctx)
    gone = e2b_ci_sandbox.run_code("y", context=ctx)
    assert gone.error is not None and gone.error.name == "NameError"
    e2b_ci_sandbox.remove_code_context(ctx.id)
    assert ctx.id not in [c.id for c in e2b_ci_sandbox.list_code_contexts()]


def test_a_chart_gives_png_and_data(e2b_ci_sandbox: Any) -> None:
    from e2b_code_interpreter.charts import BarChart, LineChart

    ex = e2b_ci_sandbox.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [4, 5, 7], label='price')\nplt.title('T')\n"
        "plt.xlabel('Time (s)')\nplt.show()\n"
        "plt.bar(['a', 'b'], [3, 5], label='sold')\nplt.show()"
    )
    assert ex.error is None, ex.error
    line, bar = ex.results
    assert base64.b64decode(line.png).startswith(b"\x89PNG")
    assert isinstance(line.chart, LineChart) and line.chart.title == "T"
    assert line.chart.x_unit == "s"
    assert line.chart.elements[0].label == "price"
    assert line.chart.elements[0].points == [(1, 4), (2, 5), (3, 7)]
    assert isinstance(bar.chart, BarChart)
    assert [(b.label, b.group, b.value) for b in bar.chart.elements] == [
        ("a", "sold", 3),
        ("b", "sold", 5),
    ]


def test_async_sdk(e2b_env: dict[str, str]) -> None:
    from e2b_code_interpreter import AsyncSandbox

    async def main() -> str | None:
        sbx = await AsyncSandbox.create(timeout=600)
        try:
            return (await sbx.run_code("x = 1; x")).text
        finally:
            await sbx.kill()

    assert asyncio.run(main()) == "1"


def test_display_of_several_objects_and_mime_types(e2b_ci_sandbox: Any) -> None:
    ex = e2b_ci_sandbox.run_code(
        "from IPython.display import HTML, Markdown, SVG, Latex, JSON, display\n"
        "display(HTML('<b>h</b>'), Markdown('# m'))\n"
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>'))\n"
        "display(Latex(r'$x^2$'), JSON({'k': 1}))\n"
        "'last'"
    )
    assert ex.error is None, ex.error
    shown = [r for r in ex.results if not r.is_main_result]
    assert [r.formats()[-1] for r in shown] == ["html", "markdown", "svg", "latex", "json"]
    assert shown[0].html == "<b>h</b>" and shown[1].markdown == "# m"
    assert shown[2].svg and "<svg" in shown[2].svg
    assert shown[3].latex == "$x^2$" and shown[4].json == {"k": 1}
    assert ex.text == "last"


def test_a_killed_sandbox_raises_mid_cell(e2b_env: dict[str, str]) -> None:
    from e2b import TimeoutException
    from e2b_code_interpreter import Sandbox

    sbx = Sandbox.create(timeout=600)
    try:
        pool = ThreadPoolExecutor(1)
        running = pool.submit(sbx.run_code, "import time\nprint('go', flush=True)\ntime.sleep(300)")
        time.sleep(2)  # not a timing assertion: the cell sleeps far longer either way
        sbx.kill()
        with pytest.raises(TimeoutException, match="killed"):
            running.result(timeout=120)
    finally:
        sbx.kill()


def test_box_and_whisker_and_superchart(e2b_ci_sandbox: Any) -> None:
    from e2b_code_interpreter.charts import BoxAndWhiskerChart, SuperChart

    ex = e2b_ci_sandbox.run_code(
        "import matplotlib.pyplot as plt\n"
        "data = {'A': [85, 90, 78, 92, 88], 'B': [95, 89, 76, 91, 84, 87]}\n"
        "fig, ax = plt.subplots()\nax.set_title('Scores')\n"
        "ax.boxplot(data.values(), labels=data.keys(), patch_artist=True)\nplt.show()\n"
        "fig, (a, b) = plt.subplots(1, 2)\nfig.suptitle('Two')\n"
        "a.plot([1, 2])\nb.pie([1, 3])\nplt.show()"
    )
    assert ex.error is None, ex.error
    box, sup = (r.chart for r in ex.results)
    assert isinstance(box, BoxAndWhiskerChart) and box.title == "Scores"
    assert [
        (b.label, b.min, b.first_quartile, b.median, b.third_quartile, b.max) for b in box.elements
    ] == [
        ("A", 78, 85, 88, 90, 92),
        ("B", 84, 84.75, 88, 90.5, 95),
    ]
    assert [b.outliers for b in box.elements] == [[], [76]]
    assert isinstance(sup, SuperChart) and sup.title == "Two"
    assert [c.type for c in sup.elements] == ["line", "pie"]


def test_a_pil_image_shown_is_a_png_result(e2b_ci_sandbox: Any) -> None:
    ex = e2b_ci_sandbox.run_code(
        "from PIL import Image\nImage.new('RGB', (8, 8), 'red').show()\nprint('shown')"
    )
    assert ex.error is None, ex.error
    assert ex.logs.stdout == ["shown\n"]
    assert len(ex.results) == 1 and ex.results[0].png
    assert base64.b64decode(ex.results[0].png).startswith(b"\x89PNG")


def test_typescript_cells_keep_their_state(e2b_ci_sandbox: Any) -> None:
    e2b_ci_sandbox.run_code("interface P { x: number }\nconst p: P = { x: 40 }", language="ts")
    ex = e2b_ci_sandbox.run_code(
        "const add = (a: number): number => a + 2;\nadd(p.x)", language="typescript"
    )
    assert ex.error is None, ex.error
    assert ex.text == "42"
    bad = e2b_ci_sandbox.run_code("undefinedName.x", language="ts")
    assert bad.error is not None and bad.error.name == "ReferenceError"


def test_r_and_java_are_refused_clearly(e2b_ci_sandbox: Any) -> None:
    from e2b import SandboxException

    with pytest.raises(SandboxException, match="no r interpreter"):
        e2b_ci_sandbox.run_code("1 + 1", language="r")
