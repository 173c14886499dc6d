"""The data behind a matplotlib chart, read from the figure's artists, so that a model can
read a chart without looking at its pixels.

Imported only by python_worker.py, in the worker, once a figure is rendered (tick labels
exist only after drawing). ``extract`` answers a dict for a figure whose plot is purely a line,
bar, scatter, pie or box-and-whisker chart, and None for anything else: images, 3D or polar
axes, mixed kinds, fills, error bars. Never a guess::

    {"type": "line" | "bar" | "scatter" | "pie" | "box_and_whisker", "title": str,
     "x_label": str, "y_label": str, "x_scale": str, "y_scale": str, "elements": [...]}

    line, scatter   {"label": str, "points": [[x, y], ...]}, and the axes' ticks:
                    "x_ticks": [x, ...], "x_tick_labels": [str, ...] (y_ alike)
    bar             {"label": str, "group": str, "value": number}     (label: the series)
    pie             {"label": str, "angle": degrees, "fraction": 0..1, "radius": number}
    box_and_whisker {"label": str, "min", "first_quartile", "median", "third_quartile",
                     "max": number, "outliers": [number, ...]}  (matplotlib's boxplot with
                     patch_artist=True: its boxes are patches, not lines)

A figure of several plots is ``{"type": "superchart", "title": the figure's title,
"elements": [one chart, or None, per plot]}`` when at least one of them can be read.

x values on date axes are ISO 8601 strings; numbers are plain floats/ints, NaN and infinities
None.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

MAX_POINTS = 20_000  # beyond this the chart's data is no longer a summary; answer None


def extract(fig: Any) -> dict[str, Any] | None:
    try:
        return _extract(fig)
    except Exception:  # an artist we do not understand: no chart, but never a failed cell
        return None


def _extract(fig: Any) -> dict[str, Any] | None:
    # A colorbar is an Axes of its own, but part of the plot it annotates.
    axes = [ax for ax in fig.axes if ax.get_visible() and getattr(ax, "_colorbar", None) is None]
    if len(axes) > 1:
        parts = [_of_axes(fig, ax) for ax in axes]
        if all(part is None for part in parts):
            return None
        suptitle = getattr(fig, "_suptitle", None)
        title = str(suptitle.get_text()) if suptitle is not None else ""
        return {"type": "superchart", "title": title, "elements": parts}
    return _of_axes(fig, axes[0]) if axes else None


def _of_axes(fig: Any, ax: Any) -> dict[str, Any] | None:
    if ax.name != "rectilinear" or ax.images or ax.tables:
        return None
    kind = _kind(ax)
    if kind is None:
        return None
    readers = {"line": _lines, "scatter": _scatter, "bar": _bars, "pie": _pie, "box": _boxes}
    elements = readers[kind](ax)
    if elements is None:
        return None
    chart: dict[str, Any] = {"type": "box_and_whisker" if kind == "box" else kind}
    chart["title"] = _title(fig, ax) if len(fig.axes) == 1 else str(ax.get_title())
    if kind != "pie":
        chart.update(
            x_label=ax.get_xlabel(),
            y_label=ax.get_ylabel(),
            x_scale=ax.get_xscale(),
            y_scale=ax.get_yscale(),
        )
    if kind in ("line", "scatter"):
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            chart[f"{name}_ticks"], chart[f"{name}_tick_labels"] = _ticks(axis)
    chart["elements"] = elements
    return chart


def _kind(ax: Any) -> str | None:
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import PathPatch, Rectangle, Wedge

    lines = _plotted(ax)
    collections = [c for c in ax.collections if c.get_visible()]
    patches = [p for p in ax.patches if p.get_visible()]
    in_bars = {id(p) for c in ax.containers if isinstance(c, BarContainer) for p in c.patches}
    if patches and not lines and not collections:
        if all(isinstance(p, Wedge) for p in patches):
            return "pie"
        if all(isinstance(p, Rectangle) and id(p) in in_bars for p in patches):
            return "bar"
        return None
    if patches and lines and not collections:
        return "box" if all(type(p) is PathPatch for p in patches) else None
    if collections and not lines and not patches:
        return "scatter" if all(type(c) is PathCollection for c in collections) else None
    if lines and not collections and not patches:
        return "line"
    return None


def _title(fig: Any, ax: Any) -> str:
    title = str(ax.get_title())
    suptitle = getattr(fig, "_suptitle", None)
    if not title and suptitle is not None:
        title = str(suptitle.get_text())
    return title


def _label(artist: Any) -> str:
    label = artist.get_label()
    # matplotlib names unlabeled artists "_child0", "_container1"...: not a user's label
    return "" if not isinstance(label, str) or label.startswith("_") else label


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def _converter(axis: Any) -> Any:
    """How to report a value on ``axis``: ISO dates on a date axis, the category on a
    categorical one, else a number."""
    import matplotlib.dates as mdates

    formatter = axis.get_major_formatter()
    name = type(formatter).__name__
    if _on_dates(axis):

        def from_date(value: Any) -> Any:
            number = _number(value)
            return None if number is None else _iso(mdates.num2date(number))

        return from_date
    freq = getattr(formatter, "freq", None)
    if name == "TimeSeries_DateFormatter" and freq is not None:
        # pandas plots a regular time series on period ordinals, not on matplotlib dates
        import pandas as pd

        def from_period(value: Any) -> Any:
            number = _number(value)
            if number is None:
                return None
            return _iso(pd.Period(ordinal=int(round(number)), freq=freq).to_timestamp())

        return from_period
    if name == "StrCategoryFormatter":  # plt.plot(["a", "b"], ...): report the categories
        return lambda value: formatter(value) if _number(value) is not None else None
    return _number


def _iso(moment: datetime.datetime) -> str:
    """A date alone when the time is midnight (daily data), else date and time."""
    if moment.time() == datetime.time(0) and moment.utcoffset() in (None, datetime.timedelta(0)):
        return moment.date().isoformat()
    return moment.replace(tzinfo=None).isoformat()


def _points(xy: Any, x_of: Any) -> list[list[Any]]:
    import numpy as np

    data = np.ma.filled(np.ma.asarray(xy, dtype=float), np.nan)
    return [[x_of(x), _number(y)] for x, y in data.reshape(-1, 2)]


def _plotted(ax: Any) -> list[Any]:
    """The visible data lines: an axhline/axvline is drawn partly in axes coordinates (0..1
    across the plot), so its points are not data and it is left out."""
    return [ln for ln in ax.lines if ln.get_visible() and ln.get_transform() is ax.transData]


def _lines(ax: Any) -> list[dict[str, Any]] | None:
    x_of = _converter(ax.xaxis)
    lines = _plotted(ax)
    if not lines or sum(len(line.get_xydata()) for line in lines) > MAX_POINTS:
        return None
    return [{"label": _label(ln), "points": _points(ln.get_xydata(), x_of)} for ln in lines]


def _scatter(ax: Any) -> list[dict[str, Any]] | None:
    x_of = _converter(ax.xaxis)
    collections = [c for c in ax.collections if c.get_visible()]
    if sum(len(c.get_offsets()) for c in collections) > MAX_POINTS:
        return None
    return [{"label": _label(c), "points": _points(c.get_offsets(), x_of)} for c in collections]


def _tick_labels(axis: Any) -> dict[float, str]:
    labels: dict[float, str] = {}
    for tick in axis.get_ticklabels():
        text = tick.get_text()
        position = tick.get_position()
        where = position[0] if axis.axis_name == "x" else position[1]
        if text:
            labels[float(where)] = text
    return labels


def _bars(ax: Any) -> list[dict[str, Any]] | None:
    from matplotlib.container import BarContainer

    elements: list[dict[str, Any]] = []
    for container in ax.containers:
        if not isinstance(container, BarContainer):
            continue
        horizontal = getattr(container, "orientation", None) == "horizontal"
        axis = ax.yaxis if horizontal else ax.xaxis
        # Ticks placed one by one and labelled (pandas' bar plots, set_xticklabels) name
        # the categories; automatic ticks are just a scale.
        fixed = type(axis.get_major_locator()).__name__ == "FixedLocator"
        ticks = _tick_labels(axis) if fixed else {}
        x_of = _converter(axis)
        label = _label(container)
        for rect in container.patches:
            if horizontal:
                start, size, value = rect.get_y(), rect.get_height(), rect.get_width()
            else:
                start, size, value = rect.get_x(), rect.get_width(), rect.get_height()
            group = _group(ticks, start + size / 2, size, x_of)
            elements.append({"label": label, "group": group, "value": _number(value)})
    if len(elements) > MAX_POINTS:
        return None
    return elements


def _group(ticks: dict[float, str], center: float, width: float, x_of: Any) -> str:
    """The category a bar stands for: the placed tick label under its center, else its
    position in the axis's terms (a category, a date, a number) as text."""
    for where, text in ticks.items():
        if abs(where - center) <= abs(width) / 2:
            return text
    value = x_of(center)
    if isinstance(value, float):
        return f"{value:.6g}"  # a histogram bin's middle, say: no 1.3333333333333333
    return "" if value is None else str(value)


