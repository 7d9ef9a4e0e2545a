"""Ed25519 signing over the vault's SSH agent socket against OpenSSH's ``ssh-agent``.

    python -m benchmarks.bench_agent [--quick] [--rounds N] [--seconds S] [--json]

Both agents are real processes on Unix sockets in a temporary directory, and
both are driven by the same client (``peers/ssh_agent.py``'s
:class:`AgentClient`: SSH_AGENTC_SIGN_REQUEST on one connection, the reply
read and its signature parsed), signing the same 64-byte message, in the
same rounds, one after the other:

* **the vault**: ``secretvault serve --ssh-agent`` (memfd_secret backend, the
  audit log to a file in the temporary directory, as in production), an
  Ed25519 vault key made over gRPC and listed by the agent;
* **OpenSSH's agent**: ``ssh-agent -D -a SOCK`` holding an ``ssh-keygen``
  key added with ``ssh-add`` (``peers/ssh_agent.py``).

Each signature is checked once before timing.  Figures: operations per
second (median over rounds), per-call latency p50/p99 over every round, and
CPU per operation of the agent process itself (user + system time from
``/proc/PID/stat``, all its threads); the ratio is the median of per-round
ratios (``benchmarks/_measure.py``).  The issue's target: the vault >= 3x
OpenSSH's agent.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._measure import PeerMissing, Rate
from benchmarks._report import Report, Row, Target, loadavg, machine
from benchmarks._rounds import Bench, add_round_options, process_cpu, rounds_and_seconds, run_bench
from benchmarks._rpc import ServerProcess, child_env, unix_channel
from benchmarks.crypto_limit import SIGN_MESSAGE
from benchmarks.peers.ssh_agent import ED25519_KEY_TYPE, AgentClient, SshAgent

KEY = "bench/agent"
LABELS = {
    "vault.agent.sign": "secretvault agent Ed25519 sign, 1 connection",
    "peer.ssh_agent.ed25519": "OpenSSH ssh-agent Ed25519 sign, 1 connection",
}


def timed(call: Callable[[], object]) -> Callable[[list[int]], Rate]:
    """A form that records every call's latency (ns) for p50/p99."""

    def make(latencies: list[int]) -> Rate:
        def rate(seconds: float) -> float:
            clock = time.perf_counter_ns
            n = 0
            start = clock()
            end = start + int(seconds * 1e9)
            t1 = start
            while t1 < end:
                t0 = clock()
                call()
                t1 = clock()
                latencies.append(t1 - t0)
                n += 1
            return n / ((t1 - start) / 1e9)

        return rate

    return make


class VaultAgent:
    """``secretvault serve --ssh-agent`` in a child process, with one Ed25519 key."""

    def __init__(self, workdir: Path) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        from secretvault.api._proto.secretvault.v1 import keys_pb2, keys_pb2_grpc

        self.socket = workdir / "run" / "ssh-agent.sock"
        env, repo = child_env()
        self._proc = ServerProcess(
            [sys.executable, "-m", "secretvault", "serve", "--socket",
             str(workdir / "run" / "vault.sock"), "--data-dir", str(workdir / "data"),
             "--ssh-agent", "--audit-log", str(workdir / "audit.log"), "--grace", "1"],
            name="secretvault serve --ssh-agent", ready=r"secretvault is serving", env=env,
            cwd=repo)
        try:
            deadline = time.monotonic() + 30
            while not self.socket.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            # the generated stubs are untyped (the wire code is quarantined)
            stub: Any = keys_pb2_grpc.KeyServiceStub
            with unix_channel(str(workdir / "run" / "vault.sock")) as ch:
                stub(ch).CreateKey(keys_pb2.CreateKeyRequest(
                    name=KEY, type=keys_pb2.KEY_TYPE_ED25519), timeout=30)
            with AgentClient(self.socket) as c:
                ids = [i for i in c.identities()
                       if i.key_type == ED25519_KEY_TYPE and i.comment == KEY]
                if not ids:
                    raise PeerMissing("the vault's agent does not list the key it was given")
                self.identity = ids[0]
                Ed25519PublicKey.from_public_bytes(self.identity.ed25519_public).verify(
                    c.sign(self.identity.blob, SIGN_MESSAGE), SIGN_MESSAGE)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def client(self) -> AgentClient:
        return AgentClient(self.socket)

    def close(self) -> None:
        self._proc.stop()


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sv-bench-agent-", dir="/tmp") as d:
        yield Path(d)


def build(bench: Bench, stack: contextlib.ExitStack) -> None:
    """The vault's agent, then OpenSSH's: each round runs them in this order."""
    try:
        vault = VaultAgent(stack.enter_context(_workdir()))
        stack.callback(vault.close)
        client = stack.enter_context(vault.client())
        blob = vault.identity.blob
        bench.add("vault.agent.sign", LABELS["vault.agent.sign"],
                  timed(lambda: client.sign(blob, SIGN_MESSAGE)), process_cpu(vault.pid))
    except PeerMissing as e:
        bench.missing("vault.agent.sign", LABELS["vault.agent.sign"], str(e))
    try:
        agent = stack.enter_context(SshAgent())
        peer = stack.enter_context(agent.client())
        pblob = agent.identity.blob
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        Ed25519PublicKey.from_public_bytes(agent.identity.ed25519_public).verify(
            peer.sign(pblob, SIGN_MESSAGE), SIGN_MESSAGE)
        bench.add("peer.ssh_agent.ed25519", LABELS["peer.ssh_agent.ed25519"],
                  timed(lambda: peer.sign(pblob, SIGN_MESSAGE)), process_cpu(agent.pid))
    except PeerMissing as e:
        bench.missing("peer.ssh_agent.ed25519", LABELS["peer.ssh_agent.ed25519"], str(e))


def rows(bench: Bench) -> list[Row]:
    ms = bench.measures
    return [Row("Ed25519 sign of 64 B over an agent socket, one connection",
                LABELS["vault.agent.sign"], ms["vault.agent.sign"],
                ms["peer.ssh_agent.ed25519"],
                Target("the vault's agent signs >= 3x OpenSSH's ssh-agent", 3.0),
                peer_label="OpenSSH ssh-agent, 1 connection",
                note="same client, same protocol; CPU per op is the agent process's")]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_agent",
                                description=__doc__.split("\n\n")[0])
    add_round_options(p, rounds=9, quick_takes="about 5 s")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table to stderr)")
    args = p.parse_args(argv)
    rounds, seconds = rounds_and_seconds(p, args)
    started = time.monotonic()
    mach = machine()
    bench = run_bench(build, rounds, seconds, log)
    mach["loadavg_end"] = loadavg()
    config = {"rounds": rounds, "seconds": seconds, "quick": args.quick,
              "elapsed_s": time.monotonic() - started}
    report = Report(mach, config, bench.measures, rows(bench),
                    title="The vault's SSH agent against OpenSSH's ssh-agent")
    return report.emit(as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
