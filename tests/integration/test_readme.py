"""README.md, followed as a newcomer would follow it.

A copy of the repository (what a clone holds), a fresh virtual environment
made by the quick-start command itself, the vault on its default paths, and
then every command of the tour, in order, in one shell — with each command's
output checked against the output the README shows.

The README's ``console`` blocks are the script: a line starting with ``$ ``
is a command; the lines under it are its expected output.  Whitespace runs
compare equal, ``...`` on a line of its own stands for any number of lines,
and ``...`` inside a line for any text.  Commands whose shown output is an
error (``secretvault: error:``) or a mismatch (``INVALID``) must exit
non-zero; every other command must exit 0.

The quick start installs from the package index (pip), so this takes a few
minutes: marked ``slow``.  As root the default paths are
``/run/secretvault`` and ``/var/lib/secretvault``: the whole run happens in
a private mount namespace where empty directories are bind-mounted there, so
the machine's own paths are never touched.  Other users' defaults follow
``XDG_RUNTIME_DIR`` and ``XDG_DATA_HOME``, pointed into the test's directory.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

pytestmark = [pytest.mark.slow, pytest.mark.memfd_secret]

#: what a clone does not hold (caches, local environments, build output)
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "venv", "__pycache__", "*.egg-info", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", "build", "dist", ".hypothesis",
)


# --- reading the README -----------------------------------------------------------------------


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


@dataclass
class Step:
    command: str
    expected: list[str]

    @property
    def must_fail(self) -> bool:
        return any(line.startswith(("secretvault: error:", "INVALID")) for line in self.expected)


def steps(console_blocks: list[str]) -> list[Step]:
    out: list[Step] = []
    for block in console_blocks:
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append(Step(line[2:], []))
            else:
                assert out, f"output before any command in a console block: {line!r}"
                out[-1].expected.append(line)
    return out


def _norm(line: str) -> str:
    return " ".join(line.split())


def _line_matches(expected: str, actual: str) -> bool:
    parts = [_norm(p) for p in _norm(expected).split("...")]
    pattern = r"\s*.*?\s*".join(re.escape(p) for p in parts)
    return re.fullmatch(pattern, _norm(actual)) is not None


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """Doctest-style: ``...`` alone on a line matches any run of lines.

    Blank lines are layout, on both sides: they are not compared.
    """
    exp = [e for e in expected if e.strip()]
    act = [a for a in actual if a.strip()]

    def match(i: int, j: int) -> bool:
        if i == len(exp):
            return j == len(act)
        if exp[i].strip() == "...":
            return any(match(i + 1, k) for k in range(j, len(act) + 1))
        return j < len(act) and _line_matches(exp[i], act[j]) and match(i + 1, j + 1)

    return match(0, 0)


def test_the_readme_test_command_is_what_ci_runs() -> None:
    quick = section(README.read_text(), "Quick start")
    sh = blocks(quick, "sh")
    assert len(sh) == 2, "the quick start has two commands: install-and-serve, then the tests"
    assert sh[1].strip() == "./scripts/test"
    ci = (REPO / ".ci" / "run").read_text()
    assert "\n./scripts/test\n" in ci and "git clone" in ci
    assert os.access(REPO / "scripts" / "test", os.X_OK)


def test_matcher() -> None:
    assert output_matches(["a", "...", "z"], ["a", "b", "c", "z"])
    assert output_matches(["a ... c"], ["a  b   c"])
    assert not output_matches(["a", "z"], ["a", "b", "z"])
    assert not output_matches(["valid: x"], ["INVALID: x"])
    assert output_matches(["...", "x"], ["x"])


# --- following it -------------------------------------------------------------------------------


def _driver(clone: Path, quick_start: str, tour: list[Step], python: str, root: bool,
            mounts: dict[str, Path]) -> str:
    """One bash script: start the quick start, run the tour, Ctrl-C the vault."""
    lines = ["set -u", f"cd {shlex.quote(str(clone))}"]
    if root:
        for target, source in mounts.items():
            lines.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
    lines += [
        # the first terminal: its own process group, as a shell gives a job
        f"setsid bash -c {shlex.quote(quick_start)} >serve.out 2>serve.err </dev/null &",
        "serve=$!",
        "for _ in $(seq 1 3000); do",
        "  grep -q 'secretvault is serving' serve.err 2>/dev/null && break",
        "  kill -0 $serve 2>/dev/null || { echo 'QUICKSTART EXITED' >>serve.err; exit 3; }",
        "  sleep 0.2",
        "done",
        "grep -q 'secretvault is serving' serve.err || { echo 'QUICKSTART TIMEOUT' >>serve.err;"
        " kill -KILL -- -$serve; exit 4; }",
        # the second terminal: the tour, in one shell, each step delimited
        "exec 3>tour.out",
    ]
    for i, step in enumerate(tour):
        lines.append(f"echo '@@STEP {i}@@' >&3")
        lines.append(f"{{ {step.command} ; }} >&3 2>&3 </dev/null; echo \"@@RC {i} $?@@\" >&3")
    lines += [
        "echo '@@STEP python@@' >&3",
        f"cat > tour_example.py <<'PYTHON'\n{python}PYTHON",
        ".venv/bin/python tour_example.py >&3 2>&3; echo \"@@RC python $?@@\" >&3",
        # Ctrl-C in the first terminal
        "kill -INT -- -$serve",
        "wait $serve; echo \"serve exit $?\" >>serve.err",
    ]
    return "\n".join(lines) + "\n"


def test_quick_start_and_tour(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the tour verifies with openssl, which is not installed here")
    readme = README.read_text()
    quick_start = blocks(section(readme, "Quick start"), "sh")[0].strip()
    tour_section = section(readme, "Tour")
    tour = steps(blocks(tour_section, "console"))
    python = blocks(tour_section, "python")
    assert tour and python, "the tour has console steps and a Python example"
    assert "secretvault serve" in quick_start

    clone = tmp_path / "secretvault"
    shutil.copytree(REPO, clone, ignore=IGNORED, symlinks=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "SECRETVAULT_SOCKET",
                        "SECRETVAULT_PASSPHRASE")}
    # a newcomer's shell: not inside the virtual environment running these tests
    if sys.prefix != sys.base_prefix:
        env["PATH"] = os.pathsep.join(
            p for p in env.get("PATH", "").split(os.pathsep)
            if not p.startswith(sys.prefix)
        )

    root = os.geteuid() == 0
    mounts: dict[str, Path] = {}
    created: list[Path] = []
    if root:
        if shutil.which("unshare") is None:
            pytest.skip("running as root needs unshare(1) to keep the default paths private")
        for target, name in (("/run/secretvault", "run"), ("/var/lib/secretvault", "data")):
            source = tmp_path / name
            source.mkdir(mode=0o700)
            mounts[target] = source
            if not os.path.exists(target):
                os.makedirs(target, mode=0o700)
                created.append(Path(target))
        socket_path = "/run/secretvault/secretvault.sock"
        data_dir = mounts["/var/lib/secretvault"]
        shown_data_dir = "/var/lib/secretvault"
    else:
        env["XDG_RUNTIME_DIR"] = str(tmp_path / "xdg-run")
        env["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")
        os.makedirs(env["XDG_RUNTIME_DIR"], mode=0o700)
        socket_path = f"{env['XDG_RUNTIME_DIR']}/secretvault/secretvault.sock"
        data_dir = Path(env["XDG_DATA_HOME"]) / "secretvault"
        shown_data_dir = str(data_dir)

    script = tmp_path / "driver.sh"
    script.write_text(_driver(clone, quick_start, tour, python[0], root, mounts))
    argv = ["bash", str(script)]
    if root:
        argv = ["unshare", "--mount", "--propagation", "private", *argv]
    driver = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        code = driver.wait(timeout=840)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        code = -1
    finally:
        for d in created:
            try:
                d.rmdir()
            except OSError:
                pass

    serve_err = (clone / "serve.err").read_text(errors="replace")
    assert code == 0, f"driver exited {code}; quick start stderr:\n{serve_err[-4000:]}"

    # the quick start: one summary, the unseal key file said plainly, a clean stop
    for line in ("secretvault is serving",
                 "backend      memfd_secret: keys live in secret memory",
                 f"store        {shown_data_dir}/keys.sqlite3",
                 f"listening    unix:{socket_path}",
                 f"unseal key   created {shown_data_dir}/unseal.key (mode 0600)",
                 "in production keep it elsewhere",
                 "secretvault: SIGINT: draining in-flight calls",
                 "secretvault: stopped; secret memory zeroed and unmapped",
                 "serve exit 0"):
        assert line in serve_err, (line, serve_err[-4000:])
    assert (data_dir / "unseal.key").stat().st_mode & 0o777 == 0o600
    assert (clone / ".venv" / "bin" / "secretvault").exists()

    # the tour, step by step
    out = (clone / "tour.out").read_text(errors="replace")
    chunks = re.split(r"^@@STEP (\w+)@@\n", out, flags=re.M)[1:]
    results: dict[str, tuple[list[str], int]] = {}
    for name, body in zip(chunks[::2], chunks[1::2], strict=True):
        rc_match = re.search(rf"^@@RC {name} (\d+)@@$", body, re.M)
        assert rc_match, f"step {name} did not finish: {body!r}"
        results[name] = (body[: rc_match.start()].splitlines(), int(rc_match.group(1)))
    for i, step in enumerate(tour):
        actual, rc = results[str(i)]
        if step.must_fail:
            assert rc != 0, f"'{step.command}' should have failed: {actual}"
        else:
            assert rc == 0, f"'{step.command}' exited {rc}: {actual}"
        assert output_matches(step.expected, actual), (
            f"'{step.command}'\n--- README shows:\n" + "\n".join(step.expected)
            + "\n--- it printed:\n" + "\n".join(actual))
    actual, rc = results["python"]
    assert rc == 0, f"the README's Python example failed: {actual}"
