"""A python worker's IPython shell: how it runs a cell, and what it captures of one.

Rich results are the shell's display formatter's full MIME bundles, from ``display()`` calls
(our DisplayPublisher) and from the cell's last expression (our DisplayHook), sent after the
text printed before them (python_output.py). matplotlib figures become PNG results when shown,
when they are the last expression, or when left open at the end of the cell.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sys

from firebox.agent import wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from firebox.agent.python_output import Outbox

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# MIME types whose content is bytes: base64 text on the wire, as in Jupyter's messages.
BINARY = ("image/png", "image/jpeg", "application/pdf")


def bundle(data: dict[str, Any]) -> dict[str, Any]:
    """A display formatter's dict as wire data: bytes as base64, values JSON can carry."""
    out: dict[str, Any] = {}
    for mime, value in data.items():
        if not isinstance(mime, str):
            continue
        if isinstance(value, bytes | bytearray):
            value = base64.b64encode(value).decode("ascii")
        elif mime in BINARY and isinstance(value, str):
            value = value.strip()  # already base64 (a _repr_png_ may return text)
        try:
            json.dumps(value)
        except (TypeError, ValueError):  # NaN passes; a set or an object does not
            continue
        out[mime] = value
    return out


class Cells:
    """The state of the cell being run, shared by the shell's hooks."""

    def __init__(self, outbox: Outbox, charts: Any) -> None:
        self.outbox = outbox
        self.charts = charts  # the module (no longer importable once we left sys.path)
        self.errors: list[tuple[str, str, str]] = []  # (name, value, traceback) shown
        self.chart: dict[str, Any] | None = None  # of the figure just formatted

    def emit(self, data: dict[str, Any], main: bool) -> None:
        payload = bundle(data)
        chart, self.chart = self.chart, None
        if payload:
            message = {"k": wire.RESULT, "data": payload, "main": main}
            if chart is not None and "image/png" in payload:
                message["chart"] = chart
            self.outbox.send(message)


def ignore_sigint(signum: int, frame: Any) -> None:
    """Between cells: a late interrupt, meant for a cell that has just ended."""


def make_shell(cells: Cells) -> Any:
    # Imported here: only the worker pays for IPython, never the agent that imports wire.py.
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class Publisher(DisplayPublisher):  # display(...) → a result, not the main one
        def publish(self, data: Any, metadata: Any = None, *args: Any, **kwargs: Any) -> None:
            cells.emit(data, main=False)

        def clear_output(self, wait: bool = False) -> None:
            pass

    class Hook(DisplayHook):  # the cell's last expression → the main result
        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict: Any, md_dict: Any = None) -> None:
            cells.emit(format_dict, main=True)

        def finish_displayhook(self) -> None:
            pass

    class Shell(InteractiveShell):
        def enable_matplotlib(self, gui: Any = None) -> tuple[str, str]:
            # ``%matplotlib inline`` (and friends), written out of habit: figures already
            # become results here, so keep the Agg backend instead of switching to another.
            import matplotlib.pyplot  # noqa: F401  (our show, through PyplotHook)

            return "agg", "agg"

        def _showtraceback(self, etype: Any, evalue: Any, stb: Any) -> None:
            # Kept, not printed: the cell's own error becomes the one ``error`` message, and
            # any other (a failing _repr_html_) goes to stderr once the cell is over.
            text = ANSI.sub("", self.InteractiveTB.stb2text(stb))
            cells.errors.append((getattr(etype, "__name__", str(etype)), str(evalue), text))

    config = Config()
    config.HistoryManager.enabled = False  # no SQLite file and no saving thread
    config.InteractiveShell.colors = "NoColor"
    # jedi (for tab completion, useless here) costs ~60 ms and 5 MB at every start: hide it
    # while the shell is built, then let user code import it as usual.
    hidden = "jedi" not in sys.modules
    if hidden:
        sys.modules["jedi"] = None  # type: ignore[assignment]
    try:
        shell = Shell.instance(config=config, displayhook_class=Hook, display_pub_class=Publisher)
    finally:
        if hidden:
            del sys.modules["jedi"]
    formatter = shell.display_formatter.formatters["image/png"]
    formatter.for_type_by_name("matplotlib.figure", "Figure", lambda fig: figure_png(cells, fig))
    # IPython's first cell and first formatted result set up what every later one uses (a few
    # ms): pay that now, before ready, not in the user's first run_code. Nothing is stored:
    # the first cell is still number 1.
    shell.run_cell("0", store_history=False, silent=True)
    shell.display_formatter.format(0)
    return shell


