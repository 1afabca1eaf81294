"""A stand-in runtime for process-engine tests: V2 health and infer, y = x * scale.

`python -m tests.site.fakeruntime --models DIR --port N` walks
DIR/<name>/<version>/model.json like the real runtime and answers
/v2/health/ready and /v2/models/<name>[/versions/<v>]/infer (JSON tensors).
A model.json with "never_ready": true keeps the server unready; "crash": true
makes it exit at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def load(models: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for mj in sorted(models.glob("*/*/model.json")):
        doc = json.loads(mj.read_text())
        out[doc["name"]] = doc
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    models = load(args.models)
    if any(m.get("crash") for m in models.values()):
        print("fakeruntime: model asks to crash", file=sys.stderr)
        return 3
    ready = bool(models) and not any(m.get("never_ready") for m in models.values())

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, doc: object) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/v2/health/live":
                self._send(200, {})
            elif self.path == "/v2/health/ready":
                self._send(200 if ready else 503, {} if ready else {"error": "not ready"})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            parts = self.path.strip("/").split("/")
            if len(parts) < 4 or parts[-1] != "infer" or parts[2] not in models:
                self._send(404, {"error": f"no model at {self.path}"})
                return
            model = models[parts[2]]
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            x = req["inputs"][0]
            y = [v * float(model.get("scale", 1.0)) for v in x["data"]]
            self._send(200, {"model_name": model["name"], "model_version": model["version"],
                             "outputs": [{"name": "y", "datatype": "FP32",
                                          "shape": x["shape"], "data": y}]})

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"fakeruntime serving {sorted(models)} on {args.port}", file=sys.stderr, flush=True)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
