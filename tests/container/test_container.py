"""The container image, tested with podman and runc (issue 7's "Done when").

Each test runs the real image built by ``scripts/build-image`` with the
runtime flags a deployment uses (read-only root, ``deploy/seccomp.json``,
the non-root user, explicit ulimits), and talks to it from the host through
the socket on a bind-mounted directory with the real client library and CLI.

* the image builds, from the project's wheels, with its user, health check
  and Python 3.11;
* ``deploy/seccomp.json`` is the runtime's default plus an explicit
  ``memfd_secret`` rule;
* a client on the host creates a key, signs and verifies; the keys survive
  a stop/start of the container and a new container on the same volumes;
* with ``memfd_secret`` denied by seccomp the server refuses to start and
  says seccomp and ``deploy/seccomp.json``;
* with a small memlock limit, creation past it is RESOURCE_EXHAUSTED with the
  figures, earlier keys still work and the headroom reaches zero;
* with a memory cgroup limit, the memcg figures are in the stats;
* the Kubernetes StatefulSet (under ``podman kube play``) and compose.yaml
  (under podman-compose) run the application as its own identity: uid 10002
  on the policy's "app" socket, where it may sign with app/* keys and is
  refused key management, other keys and the vault's own socket.

``.ci/run`` installs podman and runc first (``scripts/install-container-deps``);
elsewhere the tests skip, naming what is missing (``conftest.py``).  The
replicated deployments are tested in ``test_replicas.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.container._podman import (
    IMAGE_UID,
    REPO,
    START_TIMEOUT_S,
    Build,
    healthcheck,
    podman,
    ulimit_args,
    verify_independently,
)

PAGE = 4096
SOCKET_NAME = "secretvault.sock"
RUNTIME_DEFAULT_PROFILE = Path("/usr/share/containers/seccomp.json")

pytestmark = [pytest.mark.container]


@dataclass
class Running:
    """One vault container and the host directories it runs on."""

    name: str
    data: Path
    sockets: Path

    @property
    def socket(self) -> str:
        return str(self.sockets / SOCKET_NAME)

    def state(self) -> tuple[str, int]:
        out = podman(
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.name
        ).stdout.split()
        return out[0], int(out[1])

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def wait_serving(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until gRPC health says SERVING on the shared socket."""
        deadline = time.monotonic() + timeout
        why = "no socket yet"
        while time.monotonic() < deadline:
            status, code = self.state()
            if status in ("exited", "stopped"):
                raise AssertionError(
                    f"container {self.name} exited ({code}) before serving:\n{self.logs()}"
                )
            if os.path.exists(self.socket):
                ok, why = healthcheck.check(self.socket)
                if ok:
                    return
            time.sleep(0.25)
        raise AssertionError(f"{self.name} not serving after {timeout}s ({why}):\n{self.logs()}")

    def wait_exited(self, timeout: float = START_TIMEOUT_S) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, code = self.state()
            if status in ("exited", "stopped"):
                return code
            time.sleep(0.25)
        raise AssertionError(f"{self.name} still running after {timeout}s:\n{self.logs()}")


class Vaults:
    """Starts vault containers; removes every one of them at teardown."""

    def __init__(self, image: str, tmp: Path) -> None:
        self.image = image
        self.tmp = tmp
        self.names: list[str] = []

    def dirs(self) -> tuple[Path, Path]:
        """A data and a socket directory, owned by the image's user."""
        data = Path(tempfile.mkdtemp(prefix="data-", dir=self.tmp))
        sockets = Path(tempfile.mkdtemp(prefix="sock-", dir=self.tmp))
        for d in (data, sockets):
            os.chown(d, IMAGE_UID, IMAGE_UID)
            d.chmod(0o700)
        return data, sockets

    def start(
        self,
        data: Path | None = None,
        sockets: Path | None = None,
        *,
        seccomp: Path = REPO / "deploy" / "seccomp.json",
        memlock: int | None = None,
        extra: tuple[str, ...] = (),
    ) -> Running:
        if data is None or sockets is None:
            data, sockets = self.dirs()
        name = f"svtest-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        podman(
            "run", "-d", "--name", name,
            "--read-only",
            "--security-opt", f"seccomp={seccomp}",
            *ulimit_args(memlock),
            "-v", f"{data}:/var/lib/secretvault",
            "-v", f"{sockets}:/run/secretvault",
            *extra,
            self.image,
        )
        return Running(name, data, sockets)

    def cleanup(self) -> None:
        for name in self.names:
            podman("rm", "-f", "-t", "2", name, check=False, timeout=60)