def _pie(ax: Any) -> list[dict[str, Any]]:
    wedges = [p for p in ax.patches if p.get_visible()]
    elements = []
    for wedge in wedges:
        angle = abs(float(wedge.theta2) - float(wedge.theta1))
        elements.append(
            {
                "label": _label(wedge),
                "angle": _number(round(angle, 4)),
                "fraction": _number(round(angle / 360.0, 6)),
                "radius": _number(wedge.r),
            }
        )
    return elements


def _ticks(axis: Any) -> tuple[list[Any], list[str]]:
    """The axis's ticks in its own terms (dates as ISO text) and their labels as drawn."""
    import matplotlib.dates as mdates

    dates = _on_dates(axis)
    ticks: list[Any] = []
    labels: list[str] = []
    for tick in axis.get_major_ticks():
        where = tick.get_loc()
        number = _number(where)
        ticks.append(_iso(mdates.num2date(number)) if dates and number is not None else number)
        labels.append(str(tick.label1.get_text()))
    return ticks, labels


def _on_dates(axis: Any) -> bool:
    import matplotlib.dates as mdates

    formatters = (mdates.AutoDateFormatter, mdates.ConciseDateFormatter, mdates.DateFormatter)
    return isinstance(axis.get_major_formatter(), formatters)  # pandas' own included


