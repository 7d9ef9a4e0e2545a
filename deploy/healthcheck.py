"""Container health check: gRPC standard health checking over the vault's socket.

Exit status 0 when the server answers SERVING, 1 otherwise (the convention of
``HEALTHCHECK``), with one line saying why.  The socket comes from the first
argument, else ``SECRETVAULT_SOCKET``; the service name from the second
argument (default ``""``: the server as a whole).

Kept to grpcio and grpcio-health-checking, both already in the image, so the
check does not depend on the CLI's output format.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 3.0


def check(socket_path: str, service: str = "") -> tuple[bool, str]:
    target = socket_path if socket_path.startswith("unix:") else f"unix:{socket_path}"
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            name = code.name if code is not None else "error"
            return False, f"health check on {target}: {name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target}: {status}"


def main(argv: list[str]) -> int:
    socket_path = argv[1] if len(argv) > 1 else os.environ.get("SECRETVAULT_SOCKET", "")
    if not socket_path:
        print("no socket: pass a path or set SECRETVAULT_SOCKET", file=sys.stderr)
        return 1
    ok, message = check(socket_path, argv[2] if len(argv) > 2 else "")
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
