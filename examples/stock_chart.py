"""What an assistant runs for "show me this stock's price trend": a chart, and its data.

The price series is generated here (no network); the code the model would write runs in a
sandbox. The PNG is saved next to this script and the chart's data printed, so that an LLM
can read the chart without looking at pixels.
"""

import base64
import json
from pathlib import Path

from firebox import Sandbox

CELL = """
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

rng = np.random.default_rng(7)
days = pd.date_range("2026-01-01", periods=60, freq="B")
price = 100 * np.exp(np.cumsum(rng.normal(0.001, 0.02, len(days))))
prices = pd.Series(price.round(2), index=days, name="ACME")

fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(prices.index, prices.values, label="ACME close")
ax.plot(prices.index, prices.rolling(10).mean().values, label="10-day average")
ax.set_title("ACME price trend")
ax.set_xlabel("date")
ax.set_ylabel("price (USD)")
ax.legend()
plt.show()
change = 100 * (prices.iloc[-1] / prices.iloc[0] - 1)
print(f"last close {prices.iloc[-1]:.2f}, change {change:+.1f}%")
"""

with Sandbox.create(timeout=120) as sbx:
    execution = sbx.run_code(CELL, on_stdout=lambda m: print(m.line, end=""))
    if execution.error:
        raise SystemExit(f"{execution.error.name}: {execution.error.value}")
    chart = next(r for r in execution.results if r.png)
    out = Path(__file__).with_name("stock_chart.png")
    out.write_bytes(base64.b64decode(chart.png or ""))
    print(f"chart saved to {out}")
    summary = dict(chart.chart or {})
    for element in summary.get("elements", []):
        points = element.get("points", [])
        element["points"] = points[:3] + (["…"] if len(points) > 3 else [])
    print(json.dumps(summary, indent=2, default=str, ensure_ascii=False))
