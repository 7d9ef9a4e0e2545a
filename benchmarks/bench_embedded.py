"""The embedded keyring's Ed25519 sign against the in-process alternatives, in one run.

    python -m benchmarks.bench_embedded [--quick] [--rounds N] [--seconds S] [--json]

What an application that signs in its own process can use instead of
``secretvault.embedded``, each signing the same 64-byte message on one
thread of this process, every form in every round, next to each other:

* **the embedded keyring**: ``open_keyring`` on a fresh store in a temporary
  directory, memfd_secret backend, ``Keyring.sign`` (name lookup, type
  check, the read side of the keyring's lock, framing, the operation count:
  everything a call does);
* **SoftHSM2**: ``libsofthsm2.so`` through python-pkcs11, CKM_EDDSA on a
  session key (``peers/softhsm.py``), keys in the C heap;
* **bare libsodium, key in ordinary memory**: ``crypto_sign_detached``
  through the same cffi binding the vault uses, the key in a C heap buffer
  (``crypto_limit.py``): the floor, no lookup, no lock, no framing;
* **bare libsodium, key in secret memory**: the same call on a key in a
  memfd_secret slot: what the keyring's own work costs, apart from where
  the key lives;
* **PyNaCl**: ``SigningKey.sign`` with the seed in Python ``bytes`` (what
  most Python code does: the key is in the garbage-collected heap).

The issue's targets: the embedded keyring >= 5x SoftHSM2 and >= 0.9x bare
libsodium with the key in ordinary memory.  Opening hardens this process as
it does any embedding one (no core dumps, not dumpable).  Figures are
medians over rounds, ratios medians of per-round ratios
(``benchmarks/_measure.py``); a peer that cannot run is shown as MISSING
with the reason (``benchmarks/setup-peers`` installs SoftHSM2).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator

from benchmarks._measure import PeerMissing, Run
from benchmarks._report import Report, Row, Target, loadavg, machine
from benchmarks._rounds import Bench, add_round_options, loop_form, rounds_and_seconds, run_bench
from benchmarks.crypto_limit import SIGN_MESSAGE, crypto_forms

KEY = "bench/embedded"

LABELS = {
    "embedded.sign": "secretvault.embedded Keyring.sign",
    "peer.softhsm.ed25519": "SoftHSM2 Ed25519 (CKM_EDDSA), in-process",
    "crypto.ed25519_sign.ordinary": "bare libsodium, key in ordinary memory",
    "crypto.ed25519_sign.secret": "bare libsodium, key in secret memory",
    "peer.pynacl.ed25519": "PyNaCl SigningKey.sign, key in Python bytes",
}


@contextlib.contextmanager
def embedded_form(backend: str = "memfd_secret") -> Iterator[Run]:
    """A loop of ``Keyring.sign`` on a keyring of its own, checked before it is timed."""
    from secretvault.api.errors import SecretMemoryUnavailable
    from secretvault.clients import local
    from secretvault.embedded import open_keyring

    with tempfile.TemporaryDirectory(prefix="sv-bench-embedded-") as d:
        try:
            ring = open_keyring(d, backend=backend)  # type: ignore[arg-type]
        except SecretMemoryUnavailable as e:
            raise PeerMissing(f"memfd_secret unavailable: {e}") from e
        with ring:
            ring.create_key(KEY, "ed25519")
            token = ring.sign(KEY, SIGN_MESSAGE)
            if not local.verify_signature(ring.public_key(KEY).raw, SIGN_MESSAGE, token):
                raise AssertionError("the embedded keyring's signature does not verify")
            sign = ring.sign

            def run(n: int) -> None:
                for _ in range(n):
                    sign(KEY, SIGN_MESSAGE)

            yield run


def pynacl_form() -> Run:
    import os

    from nacl.signing import SigningKey

    key = SigningKey(os.urandom(32))  # ordinary memory: that is the point of this peer
    key.verify_key.verify(key.sign(SIGN_MESSAGE))
    sign = key.sign

    def run(n: int) -> None:
        for _ in range(n):
            sign(SIGN_MESSAGE)

    return run


def build(bench: Bench, stack: contextlib.ExitStack, backend: str) -> None:
    """Every form, in the order the rounds run them."""
    try:
        bench.add("embedded.sign", LABELS["embedded.sign"],
                  loop_form(stack.enter_context(embedded_form(backend))))
    except PeerMissing as e:
        bench.missing("embedded.sign", LABELS["embedded.sign"], str(e))

    from benchmarks.peers.softhsm import SoftHsm

    try:
        hsm = stack.enter_context(SoftHsm())
        bench.add("peer.softhsm.ed25519", LABELS["peer.softhsm.ed25519"],
                  loop_form(hsm.runner("ed25519", SIGN_MESSAGE)))
    except PeerMissing as e:
        bench.missing("peer.softhsm.ed25519", LABELS["peer.softhsm.ed25519"], str(e))

    try:
        secret, ordinary = stack.enter_context(crypto_forms())
        bench.add("crypto.ed25519_sign.ordinary", LABELS["crypto.ed25519_sign.ordinary"],
                  loop_form(ordinary[0].run))
        bench.add("crypto.ed25519_sign.secret", LABELS["crypto.ed25519_sign.secret"],
                  loop_form(secret[0].run))
    except PeerMissing as e:
        for k in ("crypto.ed25519_sign.ordinary", "crypto.ed25519_sign.secret"):
            bench.missing(k, LABELS[k], str(e))

    bench.add("peer.pynacl.ed25519", LABELS["peer.pynacl.ed25519"], loop_form(pynacl_form()))


def rows(bench: Bench) -> list[Row]:
    ms = bench.measures
    emb = ms["embedded.sign"]
    sec = "Ed25519 sign of 64 B in this process, one thread"
    return [
        Row(sec, LABELS["embedded.sign"], emb, ms["peer.softhsm.ed25519"],
            Target("embedded sign >= 5x SoftHSM2 in-process Ed25519", 5.0),
            peer_label="SoftHSM2, in-process"),
        Row(sec, LABELS["embedded.sign"], emb, ms["crypto.ed25519_sign.ordinary"],
            Target("embedded sign >= 0.9x bare libsodium, key in ordinary memory", 0.9),
            peer_label="bare libsodium, ordinary memory"),
        Row(sec, LABELS["embedded.sign"], emb, ms["crypto.ed25519_sign.secret"],
            peer_label="bare libsodium, secret memory",
            note="the keyring's own work (lookup, lock, framing, counting), "
                 "the key in the same memory on both sides"),
        Row(sec, LABELS["crypto.ed25519_sign.secret"], ms["crypto.ed25519_sign.secret"],
            ms["crypto.ed25519_sign.ordinary"], peer_label="bare libsodium, ordinary memory",
            note="where the key lives, nothing else"),
        Row(sec, LABELS["embedded.sign"], emb, ms["peer.pynacl.ed25519"],
            peer_label="PyNaCl, key in Python bytes"),
    ]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_embedded",
                                description=__doc__.split("\n\n")[0])
    add_round_options(p, rounds=9, quick_takes="about 5 s")
    p.add_argument("--backend", default="memfd_secret",
                   choices=("memfd_secret", "page-model", "pooled-pmd-model"),
                   help="the embedded keyring's backend (a model only where memfd_secret "
                        "is missing: its figures are then not the product's)")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table to stderr)")
    args = p.parse_args(argv)
    rounds, seconds = rounds_and_seconds(p, args)

    started = time.monotonic()
    mach = machine()
    bench = run_bench(lambda bench, stack: build(bench, stack, args.backend), rounds, seconds, log)
    mach["loadavg_end"] = loadavg()
    config = {"rounds": rounds, "seconds": seconds, "quick": args.quick,
              "backend": args.backend, "elapsed_s": time.monotonic() - started}
    report = Report(mach, config, bench.measures, rows(bench),
                    title="The embedded keyring against in-process signing")
    return report.emit(as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
