"""Run inside a namespace with loopback only: no route out, and the runtime answers.

    python -m tests.offline_client HOST:PORT [SEED]

Checks that connects to outside addresses fail, waits for the runtime at HOST:PORT
to be ready, asks the MLP (made by `bundler.samples.make_mlp_onnx` with SEED) for one
answer through tritonclient, compares it with numpy's, and prints `offline-ok`. Any
failure exits non-zero with the reason.
"""

from __future__ import annotations

import socket
import sys

import numpy as np
import tritonclient.http as triton

from bundler.samples import mlp_reference
from tests.enginekit import wait_for

OUTSIDE = (("1.1.1.1", 80), ("10.0.0.1", 443))
READY_TIMEOUT_S = 120.0


def main(argv: list[str]) -> int:
    hostport, seed = argv[0], int(argv[1]) if len(argv) > 1 else 0
    for addr in OUTSIDE:
        try:
            socket.create_connection(addr, timeout=2).close()
        except OSError:
            continue
        print(f"outbound connection to {addr} worked from this namespace", file=sys.stderr)
        return 1
    client = triton.InferenceServerClient(hostport)
    wait_for(client.is_server_ready, READY_TIMEOUT_S, f"the runtime at {hostport}",
             interval=0.1)
    x = np.ones((2, 64), np.float32)
    inp = triton.InferInput("x", [2, 64], "FP32")
    inp.set_data_from_numpy(x)
    y = client.infer("mlp", [inp]).as_numpy("y")
    np.testing.assert_allclose(y, mlp_reference(x, seed=seed), rtol=1e-4, atol=1e-5)
    print("offline-ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
