"""A python code context: IPython's InteractiveShell in a process of its own.

Runs as the sandbox user under the guest's python3 (with its site-packages: IPython, numpy,
pandas, matplotlib come from the image), started by the agent (interpreter.py) as::

    python3 -c PYTHON_BOOT <lib> <command fd> <message fd>

and spoken to in the framing of wire.py. <lib> (the agent's read-only directory) leaves
sys.path, and our modules sys.modules, once imported, so that they shadow nothing of the
user's. A crash here
(os._exit, the OOM killer) ends only this process; the agent notices and starts a fresh one.

Output: ``sys.stdout``/``sys.stderr`` are replaced by writers that buffer briefly and send
``stream`` messages, so prints and rich results reach the agent in the order they happened;
fd 1 and 2 stay pipes the agent forwards too (child processes, C code). Rich results are the
shell's display formatter's full MIME bundles, from ``display()`` calls (our DisplayPublisher)
and from the cell's last expression (our DisplayHook). matplotlib figures become PNG results
when shown, when they are the last expression, or when left open at the end of the cell.

Every write to the message pipe happens in one writer thread: a KeyboardInterrupt (the agent's
timeout) is only ever raised in the main thread, so it can never cut a message in half.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import sys
import threading
import time

from firebox.agent import wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FLUSH_DELAY = 0.02  # seconds printed text may wait to be sent with more
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# MIME types whose content is bytes: base64 text on the wire, as in Jupyter's messages.
BINARY = ("image/png", "image/jpeg", "application/pdf")


class Outbox:
    """The message pipe, written by one thread only (see the module docstring)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        # Bounded: a cell printing faster than the daemon reads blocks in ``put`` (where a
        # KeyboardInterrupt still reaches it) instead of growing this process's memory.
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self.streams = Streams(self.queue)
        threading.Thread(target=self._write, name="firebox-outbox", daemon=True).start()
        threading.Thread(target=self.streams.tick, name="firebox-flush", daemon=True).start()

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message after the text printed before it."""
        line = wire.encode(message)
        with self.streams.lock:
            self.streams.flush()
            self.queue.put(line)

    def flush(self) -> None:
        """Send the text printed so far and wait until it is written (``print(flush=True)``
        before ``os._exit`` must still reach the user)."""
        self.streams.flush()
        self.queue.join()

    def drain(self) -> None:
        """Wait until everything queued is written (before exiting)."""
        with self.streams.lock:
            self.streams.flush()
            self.queue.put(None)
        self.queue.join()

    def _write(self) -> None:
        while True:
            line = self.queue.get()
            if line is None:
                self.queue.task_done()
                return
            view = memoryview(line)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                os._exit(1)  # the agent is gone: nobody is left to run cells for
            self.queue.task_done()


class Streams:
    """Text printed to sys.stdout/sys.stderr, in order, waiting to be sent.

    Taking the pieces and queueing them happen under one lock, as does queueing any other
    message after a flush: the queue's order is the order things were printed and shown.
    """

    def __init__(self, out: queue.Queue[bytes | None]) -> None:
        self._out = out
        # Reentrant: a signal handler may print while the main thread is inside ``write``.
        self.lock = threading.RLock()
        # Runs of writes to one fd, joined only when sent: a print loop makes many tiny writes.
        self._pieces: list[tuple[int, list[str]]] = []
        self._size = 0
        self._pending = threading.Event()

    def write(self, fd: int, text: str) -> None:
        with self.lock:
            if self._pieces and self._pieces[-1][0] == fd:
                self._pieces[-1][1].append(text)
            else:
                self._pieces.append((fd, [text]))
            self._size += len(text)
            if self._size >= wire.STREAM_CHUNK:
                self.flush()
        self._pending.set()

    def flush(self) -> None:
        with self.lock:
            pieces, self._pieces, self._size = self._pieces, [], 0
            for fd, parts in pieces:
                text = "".join(parts)
                for i in range(0, len(text), wire.STREAM_CHUNK):
                    chunk = text[i : i + wire.STREAM_CHUNK]
                    self._out.put(wire.encode({"k": wire.STREAM, "fd": fd, "text": chunk}))

    def tick(self) -> None:
        """Send text that waited FLUSH_DELAY; sleeps while nothing is printed (an idle
        sandbox must not wake up every few milliseconds)."""
        while True:
            self._pending.wait()
            time.sleep(FLUSH_DELAY)
            self._pending.clear()
            self.flush()


class Writer:
    """What user code sees as sys.stdout / sys.stderr."""

    encoding = "utf-8"
    errors = "replace"
    line_buffering = False

    def __init__(self, outbox: Outbox, fd: int) -> None:
        self._outbox = outbox
        self._fd = fd

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self._outbox.streams.write(self._fd, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._outbox.flush()

    def fileno(self) -> int:
        # The real descriptor: subprocess.run(stdout=sys.stdout) and faulthandler write there,
        # and the agent forwards it as this stream too.
        return self._fd

    def isatty(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:
        pass


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


class PyplotHook:
    """Swaps ``pyplot.show`` for ours as pyplot is first imported (MPLBACKEND=Agg would only
    warn that it cannot show), with no cost to cells that never use matplotlib."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "matplotlib.pyplot":
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def patched(module: Any) -> None:
            exec_module(module)
            module.show = show_figures

        loader.exec_module = patched  # type: ignore[method-assign]
        return spec


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