# --- fixtures -------------------------------------------------------------------




@pytest.fixture
def vaults(image_build: Build) -> Iterator[Vaults]:
    tmp = Path(tempfile.mkdtemp(prefix="svc-", dir="/tmp"))  # short: sockets have 108 bytes
    v = Vaults(image_build.image, tmp)
    try:
        yield v
    finally:
        v.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


# --- the image ------------------------------------------------------------------


def test_image_builds(image_build: Build) -> None:
    """Built from the project's wheels: non-root user, gRPC health check,
    Python 3.11 with the wheels' native modules importable, no pip left."""
    inspect = json.loads(podman("image", "inspect", image_build.image).stdout)[0]
    config = inspect["Config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert config["Entrypoint"][:3] == ["/usr/bin/tini", "--", "secretvault"]
    assert config["Cmd"][0] == "serve"
    assert any(v.startswith("/var/lib/secretvault") for v in config["Volumes"])
    assert any(v.startswith("/run/secretvault") for v in config["Volumes"])
    health = config.get("Healthcheck") or inspect.get("Healthcheck") or {}
    assert "/opt/secretvault/healthcheck.py" in " ".join(health.get("Test", [])), health

    probe = (
        "import sys, os, importlib.util as u;"
        "import grpc, nacl.bindings, cryptography.hazmat.bindings._rust;"
        "import secretvault.vault, secretvault.backends, secretvault.clients;"
        "print(sys.version_info[:2], os.getuid(), u.find_spec('pip') is None,"
        " open('/proc/self/status').read().split('CapEff:')[1].split()[0])"
    )
    out = podman(
        "run", "--rm", "--read-only", *ulimit_args(),
        "--entrypoint", "/opt/secretvault/bin/python", image_build.image, "-c", probe,
    ).stdout.strip()
    assert out == f"(3, 11) {IMAGE_UID} True 0000000000000000", out
    print(f"image build (incremental) took {image_build.seconds:.1f} s")


def _allowed(profile: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """syscall name -> the ALLOW rules naming it."""
    rules: dict[str, list[dict[str, Any]]] = {}
    for rule in profile["syscalls"]:
        if rule["action"] == "SCMP_ACT_ALLOW":
            for name in rule["names"]:
                rules.setdefault(name, []).append(rule)
    return rules


@pytest.mark.skipif(
    not RUNTIME_DEFAULT_PROFILE.exists(),
    reason=f"needs the runtime's default profile at {RUNTIME_DEFAULT_PROFILE} (containers-common)",
)
def test_seccomp_profile_is_runtime_default_plus_explicit_memfd_secret() -> None:
    ours = json.loads((REPO / "deploy" / "seccomp.json").read_text())
    default = json.loads(RUNTIME_DEFAULT_PROFILE.read_text())
    for field in ("defaultAction", "defaultErrnoRet", "archMap"):
        assert ours.get(field) == default.get(field), field
    # memfd_secret is allowed by a rule of its own, unconditionally
    mine = _allowed(ours)["memfd_secret"]
    assert len(mine) == 1 and mine[0]["names"] == ["memfd_secret"], mine
    assert not mine[0].get("args") and not mine[0].get("includes") and mine[0].get("comment")
    # and nothing else differs: same rules once memfd_secret is taken out
    def without(profile: dict[str, Any]) -> list[tuple[str, str, str]]:
        out = []
        for rule in profile["syscalls"]:
            rest = {k: v for k, v in rule.items() if k not in ("names", "comment")}
            for name in rule["names"]:
                if name != "memfd_secret":
                    out.append((name, rule["action"], json.dumps(rest, sort_keys=True)))
        return sorted(out)

    assert without(ours) == without(default)


# --- a vault in a container, a client on the host ----------------------------------


def cli(*args: str, socket: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The ``secretvault`` command of this environment, on the host."""
    exe = Path(sys.executable).with_name("secretvault")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "secretvault"]
    return subprocess.run(
        [*cmd, *args], input=stdin, capture_output=True, timeout=60, check=False,
        env=dict(os.environ, SECRETVAULT_SOCKET=socket),
    )


@pytest.mark.memfd_secret
def test_host_client_signs_through_shared_socket_and_keys_survive_restart(
    vaults: Vaults, tmp_path: Path
) -> None:
    from secretvault.clients import VaultClient

    vault = vaults.start()
    vault.wait_serving()
    # the image's own HEALTHCHECK (gRPC health inside the container)
    health = podman("healthcheck", "run", vault.name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr

    message = b"release v1.2.3 sha256:" + bytes(range(32))
    with VaultClient(vault.socket) as client:
        key = client.create_key("ci/signer", "ed25519")
        assert key.primary_version == 1
        public = client.public_key("ci/signer")
        token = client.sign("ci/signer", message)
        assert client.verify("ci/signer", message, token)
        assert not client.verify("ci/signer", message + b"!", token)
        stats = client.stats()
    verify_independently(public.raw, message, token)
    # keys are in secret memory inside the container, not in a model
    assert (stats.backend, stats.protection) == ("memfd_secret", "secretmem")
    assert stats.keys_by_type["ed25519"] == 1

    # the CLI on the host, through the same socket
    (tmp_path / "msg").write_bytes(message)
    signed = cli("sign", "ci/signer", "--in", str(tmp_path / "msg"), socket=vault.socket)
    assert signed.returncode == 0, signed.stderr
    verify_independently(public.raw, message, signed.stdout)
    (tmp_path / "sig").write_bytes(signed.stdout)
    checked = cli("verify", "ci/signer", "--in", str(tmp_path / "msg"),
                  "--signature", str(tmp_path / "sig"), socket=vault.socket)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # stop and start the same container: same volumes, same keys
    podman("stop", "-t", "10", vault.name)
    assert vault.state()[0] in ("exited", "stopped")
    podman("start", vault.name)
    vault.wait_serving()
    with VaultClient(vault.socket) as client:
        assert [k.name for k in client.list_keys()] == ["ci/signer"]
        assert client.public_key("ci/signer").raw == public.raw
        verify_independently(public.raw, message, client.sign("ci/signer", message))

    # and a new container on the same volumes (an upgrade, a rescheduled pod)
    podman("rm", "-f", "-t", "10", vault.name)
    again = vaults.start(vault.data, vault.sockets)
    again.wait_serving()
    with VaultClient(again.socket) as client:
        assert client.public_key("ci/signer").raw == public.raw
        assert client.verify("ci/signer", message, token)


def deny_memfd_secret(profile: Path, errno_ret: int | None) -> Path:
    """deploy/seccomp.json without its memfd_secret rule: unlisted syscalls
    get the profile's default (ENOSYS).  With ``errno_ret``, an explicit
    rule returns that errno instead (EPERM: older Docker-style profiles)."""
    data = json.loads((REPO / "deploy" / "seccomp.json").read_text())
    rules = []
    for rule in data["syscalls"]:
        names = [n for n in rule["names"] if n != "memfd_secret"]
        if names:
            rules.append({**rule, "names": names})
    if errno_ret is not None:
        rules.append({"names": ["memfd_secret"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": errno_ret})
    data["syscalls"] = rules
    profile.write_text(json.dumps(data))
    return profile


@pytest.mark.parametrize(("errno_name", "errno_ret"), [("ENOSYS", None), ("EPERM", 1)])
def test_seccomp_denying_memfd_secret_refuses_to_start(
    vaults: Vaults, tmp_path: Path, errno_name: str, errno_ret: int | None
) -> None:
    profile = deny_memfd_secret(tmp_path / "deny-memfd-secret.json", errno_ret)
    vault = vaults.start(seccomp=profile)
    code = vault.wait_exited()
    logs = vault.logs()
    assert code != 0, logs
    assert "seccomp" in logs and "deploy/seccomp.json" in logs, logs
    assert errno_name in logs, logs
    assert not os.path.exists(vault.socket)
    # it never fell back to ordinary memory: no store was even opened
    assert not (vault.data / "keys.sqlite3").exists()


MEMLOCK_PAGES = 8  # a small RLIMIT_MEMLOCK: 32 KiB


@pytest.mark.memfd_secret
def test_memlock_limit_exhaustion_reports_figures_and_keeps_earlier_keys(
    vaults: Vaults,
) -> None:
    """The arithmetic of deploy/README.md, checked against the real kernel:
    one page holds the key-encryption key, the import key and the row-MAC
    key (32-byte slots), one the row-MAC HMAC state (a 256-byte slot), each
    further page 64 Ed25519 keys, and the mapping is charged to
    RLIMIT_MEMLOCK whole at mmap time."""
    from secretvault.api.errors import MemlockExceeded
    from secretvault.clients import VaultClient

    limit = MEMLOCK_PAGES * PAGE
    expected = 64 * (MEMLOCK_PAGES - 2)
    vault = vaults.start(memlock=limit)
    vault.wait_serving()
    with VaultClient(vault.socket) as client:
        before = client.stats()
        assert before.memlock.soft == limit and not before.memlock.cap_ipc_lock
        assert before.memlock.headroom_keys["ed25519"] == expected

        created = 0
        with pytest.raises(MemlockExceeded) as refused:
            while created <= expected + 64:  # bounded: fails the test, never hangs
                client.create_key(f"k{created:04d}", "ed25519")
                created += 1
        assert created == expected, f"{created} keys fit in {limit} bytes, README: {expected}"
        error = refused.value
        assert error.status == "RESOURCE_EXHAUSTED"
        text = str(error)
        assert f"RLIMIT_MEMLOCK soft {limit} bytes" in text, text
        assert f"already locked {limit} bytes" in text, text

        # the refused key does not exist; every earlier key still works
        assert len(client.list_keys()) == expected
        message = b"still here"
        for name in ("k0000", f"k{expected - 1:04d}"):
            public = client.public_key(name)
            verify_independently(public.raw, message, client.sign(name, message))

        after = client.stats()
        assert after.memlock.locked == limit
        assert after.memlock.headroom_bytes is not None and after.memlock.headroom_bytes == 0
        assert after.memlock.headroom_keys["ed25519"] == 0
        # the 32-byte class still has room on the page it already holds
        # (128 slots less the KEK, the import key and the row-MAC key)
        assert after.memlock.headroom_keys["x25519"] == 125
        assert after.keys_by_type["ed25519"] == expected

    # the CLI says the same in one line, with a non-zero status
    out = cli("keys", "create", "one-too-many", "--type", "ed25519", socket=vault.socket)
    assert out.returncode != 0
    assert b"memlock" in out.stderr and b"Traceback" not in out.stderr, out.stderr


@pytest.mark.memfd_secret
def test_memory_cgroup_figures_appear_in_stats(vaults: Vaults) -> None:
    from secretvault.clients import VaultClient

    memory = 256 << 20
    vault = vaults.start(extra=("--memory", str(memory)))
    vault.wait_serving()
    with VaultClient(vault.socket) as client:
        for i in range(3):
            client.create_key(f"k{i}", "ed25519")
        client.create_key("box", "x25519")
        stats = client.stats()
    assert stats.memcg is not None, stats
    memcg = stats.memcg
    assert memcg.version in (1, 2)
    assert memcg.limit == memory
    assert 0 < memcg.usage < memory
    # secret pages are charged to the memcg as page cache, mapped and unevictable
    secret = stats.pages_resident * PAGE
    assert secret >= 2 * PAGE
    assert memcg.unevictable >= secret, memcg
    assert memcg.file_mapped >= secret and memcg.file >= secret, memcg

    shown = cli("stats", "--json", socket=vault.socket)
    assert shown.returncode == 0, shown.stderr
    assert int(json.loads(shown.stdout)["memcg"]["limit"]) == memory


# --- the application's identity: what a container running as it may do ---------------


def _yaml() -> Any:
    return pytest.importorskip("yaml", reason="needs PyYAML (the project's test extras)")


APP_UID = 10002  # deploy/policy.toml: the application's socket is group 10002

#: Run inside a container as the application, with the client library of the
#: image: every call it should be refused and the one it should be allowed,
#: through its own socket ($SECRETVAULT_SOCKET); then a plain connect(2) to
#: the vault's own socket (argv[1]), which the kernel must refuse.  Prints the
#: outcomes as JSON: "OK", the error's gRPC status, or the errno name.
APP_PROBE = r"""
import errno, json, os, socket, sys
from secretvault.clients import VaultClient
from secretvault.api.errors import VaultError

out = {"uid": os.getuid(), "socket": os.environ["SECRETVAULT_SOCKET"]}

def attempt(what, call):
    try:
        call()
        out[what] = "OK"
    except VaultError as e:
        out[what] = e.status

with VaultClient(os.environ["SECRETVAULT_SOCKET"]) as c:
    attempt("sign app/signer", lambda: c.sign("app/signer", b"app"))
    attempt("create_key app/new", lambda: c.create_key("app/new", "ed25519"))
    attempt("delete_key app/signer", lambda: c.delete_key("app/signer"))
    attempt("rotate_key app/signer", lambda: c.rotate_key("app/signer"))
    attempt("sign ops/signer", lambda: c.sign("ops/signer", b"app"))
    attempt("get_public_key ops/signer", lambda: c.public_key("ops/signer"))
    attempt("get_stats", c.stats)
    out["list_keys"] = [k.name for k in c.list_keys()]
probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    probe.connect(sys.argv[1])
    out["owner socket"] = "connected"
except OSError as e:
    out["owner socket"] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(out))
"""

#: what APP_PROBE must see: the app's own key works, key management and keys
#: outside app/* are refused by the policy, the owner socket by the kernel
APP_EXPECTED = {
    "uid": APP_UID,
    "sign app/signer": "OK",
    "create_key app/new": "PERMISSION_DENIED",
    "delete_key app/signer": "PERMISSION_DENIED",
    "rotate_key app/signer": "PERMISSION_DENIED",
    "sign ops/signer": "PERMISSION_DENIED",
    "get_public_key ops/signer": "PERMISSION_DENIED",
    "get_stats": "PERMISSION_DENIED",
    "list_keys": ["app/signer"],  # only the names its list_keys patterns match
    "owner socket": "EACCES",
}

#: the operator's keys, created through the owner socket inside the vault's
#: container: one the application may use, one it may not
OPERATOR_CREATES = (
    "secretvault keys create app/signer --type ed25519"
    " && secretvault keys create ops/signer --type ed25519"
)


def check_app_probe(output: str, app_socket: str, owner_socket: str = "EACCES") -> None:
    # the last JSON line: podman-compose adds lines of its own around it
    (*_, line) = [ln for ln in output.splitlines() if ln.startswith("{")]
    seen = json.loads(line)
    assert seen.pop("socket") == app_socket, seen
    assert seen == {**APP_EXPECTED, "owner socket": owner_socket}


def test_container_policies_agree() -> None:
    """compose.yaml mounts deploy/policy.toml; the Kubernetes ConfigMap
    carries its own copy: they must grant the same."""
    from secretvault.vault.policy import Policy

    yaml = _yaml()
    docs = yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "secretvault.yaml").read_text())
    (configmap,) = [d for d in docs if d and d["kind"] == "ConfigMap"]
    in_kube = Policy.from_dict(tomllib.loads(configmap["data"]["policy.toml"]))
    in_compose = Policy.load(str(REPO / "deploy" / "policy.toml"))
    assert in_kube.identities == in_compose.identities
    (app,) = in_compose.identities.values()
    (listener,) = app.sockets
    assert (listener.group, listener.mode) == (APP_UID, 0o660)
    assert not any(in_compose.allows(app.name, op, "app/x")
                   for op in ("create_key", "import_key", "rotate_key", "delete_key",
                              "delete_key_version", "set_min_decryption_version", "get_key"))


# --- the Kubernetes manifests, played by podman ---------------------------------------


#: kubelet makes an emptyDir mode 0777 and, with fsGroup, gives it that group
#: and the setgid bit (so what is created in it inherits the group)
EMPTYDIR_MODE = 0o2777


def statefulset_as_pod(
    manifest: dict[str, Any], secret: dict[str, Any], configmaps: list[dict[str, Any]], *,
    pod: str, image: str, claim: str, unseal_dir: Path, empty_dirs: Path,
) -> list[dict[str, Any]]:
    """The StatefulSet's pod as podman 4.3's ``kube play`` can run it.

    Every translation is for a podman limitation, none changes what the pod
    does: podman plays Pods, not StatefulSets (the volumeClaimTemplate
    becomes a claim of its own); its secret volumes crash on 4.3 (nil
    secrets manager), so the Secret's files are written to a host directory;
    it ignores ``securityContext.seccompProfile``, so the same Localhost
    profile is named through the older pod annotation; its emptyDir is a
    volume chowned to the pod's user, mode 0755, where kubelet's is
    world-writable (and setgid to the fsGroup), so each emptyDir becomes a
    host directory made the way kubelet makes it, under ``empty_dirs``.
    The ConfigMaps are played along with the pod, as podman supports them.
    """
    template = manifest["spec"]["template"]
    spec = json.loads(json.dumps(template["spec"]))
    for container in spec["containers"]:
        container["image"] = image
    seccomp = spec["securityContext"]["seccompProfile"]
    assert seccomp["type"] == "Localhost"
    fs_group = spec["securityContext"].get("fsGroup")
    for volume in spec["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["secretName"] == secret["metadata"]["name"]
            for name, value in secret["stringData"].items():
                path = unseal_dir / name
                path.write_text(value)
                os.chown(path, IMAGE_UID, IMAGE_UID)
                path.chmod(0o400)
            del volume["secret"]
            volume["hostPath"] = {"path": str(unseal_dir), "type": "Directory"}
        elif "emptyDir" in volume:
            path = empty_dirs / volume["name"]
            path.mkdir(parents=True)
            if fs_group is not None:
                os.chown(path, 0, fs_group)
            path.chmod(EMPTYDIR_MODE if fs_group is not None else 0o777)
            del volume["emptyDir"]
            volume["hostPath"] = {"path": str(path), "type": "Directory"}
    (template_claim,) = manifest["spec"]["volumeClaimTemplates"]
    spec["volumes"].append(
        {"name": template_claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}}
    )
    return [
        # without the namespace, like the Pod below
        *[{"apiVersion": c["apiVersion"], "kind": c["kind"],
           "metadata": {"name": c["metadata"]["name"]}, "data": c["data"]}
          for c in configmaps],
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": claim}, "spec": template_claim["spec"]},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {
             "name": pod, "labels": template["metadata"]["labels"],
             # podman reads one path component after "localhost/", under
             # --seccomp-profile-root (the test passes the profile's directory)
             "annotations": {"seccomp.security.alpha.kubernetes.io/pod":
                             "localhost/" + Path(seccomp["localhostProfile"]).name},
         },
         "spec": spec},
    ]


def _mode(path: Path) -> tuple[str, int, int]:
    st = os.lstat(path)
    return f"{stat.S_IMODE(st.st_mode):04o}", st.st_uid, st.st_gid


@pytest.mark.memfd_secret
def test_kubernetes_statefulset_runs_with_least_privilege_sidecar(
    vaults: Vaults, image_build: Build
) -> None:
    """The StatefulSet's pod under ``podman kube play``: non-root, no
    capabilities, read-only root, the Localhost seccomp profile, unsealed
    from the Secret's passphrase, the policy from the ConfigMap; the exec
    probe (gRPC health) passes.  The operator creates keys through the owner
    socket inside the vault container; the sidecar, as uid 10002 on the app
    socket in the emptyDir, signs with an app/* key and is refused key
    management, keys outside app/* and the owner socket.  A new pod on the
    same claim has the key."""
    yaml = _yaml()
    kube = REPO / "deploy" / "kubernetes"
    docs = [d for d in yaml.safe_load_all((kube / "secretvault.yaml").read_text()) if d]
    (manifest,) = [d for d in docs if d["kind"] == "StatefulSet"]
    configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert len(docs) == 1 + len(configmaps), [d["kind"] for d in docs]
    secret = yaml.safe_load((kube / "unseal-secret.yaml").read_text())
    containers = {c["name"]: c for c in manifest["spec"]["template"]["spec"]["containers"]}
    app_socket = {e["name"]: e["value"] for e in containers["client"]["env"]}[
        "SECRETVAULT_SOCKET"]
    sock = {e["name"]: e["value"] for e in containers["vault"]["env"]}["SECRETVAULT_SOCKET"]
    assert (sock, app_socket) == ("/run/secretvault-owner/vault/secretvault.sock",
                                  "/run/secretvault/app/vault.sock")

    root = Path(tempfile.mkdtemp(prefix="kube-", dir=vaults.tmp))
    profiles = root / "seccomp"
    localhost = manifest["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]
    target = profiles / localhost["localhostProfile"]
    target.parent.mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "seccomp.json", target)
    unseal = root / "unseal"
    unseal.mkdir()
    os.chown(unseal, IMAGE_UID, IMAGE_UID)

    pod = f"svtest-kube-{uuid.uuid4().hex[:8]}"
    claim = f"{pod}-data"
    first, later = root / "first.yaml", root / "later.yaml"
    # each pod gets new emptyDirs, as a new pod does
    *cms, claim_doc, pod_doc = statefulset_as_pod(
        manifest, secret, configmaps, pod=pod, image=image_build.image, claim=claim,
        unseal_dir=unseal, empty_dirs=root / "pod1")
    first.write_text(yaml.safe_dump_all([*cms, claim_doc, pod_doc]))
    *cms, _, pod_doc = statefulset_as_pod(
        manifest, secret, configmaps, pod=pod, image=image_build.image, claim=claim,
        unseal_dir=unseal, empty_dirs=root / "pod2")
    later.write_text(yaml.safe_dump_all([*cms, pod_doc]))  # the claim exists by then

    def start(play: Path) -> None:
        podman("kube", "play", "--seccomp-profile-root", str(target.parent), str(play),
               timeout=180)

    def stop() -> None:
        podman("pod", "rm", "-f", "-t", "5", pod, check=False, timeout=120)

    vault, sidecar = f"{pod}-vault", f"{pod}-client"

    def wait_healthy() -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            probe = podman("healthcheck", "run", vault, check=False)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                logs = podman("logs", vault, check=False)
                raise AssertionError(f"exec probe failing: {probe.stderr}\n{logs.stderr}")
            time.sleep(0.5)

    def sidecar_signs() -> bytes:
        return subprocess.run(
            ["podman", "exec", "-i", sidecar, "secretvault", "sign", "app/signer", "--json"],
            input=b"from the sidecar", capture_output=True, timeout=60, check=True,
        ).stdout

    try:
        start(first)
        wait_healthy()
        status = podman("exec", vault, "sh", "-c",
                        "id -u; grep -E '^(CapEff|Seccomp):' /proc/1/status; "
                        "touch /probe 2>/dev/null && echo writable || echo read-only").stdout
        assert status.split() == [str(IMAGE_UID), "CapEff:", "0000000000000000",
                                  "Seccomp:", "2", "read-only"], status
        logs = podman("logs", vault).stderr + podman("logs", vault).stdout
        assert "memfd_secret" in logs and "unseal key   created" not in logs, logs

        # the sockets in the (kubelet-made, world-writable) emptyDirs: the
        # owner's for the vault's uid only, in one the sidecar does not mount
        # (in the shared one it could swap the owner's directory for its
        # own), the app's for group 10002
        owner = root / "pod1" / "owner-socket"
        assert _mode(owner / "vault") == ("0700", IMAGE_UID, IMAGE_UID)
        assert _mode(owner / "vault" / "secretvault.sock") == ("0600", IMAGE_UID, IMAGE_UID)
        run = root / "pod1" / "socket"
        assert not (run / "vault").exists()
        assert _mode(run / "app") == ("0710", IMAGE_UID, APP_UID)
        assert _mode(run / "app" / "vault.sock") == ("0660", IMAGE_UID, APP_UID)

        # the operator, inside the vault container, on the owner socket
        made = podman("exec", vault, "sh", "-c", OPERATOR_CREATES)
        assert "created ed25519 key 'app/signer'" in made.stdout, made.stdout
        stats = json.loads(podman("exec", vault, "secretvault", "stats", "--json").stdout)
        assert stats["protection"] == "secretmem"
        assert int(stats["memcg"]["limit"]) == 512 << 20  # limits.memory: 512Mi

        # the application: its key works through the app socket, nothing else
        public = podman("exec", sidecar, "secretvault", "keys", "public", "app/signer",
                        "--format", "pem").stdout
        token = json.loads(sidecar_signs())["signature"]
        check_app_probe(
            podman("exec", sidecar, "python", "-c", APP_PROBE, sock).stdout, app_socket,
            owner_socket="ENOENT")  # not even mounted in the sidecar
        denied = podman("exec", sidecar, "secretvault", "keys", "delete", "app/signer",
                        check=False)
        assert denied.returncode != 0, denied.stdout
        assert "identity 'app' may not delete_key on key 'app/signer'" in denied.stderr, \
            denied.stderr
        # nothing the application tried changed the keyring
        listed = podman("exec", vault, "secretvault", "keys", "list").stdout
        assert "app/signer" in listed and "ops/signer" in listed, listed
        assert "app/new" not in listed, listed

        stop()  # the pod goes; the claim stays, as a StatefulSet's PVC does
        start(later)
        wait_healthy()
        assert json.loads(sidecar_signs())["signature"] == token  # Ed25519 is deterministic
        assert podman("exec", sidecar, "secretvault", "keys", "public", "app/signer",
                      "--format", "pem").stdout == public
    finally:
        stop()
        for _ in range(10):  # the pod's containers may still hold it for a moment
            if podman("volume", "rm", "-f", claim, check=False).returncode == 0:
                break
            time.sleep(1)


# --- compose, played by podman-compose ---------------------------------------------


@pytest.mark.memfd_secret
@pytest.mark.skipif(
    shutil.which("podman-compose") is None,
    reason="needs podman-compose (installed by scripts/install-container-deps)",
)
def test_compose_runs_vault_with_limits_and_client_on_socket_volume(
    vaults: Vaults, image_build: Build
) -> None:
    """deploy/compose.yaml as written: seccomp profile, read-only root, no
    published port, memlock 8 MiB and memory 512m, the passphrase from a compose
    secret, the policy from deploy/policy.toml, and the client service as the
    application (uid 10002) on the named socket volume: it may use app/* keys
    and nothing else."""
    yaml = _yaml()
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    service = compose["services"]["vault"]
    memlock = service["ulimits"]["memlock"]["soft"]

    project = f"svtest{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="compose-", dir=vaults.tmp))
    for name in ("compose.yaml", "seccomp.json", "policy.toml"):
        shutil.copy(REPO / "deploy" / name, work / name)
    secret = work / "unseal-passphrase"
    secret.write_text("a compose test passphrase")
    os.chown(secret, IMAGE_UID, IMAGE_UID)
    secret.chmod(0o400)
    env = dict(os.environ, SECRETVAULT_IMAGE=image_build.image)

    def compose_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman-compose", "-p", project, *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=180, check=False)

    vault, client = f"{project}_vault_1", f"{project}_client_1"
    try:
        up = compose_cmd("up", "-d", "vault")
        assert up.returncode == 0, up.stdout + up.stderr
        deadline = time.monotonic() + START_TIMEOUT_S
        while podman("healthcheck", "run", vault, check=False).returncode != 0:
            assert time.monotonic() < deadline, podman("logs", vault, check=False).stderr
            time.sleep(0.5)
        logs = podman("logs", vault).stderr + podman("logs", vault).stdout
        assert "unseal key   created" not in logs, logs  # the compose secret unsealed it

        # the operator, inside the vault's container, on the owner socket
        made = podman("exec", vault, "sh", "-c", OPERATOR_CREATES)
        assert "created ed25519 key 'app/signer'" in made.stdout, made.stdout

        # the client service, through the named socket volume: it lists only
        # the keys it may use
        up = compose_cmd("up", "-d", "client")
        assert up.returncode == 0, up.stdout + up.stderr
        code = podman("wait", client).stdout.strip()
        shown = podman("logs", client, check=False)
        assert code == "0", shown.stdout + shown.stderr
        assert "app/signer" in shown.stdout and "ops/" not in shown.stdout, shown.stdout
        # and, with the client service's user, volumes and environment, may
        # do nothing else
        app_socket = compose["services"]["client"]["environment"]["SECRETVAULT_SOCKET"]
        owner_socket = next(a.split("=", 1)[1] for a in service["command"]
                            if a.startswith("--socket="))
        probed = compose_cmd("run", "--rm", "-T", "--no-deps",
                             "--entrypoint", "/opt/secretvault/bin/python",
                             "client", "-c", APP_PROBE, owner_socket)
        assert probed.returncode == 0, probed.stdout + probed.stderr
        check_app_probe(probed.stdout, app_socket)

        stats = json.loads(podman("exec", vault, "secretvault", "stats", "--json").stdout)
        assert int(stats["memlock"]["soft"]) == memlock
        # two pages are the vault's own (see the memlock test); two keys exist
        assert int(stats["memlock"]["headroom_keys"]["ed25519"]) == 64 * (memlock // PAGE - 2) - 2
        assert int(stats["memcg"]["limit"]) == 512 << 20
        inspect = json.loads(podman("inspect", vault).stdout)[0]
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        assert not inspect["HostConfig"].get("PortBindings")
        # the uid alone: the engine adds the image's group 10002 (see compose.yaml)
        assert inspect["Config"]["User"] == str(IMAGE_UID)
        assert json.loads(podman("inspect", client).stdout)[0]["Config"]["User"] == \
            f"{APP_UID}:{APP_UID}"
    finally:
        # rm -v first: the client's anonymous volume (the image's VOLUME it
        # does not mount) outlives podman-compose's down otherwise
        podman("rm", "-f", "-v", "-t", "5", vault, client, check=False)
        compose_cmd("down", "-v", "-t", "5")
        podman("volume", "rm", "-f", f"{project}_vault-data", f"{project}_vault-socket",
               check=False)
        podman("network", "rm", "-f", f"{project}_default", check=False)
