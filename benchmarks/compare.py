"""secretvault against the systems users would pick instead, in one run.

    python -m benchmarks.compare [--quick] [--rounds N] [--seconds S]
                                 [--json] [--plot FILE] [--keys N]

Measures, on this machine and in the same run:

1. the crypto limit: libsodium in-process on one core, key in secret memory
   and in ordinary memory (``benchmarks/crypto_limit.py``);
2. secretvault Ed25519 signing over its Unix socket and over mutual TLS --
   unary with 1 client, 32 calls in flight, batches of 100 operations
   (1 and 32 in flight), a bidirectional stream (1 and 32 in flight) -- each
   next to a bare grpcio echo of the *same bytes* (``benchmarks/echo.py``),
   the transport ceiling;
3. OpenSSH's ssh-agent signing through its socket (``peers/ssh_agent.py``);
4. SoftHSM2 through PKCS#11, Ed25519 and P-256 (``peers/softhsm.py``);
5. p50/p99 latency of every secretvault form;
6. secret memory per key, pages per 100,000 keys and, as root, distinct
   2 MiB regions, against the ideal (``benchmarks/key_memory.py``).

Every round runs every form once, in a fixed order that puts each form next
to its peer; figures are medians over rounds and ratios are medians of
per-round ratios.  One table is printed (``--json``: a JSON document on
stdout instead, the table going to stderr), and the issue's targets are
marked PASS or MISS.  A peer that cannot run is shown as MISSING with the
reason; ``benchmarks/setup-peers`` installs the missing ones.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._measure import Measure, PeerMissing, per_round_ratio
from benchmarks._report import Report, Row, Target, loadavg, machine
from benchmarks._rounds import Bench, add_round_options, loop_form, process_cpu, rounds_and_seconds
from benchmarks._rpc import (
    BATCH,
    RPC_FORMS,
    TRANSPORTS,
    WINDOW,
    RpcForm,
    RpcTarget,
    echo_target,
    start_echo,
    tls_channel,
    unix_channel,
)
from benchmarks._tls import make_tls_files
from benchmarks.crypto_limit import OPERATIONS, SIGN_MESSAGE, crypto_forms

# --- the run --------------------------------------------------------------------------


def _add_crypto(bench: Bench, stack: contextlib.ExitStack) -> None:
    try:
        secret, ordinary = stack.enter_context(crypto_forms())
    except PeerMissing as e:
        for op, label in OPERATIONS:
            for where in ("secret", "ordinary"):
                bench.missing(f"crypto.{op}.{where}", f"{label}, key in {where} memory", str(e))
        return
    for s, o in zip(secret, ordinary, strict=True):
        bench.add(s.key, s.label, loop_form(s.run))
        bench.add(o.key, o.label, loop_form(o.run))


def _add_peers(bench: Bench, stack: contextlib.ExitStack) -> None:
    from benchmarks.peers.softhsm import SoftHsm
    from benchmarks.peers.ssh_agent import SshAgent

    label = "ssh-agent Ed25519 sign, 1 connection"
    try:
        agent = stack.enter_context(SshAgent())
        client = stack.enter_context(agent.client())
        blob = agent.identity.blob

        def agent_run(n: int) -> None:
            for _ in range(n):
                client.sign(blob, SIGN_MESSAGE)

        bench.add("peer.ssh_agent.ed25519", label, loop_form(agent_run), process_cpu(agent.pid))
    except PeerMissing as e:
        bench.missing("peer.ssh_agent.ed25519", label, str(e))

    labels = {"ed25519": "SoftHSM2 Ed25519 sign (CKM_EDDSA), in-process",
              "p256": "SoftHSM2 P-256 sign (CKM_ECDSA + SHA-256), in-process"}
    try:
        hsm = stack.enter_context(SoftHsm())
        for which, lab in labels.items():
            bench.add(f"peer.softhsm.{which}", lab, loop_form(hsm.runner(which, SIGN_MESSAGE)))
    except PeerMissing as e:
        for which, lab in labels.items():
            bench.missing(f"peer.softhsm.{which}", lab, str(e))


DIAG_LABELS = {
    "keyring": "Keyring.sign, in-process, no RPC",
    "servicer": f"CryptoServicer.Batch of {BATCH}, in-process, no gRPC",
}


def _add_in_process(bench: Bench, stack: contextlib.ExitStack) -> None:
    from benchmarks import vault_target

    try:
        forms = stack.enter_context(vault_target.in_process_forms())
    except PeerMissing as e:
        for k, label in DIAG_LABELS.items():
            bench.missing(f"diag.{k}", label, str(e))
        return
    for k, label in DIAG_LABELS.items():
        run, ops = forms[k]
        bench.add(f"diag.{k}", label, loop_form(run, ops))


def _add_rpc(bench: Bench, stack: contextlib.ExitStack, log: Callable[[str], None]) -> None:
    from benchmarks import vault_target

    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sv-bench-")))
    tls = make_tls_files(workdir)
    targets: dict[tuple[str, str], RpcTarget | str] = {}
    pids: dict[str, int] = {}
    try:
        server = stack.enter_context(vault_target.VaultServer(workdir, tls))
        log(f"secretvault server up (pid {server.pid}): {server.describe()}")
        pids["sv"] = server.pid
        wire = server.wire_requests()
        for t, _ in TRANSPORTS:
            channel = stack.enter_context(server.channel(t))
            targets[("sv", t)] = server.target(channel)
    except PeerMissing as e:
        wire = vault_target.wire_requests_offline()
        for t, _ in TRANSPORTS:
            targets[("sv", t)] = str(e)
    try:
        proc, sock = start_echo(workdir, workdir)
        stack.enter_context(proc)
        pids["echo"] = proc.pid
        targets[("echo", "unix")] = echo_target(stack.enter_context(unix_channel(sock)), wire)
        targets[("echo", "tls")] = echo_target(
            stack.enter_context(tls_channel(proc.port, tls)), wire)
    except PeerMissing as e:
        for t, _ in TRANSPORTS:
            targets[("echo", t)] = str(e)

    for t, tname in TRANSPORTS:
        for form in RPC_FORMS:
            for who, wname in (("echo", "grpcio echo"), ("sv", "secretvault sign")):
                key = f"{who}.{t}.{form.key}"
                label = f"{wname}, {form.label}, {tname}"
                target = targets[(who, t)]
                if isinstance(target, str):
                    bench.missing(key, label, target)
                else:
                    bench.add(key, label, functools.partial(target.rate, form),
                              process_cpu(pids[who]))


# --- rows and targets -------------------------------------------------------------------------


def build_rows(ms: dict[str, Measure]) -> list[Row]:
    rows: list[Row] = []
    sec = "Crypto limit: in-process libsodium, 1 core"
    for op, label in OPERATIONS:
        rows.append(Row(sec, f"{label}, key in secret memory", ms[f"crypto.{op}.secret"],
                        ms[f"crypto.{op}.ordinary"], peer_label="key in ordinary memory"))

    for t, tname in TRANSPORTS:
        sec = f"secretvault Ed25519 sign, {tname}"
        for form in RPC_FORMS:
            target = None
            if t == "unix" and form.key == "unary1":
                target = Target("unary sign over the socket, 1 client >= 90% of bare echo", 0.9)
            rows.append(Row(sec, form.label, ms[f"sv.{t}.{form.key}"],
                            ms[f"echo.{t}.{form.key}"], target,
                            peer_label="bare grpcio echo, same bytes"))

    sec = "Batched and streamed signing against the crypto limit"
    limit = ms["crypto.ed25519_sign.secret"]
    limit_label = "in-process Ed25519 sign"
    best: tuple[float, RpcForm, str] | None = None
    for t, tname in TRANSPORTS:
        for form in RPC_FORMS:
            if form.kind == "unary":
                continue
            m = ms[f"sv.{t}.{form.key}"]
            rows.append(Row(sec, f"{form.label}, {tname}", m, limit, peer_label=limit_label))
            if not m.missing and m.rounds and not limit.missing and limit.rounds:
                r = per_round_ratio(m, limit)
                if best is None or r > best[0]:
                    best = (r, form, t)
    bform, bt = (best[1], best[2]) if best else (RPC_FORMS[3], "unix")
    best_m = ms[f"sv.{bt}.{bform.key}"]
    best_label = f"{bform.label}, {dict(TRANSPORTS)[bt]}"
    rows.append(Row(sec, f"best: {best_label}", best_m, limit,
                    Target("batched or streamed signing >= 50% of in-process libsodium", 0.5),
                    peer_label=limit_label))

    sec = "Where a batched sign's time goes (same run, per operation)"
    keyring, servicer = ms["diag.keyring"], ms["diag.servicer"]
    rows += [
        Row(sec, DIAG_LABELS["keyring"], keyring, limit, peer_label=limit_label),
        Row(sec, DIAG_LABELS["servicer"], servicer, limit, peer_label=limit_label),
        Row(sec, f"{best_label}, over gRPC", best_m, servicer,
            peer_label="the same Batch in-process"),
    ]

    sec = "Ed25519 signing against other key holders"
    unary = ms["sv.unix.unary1"]
    agent, hsm_ed, hsm_p256 = (ms["peer.ssh_agent.ed25519"], ms["peer.softhsm.ed25519"],
                               ms["peer.softhsm.p256"])
    unary_label = "secretvault unary, 1 client, Unix socket"
    rows += [
        Row(sec, unary_label, unary, agent,
            Target("unary secretvault signing beats ssh-agent by >= 3x", 3.0),
            peer_label="ssh-agent, 1 connection"),
        Row(sec, unary_label, unary, hsm_ed,
            Target("unary secretvault signing beats SoftHSM2 in-process Ed25519", 1.0,
                   strict=True),
            peer_label="SoftHSM2 Ed25519, in-process"),
        Row(sec, unary_label, unary, hsm_p256, peer_label="SoftHSM2 P-256, in-process"),
        Row(sec, f"secretvault {best_label}", best_m, agent,
            peer_label="ssh-agent, 1 connection"),
        Row(sec, f"secretvault {best_label}", best_m, hsm_ed,
            peer_label="SoftHSM2 Ed25519, in-process"),
    ]
    return rows


def memory_rows(mem: dict[str, Any]) -> list[Row]:
    sec = f"Secret memory: {mem['keys']:,} Ed25519 keys through the keyring"

    def fixed(key: str, unit: str, value: float) -> Measure:
        return Measure(key, key, unit, rounds=[value])

    ideal_b = fixed("memory.ideal_bytes", "B/key", mem["ideal_bytes_per_key"])
    ideal_p = fixed("memory.ideal_pages", "pages", mem["ideal_pages_per_100k"])
    ideal = "ideal: 64 B per key, packed"
    rows = [
        Row(sec, "secret memory per key (pages faulted in)",
            fixed("memory.bytes_resident", "B/key", mem["bytes_per_key_resident"]), ideal_b,
            Target("secret memory per Ed25519 key within 10% of the ideal", 1.10, at_most=True),
            peer_label=ideal),
        Row(sec, "memlock charged per key (pages mapped)",
            fixed("memory.bytes_locked", "B/key", mem["bytes_per_key_locked"]), ideal_b,
            peer_label=ideal),
        Row(sec, "pages per 100,000 keys, faulted in",
            fixed("memory.pages_resident", "pages", mem["pages_per_100k_resident"]), ideal_p,
            peer_label=ideal),
        Row(sec, "pages per 100,000 keys, mapped",
            fixed("memory.pages_mapped", "pages", mem["pages_per_100k_mapped"]), ideal_p,
            peer_label=ideal),
    ]
    regions = mem["distinct_2m_regions"]
    ideal_r = fixed("memory.ideal_2m", "regions", mem["ideal_2m_regions"])
    if regions is None:
        m = Measure("memory.distinct_2m", "memory.distinct_2m", "regions",
                    missing="distinct 2 MiB regions need root (/proc/self/pagemap frames)")
    else:
        m = fixed("memory.distinct_2m", "regions", regions)
    rows.append(Row(sec, "distinct 2 MiB regions holding them", m, ideal_r,
                    peer_label="ideal: physically contiguous",
                    note="each region is a direct-map level-2 split, permanent until reboot; "
                         "memfd_secret faults in order-0 pages from wherever the buddy "
                         "allocator has them"))
    rows.append(Row(sec, "direct-map level-2 splits while creating them",
                    fixed("memory.level2_splits", "splits", mem["level2_splits"]),
                    note="kernel-wide counter delta: a 2 MiB region already split by earlier "
                         "secret pages (or anything else) is not split again"))
    return rows


# --- main ----------------------------------------------------------------------------------------


def log(msg: str) -> None:
    """Progress, on stderr (stdout is the table or the JSON)."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split(
        "\n\n")[0])
    add_round_options(p, rounds=7, quick_takes="under 2 minutes")
    p.add_argument("--keys", type=int, default=100_000, help="keys for the memory figures")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table to stderr)")
    p.add_argument("--plot", metavar="FILE", help="bar chart of every figure (matplotlib)")
    p.add_argument("--skip-memory", action="store_true", help="leave out the memory figures")
    args = p.parse_args(argv)
    rounds, seconds = rounds_and_seconds(p, args)

    started = time.monotonic()
    mach = machine()
    with contextlib.ExitStack() as stack:
        bench = Bench(log)
        log("setting up: crypto limit, peers, echo and vault servers")
        _add_crypto(bench, stack)
        _add_peers(bench, stack)
        _add_in_process(bench, stack)
        _add_rpc(bench, stack, log)
        missing = [m for m in bench.measures.values() if m.missing]
        for m in missing:
            log(f"MISSING {m.key}: {m.missing}")
        log(f"{len(bench.measures) - len(missing)} forms x {rounds} rounds x {seconds} s")
        bench.run(rounds, seconds)
    rows = build_rows(bench.measures)

    memory: dict[str, Any] | None = None
    memory_missing = None
    if args.skip_memory:
        memory_missing = "left out (--skip-memory)"
    else:
        from benchmarks.key_memory import measure_key_memory

        log(f"creating {args.keys:,} Ed25519 keys for the memory figures")
        try:
            memory = measure_key_memory(args.keys).as_dict()
            rows += memory_rows(memory)
        except PeerMissing as e:
            memory_missing = str(e)

    mach["loadavg_end"] = loadavg()
    config = {"rounds": rounds, "seconds": seconds, "quick": args.quick, "batch": BATCH,
              "window": WINDOW, "keys": args.keys, "elapsed_s": time.monotonic() - started}
    report = Report(mach, config, bench.measures, rows, memory, memory_missing)
    if args.json:
        report.write_json(sys.stdout)
        report.print(sys.stderr)
    else:
        report.print()
    if args.plot:
        report.plot(args.plot)
        log(f"bar chart written to {args.plot}")
    # a MISS is a finding, reported in the table: the run itself succeeded
    # unless nothing at all could be measured
    return 1 if all(m.missing for m in bench.measures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
