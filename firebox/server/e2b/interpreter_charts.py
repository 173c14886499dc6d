"""firebox's chart data (agent/charts.py) in E2B's chart shapes (its SDK's ``charts.py``).

The agent reads each figure once; this is only a change of names and conventions:

- empty titles and axis labels are None; units come from a label's "(unit)" or "[unit]";
- a line or scatter chart's scale is "datetime" on a date axis and "categorical" when its
  ticks are the positions 0, 1, ... of named categories, else matplotlib's scale;
- a bar's ``label`` is its category and ``group`` its series (firebox's are the other way
  round), an unnamed series being "Group <n>"; an unnamed line is "Line <n>";
- a pie's wedges drop firebox's ``fraction``; a superchart's parts are converted alike.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

UNIT = re.compile(r"\s\((.*?)\)|\[(.*?)\]")
AXES_2D = ("line", "scatter", "bar", "box_and_whisker")


def e2b_chart(chart: dict[str, Any]) -> dict[str, Any] | None:
    kind = chart.get("type")
    out: dict[str, Any] = {"type": kind, "title": chart.get("title") or None}
    if kind == "superchart":
        parts = [e2b_chart(c) if isinstance(c, dict) else None for c in chart["elements"]]
        out["elements"] = [p if p is not None else _unknown() for p in parts]
        return out
    if kind in AXES_2D:
        for axis in ("x", "y"):
            label = chart.get(f"{axis}_label") or None
            out[f"{axis}_label"] = label
            out[f"{axis}_unit"] = _unit(label)
    if kind in ("line", "scatter"):
        for axis in ("x", "y"):
            ticks = list(chart.get(f"{axis}_ticks") or [])
            labels = list(chart.get(f"{axis}_tick_labels") or [])
            out[f"{axis}_ticks"] = ticks
            out[f"{axis}_tick_labels"] = labels
            out[f"{axis}_scale"] = _scale(chart.get(f"{axis}_scale") or "linear", ticks, labels)
        out["elements"] = [
            {"label": e["label"] or f"Line {i}", "points": e["points"]}
            for i, e in enumerate(chart["elements"])
        ]
    elif kind == "bar":
        names = dict.fromkeys(e["label"] for e in chart["elements"])
        series = {label: i for i, label in enumerate(names)}
        out["elements"] = [
            {
                "label": e["group"],
                "group": e["label"] or f"Group {series[e['label']]}",
                "value": e["value"],
            }
            for e in chart["elements"]
        ]
    elif kind == "pie":
        out["elements"] = [
            {"label": e["label"], "angle": e["angle"], "radius": e["radius"]}
            for e in chart["elements"]
        ]
    elif kind == "box_and_whisker":
        out["elements"] = list(chart["elements"])
    else:
        return None
    return out


def _unknown() -> dict[str, Any]:
    return {"type": "unknown", "title": None, "elements": []}


def _unit(label: str | None) -> str | None:
    match = UNIT.search(label) if label else None
    return (match.group(1) or match.group(2)) if match else None


def _scale(scale: str, ticks: list[Any], labels: list[str]) -> str:
    if ticks and all(isinstance(t, str) and _is_date(t) for t in ticks):
        return "datetime"
    if scale != "linear" or not ticks:
        return scale
    if len(labels) != len(ticks):
        return scale
    pairs = enumerate(zip(ticks, labels, strict=True))
    return "categorical" if all(t == i and str(i) != label for i, (t, label) in pairs) else scale


def _is_date(text: str) -> bool:
    try:
        datetime.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True
