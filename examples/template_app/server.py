"""The app of examples/template_app.py: a tiny web server, standard library only.

It is the template's start command, so it is already running when a sandbox starts. It listens
on $PORT and answers every GET with what it runs with, as JSON.
"""

import json
import os
import pwd
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.time()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {
                "greeting": os.environ.get("GREETING", "(no GREETING set)"),
                "cwd": os.getcwd(),
                "user": pwd.getpwuid(os.getuid()).pw_name,
                "pid": os.getpid(),
                "up_s": round(time.time() - STARTED, 1),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: nobody reads a start command's output once it is ready


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
