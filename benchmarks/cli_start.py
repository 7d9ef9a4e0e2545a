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

What is measured is said in the first line printed:

* by default, the checkout as this interpreter imports it (``PYTHONPATH``
  is the repository; in a development venv an editable install's import
  finder is loaded at every start, by its ``.pth`` file, peers included);
* ``--wheel``: what users run, the checkout built as a wheel and installed
  into a scratch venv under the temporary directory (its dependencies are
  this environment's, by a ``.pth`` line: nothing is downloaded);
* ``--python PY``: an interpreter where secretvault is already installed
  (say, a venv after ``pip install .``), run outside the checkout.

The server always runs from the checkout.  It prints the median wall time of
each over the rounds, and each command's ratio to each peer (the median of
per-round ratios)::

    python -m benchmarks.cli_start                  # 21 rounds, the checkout
    python -m benchmarks.cli_start --wheel          # the installed wheel
    python -m benchmarks.cli_start --rounds 41 --backend page-model

Nothing here is asserted in a timed test; the structural check that a
command imports only what it needs is tests/integration/test_cli_imports.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
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


def install_wheel(repo: str, where: Path) -> str:
    """Build the checkout's wheel, install it into a new venv in ``where``; its python.

    The venv borrows this environment's dependencies (a ``.pth`` line naming
    its site-packages, whose own ``.pth`` files, an editable finder among
    them, are not run), so nothing is downloaded.
    """
    wheels, venv = where / "wheel", where / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), repo],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    wheel = next(wheels.glob("secretvault-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, stdout=subprocess.DEVNULL)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "secretvault-bench-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="rounds (default: 21)")
    parser.add_argument("--backend", default=None,
                        help="the server's --backend (default: the server's default)")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="cache no bytecode: every start compiles the project's modules")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--wheel", action="store_true",
                       help="measure the checkout built as a wheel and installed in a scratch "
                       "venv (what users run)")
    where.add_argument("--python", metavar="PY",
                       help="measure the secretvault installed for this interpreter")
    args = parser.parse_args(argv)
    env, repo = child_env()
    server_sv = [sys.executable, "-m", "secretvault"]
    with tempfile.TemporaryDirectory(prefix="sv-cli-start-") as tmp:
        d = Path(tmp)
        if args.wheel or args.python:
            py = install_wheel(repo, d) if args.wheel else args.python
            what = ("the checkout's wheel, installed in a scratch venv" if args.wheel
                    else "the installed package")
            # nothing of the checkout on the path: run from the temporary directory
            cmd_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
            if os.environ.get("PYTHONPATH"):
                cmd_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
            cwd = str(d)
        else:
            py, what, cmd_env, cwd = sys.executable, "the checkout (PYTHONPATH)", env, repo
        sv = [py, "-m", "secretvault"]
        for e in {id(env): env, id(cmd_env): cmd_env}.values():
            if args.no_bytecode:
                e["PYTHONDONTWRITEBYTECODE"] = "1"
            else:
                e.pop("PYTHONDONTWRITEBYTECODE", None)
                e["PYTHONPYCACHEPREFIX"] = str(d / "pycache")
        sock = str(d / "vault.sock")
        env["SECRETVAULT_SOCKET"] = cmd_env["SECRETVAULT_SOCKET"] = sock
        serve = [*server_sv, "serve", "--socket", sock, "--data-dir", str(d / "data"),
                 "--audit-log", "/dev/null"]
        if args.backend:
            serve += ["--backend", args.backend]
        server = ServerProcess(serve, name="secretvault serve", ready=r"secretvault is serving",
                               env=env, cwd=repo)
        try:
            (d / "msg").write_bytes(b"m" * 64)
            _run([*server_sv, "keys", "create", KEY, "--type", "ed25519"], env, repo)
            forms = {
                "secretvault sign": [*sv, "sign", KEY, "--in", str(d / "msg"),
                                     "--out", str(d / "sig")],
                "secretvault keys list": [*sv, "keys", "list"],
                "python -c pass": [py, "-c", "pass"],
                'python -c "import grpc"': [py, "-c", "import grpc"],
            }
            for form in forms.values():  # warm the page cache and the .pyc files
                _run(form, cmd_env, cwd)
            times: dict[str, list[float]] = {name: [] for name in forms}
            for _ in range(args.rounds):
                for name, form in forms.items():
                    times[name].append(_run(form, cmd_env, cwd))
        finally:
            server.stop()
    cache = "no bytecode cached" if args.no_bytecode else "bytecode cached"
    print(f"CLI start-up, median of {args.rounds} rounds (wall time, exec to exit; {cache})")
    print(f"  measured: {what}, {py}")
    for name, ts in times.items():
        print(f"  {name:26} {median(ts) * 1000:7.1f} ms")
    for cmd in ("secretvault sign", "secretvault keys list"):
        for peer in ("python -c pass", 'python -c "import grpc"'):
            ratio = median([a / b for a, b in zip(times[cmd], times[peer], strict=True)])
            print(f"  {cmd} / {peer:24} {ratio:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
