"""What a tool call answers, shaped for a model: text it can read, images as images, chart
data as structured content; long output cut, and marked where it was cut."""

from __future__ import annotations

import json
from typing import Any

from mcp.types import ContentBlock, ImageContent, TextContent

TEXT_CAP = 20_000  # characters of output a model is shown per stream; the rest is cut, marked


def capped(text: str, what: str) -> str:
    if len(text) <= TEXT_CAP:
        return text
    cut = len(text) - TEXT_CAP
    return (
        text[:TEXT_CAP] + f"\n[firebox: {what} cut here, {cut} more characters not shown; "
        "write long output to a file and read the part you need]"
    )


def cell_blocks(
    stdout: str, stderr: str, results: list[Any], error: Any, ended: dict[str, Any]
) -> tuple[list[ContentBlock], dict[str, Any]]:
    """A cell's answer: one text block saying what it printed and returned, an image block per
    image result, and the structured form (results' text and chart data, the error)."""
    parts: list[str] = []
    if stdout:
        parts.append("stdout:\n" + capped(stdout, "stdout"))
    if stderr:
        parts.append("stderr:\n" + capped(stderr, "stderr"))
    images: list[ContentBlock] = []
    structured_results = []
    for r in results:
        data = r.data if isinstance(r.data, dict) else {}
        text = data.get("text/plain")
        if isinstance(text, str) and r.is_main_result:
            parts.append("result:\n" + capped(text, "the result"))
        for mime in ("image/png", "image/jpeg"):
            if isinstance(data.get(mime), str):
                images.append(ImageContent(type="image", data=data[mime], mime_type=mime))
        entry: dict[str, Any] = {"text": text if isinstance(text, str) else None}
        if r.chart:
            entry["chart"] = r.chart
            parts.append("chart data:\n" + capped(json.dumps(r.chart), "the chart data"))
        structured_results.append(entry)
    structured: dict[str, Any] = {"results": structured_results}
    if error is not None:
        parts.append(f"error: {error.name}: {error.value}\n{capped(error.traceback, 'traceback')}")
        structured["error"] = {"name": error.name, "value": error.value}
    if ended.get("timed_out"):
        parts.append("[firebox: the cell was interrupted at its timeout]")
    if not parts:
        parts.append("(the cell ran; it printed and returned nothing)")
    return [TextContent(type="text", text="\n\n".join(parts)), *images], structured
