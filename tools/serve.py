"""Serves a folder on 127.0.0.1 with the right MIME types (.wasm, .mjs, .json).

    python3 tools/serve.py [DIR] [PORT]
"""

import functools
import http.server
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".json": "application/json",
        ".safetensors": "application/octet-stream",
    }

    def end_headers(self):
        # Development server: always revalidate so a rebuild is picked up.
        self.send_header("Cache-Control", "no-cache")
        # Cross-origin isolated, so the page may run the threaded CPU module.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "www"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(Handler, directory=root))
    print(f"serving {root}/ on http://127.0.0.1:{port}/ (Ctrl-C to stop)", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
