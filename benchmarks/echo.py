"""The transport ceiling: a bare grpcio echo service, no proto, no work.

``/bench.Echo/Unary`` returns its request; ``/bench.Echo/Stream`` returns
each request of a bidirectional stream.  The handlers are generic (raw
``bytes`` in, ``bytes`` out, no (de)serializer), so what is left is exactly
grpcio's own cost: HTTP/2 framing, the completion queue, the thread pool
and the socket.  The server is built the same way as the vault's (a
``grpc.server`` over a thread pool, the same listeners), and runs in its own
process so that, like the vault, it has its own interpreter and GIL.

Run as ``python -m benchmarks.echo --unix PATH --tls-dir DIR``: it listens
on the Unix socket and on 127.0.0.1 (port chosen by the kernel) with mutual
TLS, prints ``READY <port>`` and serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

SERVICE = "bench.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"


def _unary(request: bytes, context: Any) -> bytes:
    return request


def _stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    yield from requests


def handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.stream_stream_rpc_method_handler(_stream),
        },
    )


def serve(unix: str, tls_dir: Path, workers: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((handler(),))
    server.add_insecure_port(f"unix:{unix}")
    creds = grpc.ssl_server_credentials(
        [((tls_dir / "server.key").read_bytes(), (tls_dir / "server.pem").read_bytes())],
        root_certificates=(tls_dir / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch_stdin() -> None:
        # the parent holds our stdin: when it dies, so do we
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"READY {port}", flush=True)
    stop.wait()
    server.stop(grace=None).wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unix", required=True)
    p.add_argument("--tls-dir", required=True, type=Path)
    p.add_argument("--workers", type=int, default=64)
    args = p.parse_args(argv)
    serve(args.unix, args.tls_dir, args.workers)


if __name__ == "__main__":
    main()
