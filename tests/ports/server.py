"""A test server that runs inside a sandbox (python3, standard library only), on the port in
argv[1]: a plain page, a streamed download, an upload's digest, Server-Sent Events that go on
until the client leaves, and a WebSocket echo. Copied into the sandbox by tests/ports/helpers.py."""

import base64
import hashlib
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 16
WS_MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a head and its body written apart must not wait 40 ms

    def log_message(self, *args):
        pass

    def _send(self, status, body, kind="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/big"):
            mb = int(self.path.split("=")[1])
            self.send_response(200)
            self.send_header("Content-Length", str(mb << 20))
            self.end_headers()
            block = bytes(range(256)) * (CHUNK // 256)
            for _ in range((mb << 20) // CHUNK):
                self.wfile.write(block)
        elif self.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            n = 0
            while True:  # until the client goes away (or the sandbox does)
                try:
                    self.wfile.write(f"data: tick {n}\n\n".encode())
                    self.wfile.flush()
                except OSError:
                    return
                n += 1
                time.sleep(0.05 if n < 5 else 0.5)
        elif self.path == "/ws":
            self._websocket()
        elif self.path == "/headers":
            body = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items())
            self._send(200, body.encode())
        else:
            self._send(200, f"hello from {socket.gethostname()} {self.path}".encode())

    def do_POST(self):
        digest = hashlib.sha256()
        size = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                n = int(self.rfile.readline().strip().split(b";")[0], 16)
                if n == 0:
                    self.rfile.readline()
                    break
                left = n
                while left:
                    data = self.rfile.read(min(left, CHUNK))
                    digest.update(data)
                    left -= len(data)
                size += n
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                data = self.rfile.read(min(left, CHUNK))
                if not data:
                    break
                digest.update(data)
                size += len(data)
                left -= len(data)
        self._send(200, f"{size} {digest.hexdigest()}".encode())

    def _websocket(self):
        key = self.headers["Sec-WebSocket-Key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_MAGIC).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if opcode == 8:  # close: answer it and end
                self.wfile.write(b"\x88\x02" + (data[:2] or b"\x03\xe8"))
                return
            if opcode in (1, 2):
                if len(data) < 126:
                    frame = bytes([0x80 | opcode, len(data)])
                else:
                    frame = bytes([0x80 | opcode, 126]) + struct.pack(">H", len(data))
                self.wfile.write(frame + data)
                self.wfile.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


if __name__ == "__main__":
    Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
