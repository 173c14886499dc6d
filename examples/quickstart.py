"""firebox quickstart: create a sandbox, write a file, run a command, then run code with a chart.

Needs a running daemon (`firebox serve`); the SDK finds it through FIREBOX_URL and
FIREBOX_API_KEY, or the local defaults.
"""

from firebox import Sandbox

with Sandbox.create(timeout=60) as sbx:
    print(f"sandbox {sbx.sandbox_id} is up")
    script = "import platform\nprint('hello from', platform.node())\n"
    sbx.files.write("/home/user/hello.py", script)
    result = sbx.commands.run("python3 hello.py && id && ls -l /home/user")
    print(result.stdout, end="")

    # Stateful code, as an assistant would run it: variables persist between cells.
    sbx.run_code("import matplotlib.pyplot as plt\nsales = {'Mon': 3, 'Tue': 7, 'Wed': 5}")
    execution = sbx.run_code(
        "plt.bar(list(sales), list(sales.values())); plt.title('Sales'); plt.show()"
    )
    chart = next(r for r in execution.results if r.png)
    print(f"chart: {len(chart.png or '')} bytes of base64 PNG; its data: {chart.chart}")
print("sandbox killed")
