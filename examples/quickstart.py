"""firebox quickstart: create a sandbox, write a file into it, run a command, print the output.

Needs a running daemon (`firebox serve`); the SDK finds it through FIREBOX_URL and
FIREBOX_API_KEY, or the local defaults.
"""

from firebox import Sandbox

with Sandbox.create(timeout=60) as sbx:
    print(f"sandbox {sbx.sandbox_id} is up")
    sbx.files.write(
        "/home/user/hello.py", "import platform\nprint('hello from', platform.node())\n"
    )
    result = sbx.commands.run("python3 hello.py && id && ls -l /home/user")
    print(result.stdout, end="")
print("sandbox killed")