def warm_up(modules: list[str]) -> None:
    """Import these now, into ``sys.modules`` only (no names in the user's namespace), so the
    first cell that uses them does not pay for it."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # an image without it: the user's own import will say so
            os.write(2, f"warm import of {name} failed: {e}\n".encode())


def reseed() -> None:
    """Fresh seeds from the (reseeded) kernel for the generators seeded at import time."""
    import random

    random.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def preload() -> None:
    """Import what ``make_shell`` needs, once, in a zygote (zygote.py) whose forks become
    workers; an image without IPython leaves its workers to start the ordinary way."""
    try:
        import IPython.core.displayhook  # noqa: F401
        import IPython.core.displaypub  # noqa: F401
        import IPython.core.interactiveshell  # noqa: F401
        import traitlets.config  # noqa: F401
    except ImportError:
        pass


def preloaded() -> bool:
    return "IPython.core.interactiveshell" in sys.modules


def become(
    uid: int,
    gid: int,
    drop_groups: bool,
    cwd: str,
    env: dict[str, str],
    fds: list[int],
    open_files: int,
    argv: list[str],
) -> None:
    """Turn a fork of the agent (one with IPython imported, see ``preload``) into a worker,
    as ``python3 -c PYTHON_BOOT *argv`` started as this user would be: ``fds`` are its stdout,
    stderr and then the descriptors ``argv`` names, kept at their numbers. Never returns."""
    import resource
    import site

    from firebox.agent import privs, process

    out, err, *keep = fds
    # A fork of the zygote's fork is not dumpable (its credentials changed), which makes its
    # /proc files the host root's: dumpable as an exec'd program is, so that it (and the user,
    # as with any of their processes) may read and write them.
    privs.set_dumpable(True)
    privs.set_name("python3")  # not the agent's name it was forked with
    os.setsid()
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in keep:
        os.set_inheritable(fd, True)
    # nothing of the agent's (its channel above all) stays open here
    low = 3
    for fd in sorted(keep) + [os.sysconf("SC_OPEN_MAX")]:
        os.closerange(low, fd)
        low = fd + 1
    if open_files:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write(process.CHILD_OOM_SCORE_ADJ)  # as process.spawn sets it for what it starts
    if drop_groups:
        os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # no capability survives the switch
    privs.set_dumpable(True)  # the switch cleared it again
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # what python3 -c would have put on the path: the working directory, PYTHONPATH, and the
    # user's site-packages (pip install --user)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = ["", *extra]
    site.USER_BASE = site.USER_SITE = None
    site.ENABLE_USER_SITE = True
    user_site = site.getusersitepackages()
    if os.path.isdir(user_site):
        site.addsitedir(user_site)
    reseed()  # not the zygote's (and so every other jail's) random state
    main(argv)


def main(argv: list[str]) -> None:
    lib, cmd_fd, msg_fd = argv[0], int(argv[1]), int(argv[2])
    warm = argv[3].split(",") if len(argv) > 3 and argv[3] else []
    # Inherited through pass_fds: nothing the user starts may read our commands or forge
    # our messages by accident.
    os.set_inheritable(cmd_fd, False)
    os.set_inheritable(msg_fd, False)
    outbox = Outbox(msg_fd)
    from firebox.agent import charts

    cells = Cells(outbox, charts)
    sys.stdout = Writer(outbox, 1)  # type: ignore[assignment]
    sys.stderr = Writer(outbox, 2)  # type: ignore[assignment]
    sys.argv = [""]
    signal.signal(signal.SIGINT, ignore_sigint)
    try:
        shell = make_shell(cells)
    except BaseException as e:
        message = f"{type(e).__name__}: {e}"
        if isinstance(e, ImportError):
            message = (
                f"python contexts need IPython in the sandbox image ({message}); "
                "use the 'python' template"
            )
        outbox.send({"k": wire.FATAL, "message": message})
        outbox.drain()
        os._exit(1)
    # Leave no trace of ours in the user's import system: a sandbox may well have a firebox
    # (the SDK) of its own to import.
    if lib in sys.path:
        sys.path.remove(lib)
    for name in [n for n in sys.modules if n == "firebox" or n.startswith("firebox.")]:
        del sys.modules[name]
    sys.meta_path.insert(0, PyplotHook())
    warm_up(warm)
    outbox.send({"k": wire.READY})
    # Between cells SIGINT raises nothing (ignore_sigint), so this read is never cut short.
    with open(cmd_fd, "rb") as commands:
        for line in commands:
            request = wire.decode(line)
            if request is not None and request.get("k") == wire.RUN:
                run(shell, cells, request)
            elif request is not None and request.get("k") == wire.RESEED:
                reseed()
    outbox.drain()
    os._exit(0)  # the agent closed the commands: no atexit hooks of user code
