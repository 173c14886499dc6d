# E2B's Python quickstart, unchanged but for its first two lines (python-dotenv's `.env`
# loading): E2B's own SDK, pointed at firebox by the environment alone.
#
#   eval "$(.venv/bin/firebox e2b env)"
#   .venv/bin/python examples/e2b_python.py
from e2b_code_interpreter import Sandbox

sbx = Sandbox.create()  # By default the sandbox is alive for 5 minutes
execution = sbx.run_code("print('hello world')")  # Execute Python inside the sandbox
print(execution.logs)

files = sbx.files.list("/")
print(files)