def _boxes(ax: Any) -> list[dict[str, Any]] | None:
    """Each box's five numbers and outliers, read from its artists: the box (a patch from the
    quartiles), the median (a segment across it), the whiskers (segments from its ends along
    the value axis) and the fliers (markers without a line)."""
    import numpy as np

    segments = []
    fliers = []
    for ln in _plotted(ax):
        xy = np.asarray(ln.get_xydata(), dtype=float)
        if str(ln.get_linestyle()).lower() in ("none", "", " "):
            fliers.append(xy)
        elif len(xy) == 2:
            segments.append(xy)
    # A vertical plot's whiskers are vertical: its segments mostly share their x (2 whiskers
    # against a median and 2 caps per box the other way).
    upright = sum(s[0][0] == s[1][0] for s in segments) < sum(s[0][1] == s[1][1] for s in segments)
    pos, val = (0, 1) if upright else (1, 0)
    axis = ax.xaxis if upright else ax.yaxis
    fixed = type(axis.get_major_locator()).__name__ == "FixedLocator"
    ticks = _tick_labels(axis) if fixed else {}
    elements = []
    for patch in [p for p in ax.patches if p.get_visible()]:
        ext = patch.get_path().get_extents()
        lo_pos, hi_pos = (ext.x0, ext.x1) if upright else (ext.y0, ext.y1)
        q1, q3 = (ext.y0, ext.y1) if upright else (ext.x0, ext.x1)
        box: dict[str, Any] = {
            "label": _group(ticks, (lo_pos + hi_pos) / 2, hi_pos - lo_pos, _converter(axis))
        }
        box.update(min=q1, first_quartile=q1, median=None, third_quartile=q3, max=q3)
        for seg in segments:
            a, v = seg[:, pos], seg[:, val]
            if not all(lo_pos <= x <= hi_pos for x in a):
                continue
            if v[0] == v[1] and q1 <= v[0] <= q3 and a[0] != a[1]:
                box["median"] = v[0]
            elif a[0] == a[1] and min(v) < q1 <= max(v):
                box["min"] = min(v)
            elif a[0] == a[1] and min(v) <= q3 < max(v):
                box["max"] = max(v)
        outliers = [p[val] for xy in fliers for p in xy if lo_pos <= p[pos] <= hi_pos]
        if box["median"] is None:
            return None  # not a box plot we understand
        for key in ("min", "first_quartile", "median", "third_quartile", "max"):
            box[key] = _number(box[key])
        box["outliers"] = [_number(v) for v in outliers]
        elements.append(box)
    return elements or None