def figure_png(cells: Cells, fig: Any) -> bytes | None:
    """The PNG of a matplotlib figure; also notes its chart data and closes it, so that a
    figure shown once is not shown again as "left open" at the end of the cell."""
    import io

    if not fig.axes and not fig.lines and not fig.images:
        return None  # nothing drawn: text/plain "<Figure ... with 0 Axes>" says it
    buf = io.BytesIO()
    fig.canvas.print_figure(
        buf,
        format="png",
        bbox_inches="tight",
        facecolor=fig.get_facecolor(),
        edgecolor=fig.get_edgecolor(),
    )
    # After drawing: tick labels (bar groups) exist only once the figure was rendered.
    cells.chart = cells.charts.extract(fig)
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    return buf.getvalue()


def show_figures(*args: Any, **kwargs: Any) -> None:
    """Our ``matplotlib.pyplot.show``: every open figure becomes a result, now."""
    from IPython.display import display

    pyplot = sys.modules["matplotlib.pyplot"]
    for num in pyplot.get_fignums():
        display(pyplot.figure(num))


def show_image(image: Any, title: Any = None, **options: Any) -> bool:
    """Our ``PIL.ImageShow.show``: no viewer in a sandbox, so ``image.show()`` displays it
    (a PNG result), as in a notebook."""
    from IPython.display import display

    display(image)
    return True


def _patch_pyplot(module: Any) -> None:
    module.show = show_figures


def _patch_imageshow(module: Any) -> None:
    module.show = show_image


class PyplotHook:
    """Swaps ``pyplot.show`` (and PIL's ``ImageShow.show``) for ours as the module is first
    imported (MPLBACKEND=Agg would only warn that it cannot show; PIL would look for a viewer),
    with no cost to cells that never use them."""

    PATCHES = {"matplotlib.pyplot": _patch_pyplot, "PIL.ImageShow": _patch_imageshow}

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        patch = self.PATCHES.get(name)
        if patch is None:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def patched(module: Any) -> None:
            exec_module(module)
            patch(module)

        loader.exec_module = patched  # type: ignore[method-assign]
        return spec

    @classmethod
    def install(cls) -> None:
        """Patch the modules to come as they are imported, and those already imported now:
        a microVM's fork server warm-imports matplotlib.pyplot before its workers exist."""
        sys.meta_path.insert(0, cls())
        for name, patch in cls.PATCHES.items():
            if name in sys.modules:
                patch(sys.modules[name])


def show_open_figures() -> None:
    if "matplotlib.pyplot" in sys.modules:
        show_figures()


def run(shell: Any, cells: Cells, request: dict[str, Any]) -> None:
    code = request.get("code")
    seq = request.get("seq")
    env = request.get("env") or {}
    if not isinstance(code, str) or not isinstance(env, dict):
        cells.outbox.send({"k": wire.DONE, "seq": seq})
        return
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update({str(k): str(v) for k, v in env.items()})
    cells.errors.clear()
    cells.chart = None
    result: Any = None
    interrupted = False
    try:
        # SIGINT is a KeyboardInterrupt only while the cell runs, raised by Python's own C
        # handler (which adds no frame of ours to the user's traceback). Set per cell: user
        # code may have changed it in the previous one.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        silent = request.get("silent") is True
        result = shell.run_cell(code, store_history=not silent, silent=silent)
        signal.signal(signal.SIGINT, ignore_sigint)
    except KeyboardInterrupt:  # landed in IPython's own code, after the user's
        signal.signal(signal.SIGINT, ignore_sigint)
        interrupted = True
    try:
        show_open_figures()
    except Exception as e:  # a figure that cannot render must not lose the cell's result
        cells.errors.append((type(e).__name__, str(e), ""))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    report_error(cells, result, interrupted)
    count = getattr(result, "execution_count", None)
    cells.outbox.send({"k": wire.DONE, "seq": seq, "count": count})


def report_error(cells: Cells, result: Any, interrupted: bool) -> None:
    failure = None
    if result is not None:
        failure = result.error_before_exec or result.error_in_exec
    shown, cells.errors[:] = list(cells.errors), []
    if interrupted:
        failure = KeyboardInterrupt()
        shown.append(("KeyboardInterrupt", "", "KeyboardInterrupt"))
    if failure is None:
        for name, value, text in shown:
            cells.outbox.streams.write(2, (text or f"{name}: {value}") + "\n")
        return
    # The cell's own error is the last shown; others (a failing _repr_) were along the way.
    name, value, text = shown.pop() if shown else (type(failure).__name__, str(failure), "")
    for other in shown:
        cells.outbox.streams.write(2, other[2] + "\n")
    cells.outbox.send({"k": wire.ERROR, "name": name, "value": value, "traceback": text})
