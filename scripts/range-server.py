#!/usr/bin/env python3
"""An HTTP server for the download tests: serves a directory on 127.0.0.1, answers
`Range: bytes=N-` (and N-M) with 206 Partial Content as real servers do, can send slowly
(--rate bytes per second) so that a test can interrupt a download, and logs every request
as a JSON line (path, range asked for, status, bytes sent) so that a test can check that
a resumed download asked for the rest only.

    range-server.py DIR LOG [--rate BYTES_PER_SECOND]

Prints "PORT=<port>" on stdout once it listens (port 0: the kernel picks one).
"""
import http.server
import json
import os
import sys
import time

ROOT, LOG = sys.argv[1], sys.argv[2]
RATE = int(sys.argv[sys.argv.index("--rate") + 1]) if "--rate" in sys.argv else 0
CHUNK = 16 * 1024


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self, status, sent):
        with open(LOG, "a") as f:
            f.write(json.dumps({"path": self.path, "range": self.headers.get("Range"),
                                "status": status, "sent": sent}) + "\n")

    def do_HEAD(self):
        self.serve(body=False)

    def do_GET(self):
        self.serve(body=True)

    def serve(self, body):
        path = os.path.join(ROOT, self.path.lstrip("/").split("?")[0])
        if not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.record(404, 0)
            return
        size = os.path.getsize(path)
        start, end, status = 0, size - 1, 200
        asked = self.headers.get("Range")
        if asked and asked.startswith("bytes="):
            first, _, last = asked[6:].partition("-")
            start = int(first) if first else 0
            end = int(last) if last else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.record(416, 0)
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        if body:
            with open(path, "rb") as f:
                f.seek(start)
                left = end - start + 1
                try:
                    while left > 0:
                        data = f.read(min(CHUNK, left))
                        self.wfile.write(data)
                        self.wfile.flush()
                        sent += len(data)
                        left -= len(data)
                        if RATE:
                            time.sleep(len(data) / RATE)
                except (BrokenPipeError, ConnectionResetError):
                    pass
        self.record(status, sent)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"PORT={server.server_address[1]}", flush=True)
server.serve_forever()
