"""How long a ``secretvault`` command takes from exec to exit, against a running vault.

Starts the real server (``python -m secretvault serve``, a fresh data
directory, its Unix socket), creates one Ed25519 key, then runs in each
round, one after the other, every command once in a fresh interpreter:

* ``secretvault sign KEY --in MSG --out SIG`` (``python -m secretvault``);
* ``secretvault keys list``;
* its peers in the same round: ``python -c pass`` (the interpreter alone)
  and ``python -c "import grpc"`` (the floor of any call: grpcio itself).

Every child caches its bytecode (in a temporary ``PYTHONPYCACHEPREFIX``,
whatever ``PYTHONDONTWRITEBYTECODE`` says), as an installed package has
it: compiling the project's modules from source on every start is a cost
of the checkout, not of the command; ``--no-bytecode`` measures that case.

It prints the median wall time of each over the rounds, and each command's
ratio to each peer (the median of per-round ratios)::

    python -m benchmarks.cli_start                  # 21 rounds
    python -m benchmarks.cli_start --rounds 41 --backend page-model

Nothing here is asserted in a timed test; the structural check that a
command imports only what it needs is tests/integration/test_cli_imports.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._measure import median
from benchmarks._rpc import ServerProcess, child_env

KEY = "bench/cli"


def _run(argv: list[str], env: dict[str, str], cwd: str) -> float:
    """Seconds from exec to exit of ``argv``; raises if it fails."""
    start = time.perf_counter()
    p = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({p.returncode}): "
                         f"{p.stderr.decode(errors='replace').strip()}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="rounds (default: 21)")
    parser.add_argument("--backend", default=None,
                        help="the server's --backend (default: the server's default)")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="cache no bytecode: every start compiles the project's modules")
    args = parser.parse_args(argv)
    env, repo = child_env()
    py = sys.executable
    sv = [py, "-m", "secretvault"]
    with tempfile.TemporaryDirectory(prefix="sv-cli-start-") as tmp:
        d = Path(tmp)
        if args.no_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(d / "pycache")
        sock = str(d / "vault.sock")
        env["SECRETVAULT_SOCKET"] = sock
        serve = [*sv, "serve", "--socket", sock, "--data-dir", str(d / "data"),
                 "--audit-log", "/dev/null"]
        if args.backend:
            serve += ["--backend", args.backend]
        server = ServerProcess(serve, name="secretvault serve", ready=r"secretvault is serving",
                               env=env, cwd=repo)
        try:
            (d / "msg").write_bytes(b"m" * 64)
            _run([*sv, "keys", "create", KEY, "--type", "ed25519"], env, repo)
            forms = {
                "secretvault sign": [*sv, "sign", KEY, "--in", str(d / "msg"),
                                     "--out", str(d / "sig")],
                "secretvault keys list": [*sv, "keys", "list"],
                "python -c pass": [py, "-c", "pass"],
                'python -c "import grpc"': [py, "-c", "import grpc"],
            }
            for form in forms.values():  # warm the page cache and the .pyc files
                _run(form, env, repo)
            times: dict[str, list[float]] = {name: [] for name in forms}
            for _ in range(args.rounds):
                for name, form in forms.items():
                    times[name].append(_run(form, env, repo))
        finally:
            server.stop()
    cache = "no bytecode cached" if args.no_bytecode else "bytecode cached"
    print(f"CLI start-up, median of {args.rounds} rounds (wall time, exec to exit; {cache})")
    for name, ts in times.items():
        print(f"  {name:26} {median(ts) * 1000:7.1f} ms")
    for cmd in ("secretvault sign", "secretvault keys list"):
        for peer in ("python -c pass", 'python -c "import grpc"'):
            ratio = median([a / b for a, b in zip(times[cmd], times[peer], strict=True)])
            print(f"  {cmd} / {peer:24} {ratio:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
