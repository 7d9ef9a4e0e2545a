"""Replicas over PostgreSQL in containers, tested with podman (issue 12, point 6).

* ``deploy/compose.yaml``'s ``replicated`` profile under podman-compose:
  the PostgreSQL image of ``scripts/build-image postgres`` and two vault
  replicas, each on its own socket volume, unsealed by the same passphrase,
  PostgreSQL's password only in secret files;
* ``deploy/kubernetes/replicated.yaml``'s three-replica Deployment over
  ``postgres.yaml``'s PostgreSQL, under ``podman kube play``.

In both, a key created through one replica signs through every other within
the feed's lag bound (polled, the lag printed), and a replica killed with
SIGKILL, with changes made while it is down (a rotation, a create, a
delete), serves exactly the new state once started again; a change made
through it then reaches the others.  The clients are the real client library
on the host, on each replica's owner socket.

In Kubernetes PostgreSQL then becomes unreachable: the replicas keep signing
and their probes stay green (KeyService alone is NOT_SERVING; a change is
UNAVAILABLE); once it is back a change reaches every replica.  PostgreSQL
counts two sessions per replica (the store's and the feed's
LISTEN: the figure deploy/README.md gives), refuses a wrong password and
plain-text TCP.  And the image holds every dependency of the project
(psycopg among them) however warm the build's wheel cache is.

Skipped, naming what is missing, without podman, runc or root (``conftest.py``),
podman-compose or container name resolution (the compose test), iptables or
nsenter (the Kubernetes test's outage).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.container._podman import (
    IMAGE_UID,
    PG_UID,
    REPO,
    START_TIMEOUT_S,
    Build,
    healthcheck,
    podman,
    ulimit_args,
    verify_independently,
)

pytestmark = [pytest.mark.container, pytest.mark.memfd_secret]

KUBE = REPO / "deploy" / "kubernetes"
MESSAGE = b"signed by one replica, checked through another"
#: how long a change acknowledged by one replica may take to be served by
#: another here: the feed's bound is 1 s (README, "Replicas"); the poll allows
#: more for a loaded 2-core CI machine running several containers, and the
#: lag seen is printed
LAG_POLL_S = 5.0
#: a replica's start: PostgreSQL may still be initialising, the passphrase's KDF
REPLICA_START_S = 120.0
#: restarts after which a replica is taken to be failing, not waiting for
#: PostgreSQL (it starts again at once, and stops within a second)
CRASH_LOOP_RESTARTS = 30

#: PostgreSQL sessions each vault process holds: the store's and the feed's
#: LISTEN (deploy/README.md, "What the vault needs from PostgreSQL")
SESSIONS_PER_REPLICA = 2

T = TypeVar("T")


def worker_pids(socket: str, connections: int, sign: str | None = None) -> set[int]:
    """The pids that ``connections`` connections to ``socket`` reach (GetStats on
    each, a connection of its own per channel), each signing with ``sign`` first."""
    import grpc

    from secretvault.api._proto.secretvault.v1 import (
        crypto_pb2,
        crypto_pb2_grpc,
        stats_pb2,
        stats_pb2_grpc,
    )

    pids = set()
    channels = [grpc.insecure_channel(f"unix:{socket}",
                                      options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    try:
        for ch in channels:
            if sign is not None:
                crypto_pb2_grpc.CryptoServiceStub(ch).Sign(
                    crypto_pb2.SignRequest(key=sign, message=MESSAGE), timeout=30)
            pids.add(stats_pb2_grpc.StatsServiceStub(ch).GetStats(
                stats_pb2.GetStatsRequest(), timeout=30).pid)
    finally:
        for ch in channels:
            ch.close()
    return pids


def vault_sessions(pg_container: str) -> int:
    """The vault role's sessions, counted by PostgreSQL (the superuser, over
    the container's local socket)."""
    out = podman("exec", pg_container, "psql", "-X", "-At", "-h", "/run/postgresql",
                 "-U", "postgres", "-d", "postgres", "-c",
                 "SELECT count(*) FROM pg_stat_activity WHERE usename = 'secretvault'").stdout
    return int(out.strip())


def _yaml() -> Any:
    return pytest.importorskip("yaml", reason="needs PyYAML (the project's test extras)")


# --- what both deployments must show ------------------------------------------------


@dataclass
class Replica:
    """One vault replica, reached from the host on its owner socket."""

    name: str
    container: str
    socket: str

    def kill(self) -> None:
        podman("kill", "--signal", "KILL", self.container)

    def start(self) -> None:
        podman("start", self.container)

    def logs(self) -> str:
        proc = podman("logs", self.container, check=False)
        return proc.stdout + proc.stderr

    def wait_serving(self, timeout: float = REPLICA_START_S) -> None:
        """Until gRPC health says SERVING; a replica that keeps exiting (the
        engine restarts it) fails at once, with its log."""
        deadline = time.monotonic() + timeout
        why = "no socket yet"
        while time.monotonic() < deadline:
            restarts = int(podman("inspect", "--format", "{{.RestartCount}}",
                                  self.container).stdout.strip() or 0)
            if restarts > CRASH_LOOP_RESTARTS:
                raise AssertionError(f"{self.name} restarted {restarts} times:\n{self.logs()}")
            if os.path.exists(self.socket):
                ok, why = healthcheck.check(self.socket)
                if ok:
                    return
            time.sleep(0.25)
        raise AssertionError(f"{self.name} not serving after {timeout}s ({why}):\n{self.logs()}")


def poll(what: str, attempt: Callable[[], T | None], since: float) -> tuple[T, float]:
    """``attempt()`` until it returns a value (not None, no NotFound), within
    LAG_POLL_S; returns the value and the seconds since ``since``."""
    from secretvault.api.errors import NotFound

    deadline = time.monotonic() + LAG_POLL_S
    seen = "nothing yet"
    while True:
        try:
            value = attempt()
        except NotFound as e:
            value, seen = None, f"{e.status}: {e}"
        if value is not None:
            return value, time.monotonic() - since
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not served after {LAG_POLL_S}s (last: {seen})")
        time.sleep(0.02)


def poll_each(what: str, attempts: dict[str, Callable[[], T | None]],
              since: float) -> dict[str, tuple[T, float]]:
    """:func:`poll` on several replicas at once, in turn, so each one's lag is
    its own (not the sum of those polled before it)."""
    from secretvault.api.errors import NotFound

    deadline = time.monotonic() + LAG_POLL_S
    done: dict[str, tuple[T, float]] = {}
    seen: dict[str, str] = {}
    while len(done) < len(attempts):
        for name, attempt in attempts.items():
            if name in done:
                continue
            try:
                value = attempt()
            except NotFound as e:
                value, seen[name] = None, f"{e.status}: {e}"
            if value is not None:
                done[name] = (value, time.monotonic() - since)
        if len(done) < len(attempts):
            if time.monotonic() > deadline:
                late = sorted(set(attempts) - set(done))
                raise AssertionError(f"{what}: not served by {late} after {LAG_POLL_S}s "
                                     f"(last: {seen})")
            time.sleep(0.02)
    return done


def check_replication(replicas: list[Replica]) -> dict[str, float]:
    """A key made through the first replica signs through every other; one of
    them killed, changes made meanwhile, started again: it serves them, and a
    change made through it reaches the first.  Returns the lags seen (s)."""
    from secretvault.api.errors import KeyNotFound
    from secretvault.clients import VaultClient

    first, victim, *rest = replicas
    lags: dict[str, float] = {}
    clients = {r.name: VaultClient(r.socket) for r in replicas}
    try:
        c1 = clients[first.name]
        c1.create_key("app/signer", "ed25519")
        acked = time.monotonic()
        token = c1.sign("app/signer", MESSAGE)
        public = c1.public_key("app/signer").raw
        verify_independently(public, MESSAGE, token)
        served = poll_each("app/signer", {
            r.name: (lambda c=clients[r.name]: c.sign("app/signer", MESSAGE))
            for r in (victim, *rest)}, acked)
        for name, (got, lag) in served.items():
            # Ed25519 is deterministic: the same token means the same key and version
            assert got == token, name
            lags[f"create {first.name} -> {name}"] = lag
        c1.create_key("app/doomed", "x25519")
        acked = time.monotonic()
        poll("app/doomed on the victim",
             lambda: clients[victim.name].public_key("app/doomed"), acked)

        # the victim goes (SIGKILL); changes are made while it is down
        clients.pop(victim.name).close()
        victim.kill()
        rotated = c1.rotate_key("app/signer")
        assert rotated.primary_version == 2
        token2 = c1.sign("app/signer", MESSAGE)
        c1.create_key("app/while-down", "ed25519")
        c1.delete_key("app/doomed")
        changed = time.monotonic()

        # replicas that stayed up follow at once
        followed = poll_each("app/signer v2", {
            r.name: (lambda c=clients[r.name]: True if c.sign("app/signer", MESSAGE) == token2
                     else None)
            for r in rest}, changed)
        lags.update({f"rotate {first.name} -> {n}": lag for n, (_, lag) in followed.items()})
        for r in rest:
            c = clients[r.name]

            def gone(c: VaultClient = c) -> bool | None:
                try:
                    c.public_key("app/doomed")
                except KeyNotFound:
                    return True
                return None

            poll(f"app/doomed deleted on {r.name}", gone, changed)

        # the victim starts again and serves exactly the new state
        victim.start()
        victim.wait_serving()
        with VaultClient(victim.socket) as c:
            assert c.sign("app/signer", MESSAGE) == token2
            assert c.get_key("app/signer").primary_version == 2
            assert c.public_key("app/while-down").raw
            with pytest.raises(KeyNotFound):
                c.public_key("app/doomed")
            assert sorted(k.name for k in c.list_keys()) == ["app/signer", "app/while-down"]
            # and what it acknowledges reaches the others
            c.create_key("app/from-restarted", "ed25519")
            acked = time.monotonic()
        reached = poll_each("app/from-restarted", {
            r.name: (lambda c=clients[r.name]: c.public_key("app/from-restarted"))
            for r in (first, *rest)}, acked)
        lags.update({f"create {victim.name} (restarted) -> {n}": lag
                     for n, (_, lag) in reached.items()})
    finally:
        for c in clients.values():
            c.close()
    for what, seconds in lags.items():
        print(f"lag {what}: {seconds * 1000:.0f} ms")
    return lags


KEY_SERVICE = "secretvault.v1.KeyService"
#: the replicas' reconnection once PostgreSQL is reachable (they retry every 0.5 s)
STORE_BACK_S = 30.0


def check_outage(replicas: list[Replica], pg_container: str, probed: list[str]) -> None:
    """PostgreSQL becomes unreachable (a partition: the vault's sessions are
    cut and its port rejects connections): every replica goes on signing from
    secret memory, the probes (the server as a whole, the image's health
    check that Kubernetes execs) stay green, so nothing is restarted, while
    KeyService says NOT_SERVING and a change fails UNAVAILABLE naming the
    store.  It is reachable again: a change made through one replica reaches
    every other, and the one refused during the outage exists nowhere.

    (Not ``podman stop``: podman stops a played pod with its last container
    and gives it a new address at start, where Kubernetes keeps the pod's.)"""
    from secretvault.api.errors import KeyExists, KeyNotFound, Unavailable
    from secretvault.clients import VaultClient

    pod = podman("inspect", "--format", "{{.Pod}}", pg_container).stdout.strip()
    infra = json.loads(podman("pod", "inspect", pod).stdout)["InfraContainerID"]
    pid = podman("inspect", "--format", "{{.State.Pid}}", infra).stdout.strip()
    netns = f"/proc/{pid}/ns/net"  # the pod's network namespace: its address stays
    rule = ["INPUT", "-p", "tcp", "--dport", "5432", "-j", "REJECT", "--reject-with", "tcp-reset"]
    subprocess.run(["nsenter", f"--net={netns}", "iptables", "-I", *rule], check=True)
    cut = podman("exec", pg_container, "psql", "-X", "-At", "-h", "/run/postgresql", "-U",
                 "postgres", "-d", "postgres", "-c", "SELECT count(pg_terminate_backend(pid)) "
                 "FROM pg_stat_activity WHERE usename = 'secretvault'").stdout
    assert int(cut) == SESSIONS_PER_REPLICA * len(replicas), cut
    tokens = set()
    for r in replicas:
        poll(f"{r.name} noticing the outage",
                    lambda r=r: True if not healthcheck.check(r.socket, KEY_SERVICE)[0] else None,
                    time.monotonic())
        assert healthcheck.check(r.socket)[0], r.name
        with VaultClient(r.socket) as c:
            tokens.add(c.sign("app/signer", MESSAGE))
    assert len(tokens) == 1, "the replicas sign with different keys"
    for container in probed:
        probe = podman("healthcheck", "run", container, check=False)
        assert probe.returncode == 0, probe.stdout + probe.stderr
    # StoreUnavailable; or, when the store's session broke under the call,
    # the client's OutcomeUnknown around it: both UNAVAILABLE, naming the store
    with VaultClient(replicas[0].socket) as c, pytest.raises(Unavailable) as refused:
        c.create_key("app/during-outage", "ed25519")
    assert "postgresql://secretvault@" in str(refused.value), refused.value

    subprocess.run(["nsenter", f"--net={netns}", "iptables", "-D", *rule], check=True)
    last, made = replicas[-1], None
    deadline = time.monotonic() + STORE_BACK_S
    with VaultClient(last.socket) as c:
        while made is None:
            try:
                c.create_key("app/after-outage", "ed25519")
                made = time.monotonic()
            except KeyExists:  # an earlier try committed as the connection broke
                made = time.monotonic()
            except Unavailable as e:
                assert time.monotonic() < deadline, (
                    f"the store is not back after {STORE_BACK_S}s: {e}")
                time.sleep(0.25)
    clients = {r.name: VaultClient(r.socket) for r in replicas}
    try:
        reached = poll_each("app/after-outage", {
            name: (lambda c=c: c.public_key("app/after-outage")) for name, c in clients.items()
            if name != last.name}, made)
        for name, (_, lag) in reached.items():
            print(f"lag create {last.name} -> {name} after the outage: {lag * 1000:.0f} ms")
        for c in clients.values():
            with pytest.raises(KeyNotFound):
                c.public_key("app/during-outage")
    finally:
        for c in clients.values():
            c.close()
    for r in replicas:
        ok, why = healthcheck.check(r.socket, KEY_SERVICE)
        assert ok, why


# --- compose, profile `replicated`, under podman-compose --------------------------------


def _secret_file(path: Path, text: str, uid: int) -> None:
    """As compose bind-mounts a secret file: as it is, so owned by its reader."""
    path.write_text(text)
    os.chown(path, uid, uid)
    path.chmod(0o400)


def _name_resolution_missing() -> str | None:
    """Why containers on a compose network could not find each other by
    service name here (the replicas reach PostgreSQL as ``postgres``), or None."""
    backend = podman("info", "--format", "{{.Host.NetworkBackend}}", check=False).stdout.strip()
    if backend == "netavark":
        return None if Path("/usr/libexec/podman/aardvark-dns").exists() else \
            "podman's netavark backend without aardvark-dns"
    if not any(Path(d, "dnsname").exists() for d in ("/usr/lib/cni", "/opt/cni/bin")):
        return ("the CNI dnsname plugin is missing (package "
                "golang-github-containernetworking-plugin-dnsname; "
                "run scripts/install-container-deps)")
    return None


@pytest.mark.skipif(
    shutil.which("podman-compose") is None,
    reason="needs podman-compose (installed by scripts/install-container-deps)",
)
def test_compose_replicated_profile_serves_each_others_changes(
    image_build: Build, pg_image_build: Build
) -> None:
    why = _name_resolution_missing()
    if why is not None:
        pytest.skip(f"the replicas find PostgreSQL by its service name: {why}")
    yaml = _yaml()
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    replicas = ["replica-1", "replica-2"]
    profiled = {n for n, s in services.items() if "replicated" in s.get("profiles", [])}
    assert profiled == {"postgres", *replicas}, profiled
    # each replica on its own socket volume, the same passphrase, the store
    # PostgreSQL's, and no password on any command line or in the environment
    sockets = {n: next(v.split(":")[0] for v in services[n]["volumes"]
                       if v.endswith(":/run/secretvault")) for n in replicas}
    assert len(set(sockets.values())) == len(replicas), sockets
    #: vault processes per replica: replica-2 is `serve --workers 2`
    processes = {n: int(next((a.split("=", 1)[1] for a in services[n]["command"]
                              if a.startswith("--workers=")), "1")) for n in replicas}
    assert processes == {"replica-1": 1, "replica-2": 2}, processes
    for n in replicas:
        service = services[n]
        assert set(service["secrets"]) == {"unseal_passphrase", "pg_passfile"}, n
        (store,) = [a.split("=", 1)[1] for a in service["command"] if a.startswith("--store=")]
        assert store.startswith("postgresql://secretvault@postgres:5432/"), store
        assert service["environment"] == {"PGPASSFILE": "/run/secrets/pg_passfile"}
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == \
        "/run/secrets/pg_password"

    project = f"svrep{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="compose-rep-", dir="/tmp"))
    for name in ("compose.yaml", "seccomp.json", "policy.toml"):
        shutil.copy(REPO / "deploy" / name, work / name)
    password = uuid.uuid4().hex
    _secret_file(work / "unseal-passphrase", "a replicated compose passphrase", IMAGE_UID)
    _secret_file(work / "pg-password", password + "\n", PG_UID)
    _secret_file(work / "pg-passfile", f"*:*:secretvault:secretvault:{password}\n", IMAGE_UID)
    env = dict(os.environ, SECRETVAULT_IMAGE=image_build.image,
               SECRETVAULT_PG_IMAGE=pg_image_build.image)

    def compose_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman-compose", "-p", project, *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=180, check=False)

    containers = {n: f"{project}_{n}_1" for n in ("postgres", *replicas)}

    def volume_path(volume: str) -> Path:
        return Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}",
                           f"{project}_{volume}").stdout.strip())

    def replica(n: str) -> Replica:
        return Replica(n, containers[n], str(volume_path(sockets[n]) / "secretvault.sock"))

    try:
        up = compose_cmd("up", "-d", "postgres", *replicas)
        assert up.returncode == 0, up.stdout + up.stderr
        handles = [replica(n) for n in replicas]
        for r in handles:
            r.wait_serving()
        # the password is in no container's command line or environment
        for n in ("postgres", *replicas):
            inspect = json.loads(podman("inspect", containers[n]).stdout)[0]
            shown = json.dumps([inspect["Config"].get("Env"), inspect.get("Args"),
                                inspect["Config"].get("Cmd")])
            assert password not in shown, n
        seen = podman("exec", containers["replica-1"], "sh", "-c",
                      "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
        assert "secretvault serve" in seen and password not in seen, seen
        # replica-2's socket reaches both its workers: connections go to the one
        # holding fewer, so two connections reach two processes
        assert len(worker_pids(handles[1].socket, 4)) == 2
        check_replication(handles)
        assert vault_sessions(containers["postgres"]) == \
            SESSIONS_PER_REPLICA * sum(processes.values())
        # both of replica-2's workers serve what replica-1 made (each its own copy)
        assert len(worker_pids(handles[1].socket, 4, sign="app/signer")) == 2
        # PostgreSQL took the password from its file: a wrong one is refused
        # (so the replicas did authenticate with it)
        probe = podman("exec", containers["postgres"], "sh", "-c",
                       "PGPASSWORD=wrong psql -h 127.0.0.1 -U secretvault -d secretvault "
                       "-c 'select 1' 2>&1", check=False)
        assert "password authentication failed" in probe.stdout, probe.stdout
        # and plain-text TCP is refused whatever the password
        probe = podman("exec", containers["postgres"], "sh", "-c",
                       "PGPASSWORD=x psql 'host=127.0.0.1 sslmode=disable user=secretvault "
                       "dbname=secretvault' -c 'select 1' 2>&1", check=False)
        assert "no pg_hba.conf entry" in probe.stdout and "no encryption" in probe.stdout, \
            probe.stdout
    finally:
        podman("rm", "-f", "-v", "-t", "5", *containers.values(), check=False)
        compose_cmd("down", "-v", "-t", "5")
        volumes = ("pg-data", *sockets.values())
        podman("volume", "rm", "-f", *[f"{project}_{v}" for v in volumes], check=False)
        podman("network", "rm", "-f", f"{project}_default", check=False)
        shutil.rmtree(work, ignore_errors=True)


# --- Kubernetes: replicated.yaml over postgres.yaml, under podman kube play ----------------


#: kubelet makes an emptyDir mode 0777 and, with fsGroup, gives it that group
#: and the setgid bit
EMPTYDIR_MODE = 0o2777


@dataclass
class Play:
    """How one pod of a template is played here: host directories, a podman
    secret in place of a Kubernetes Secret for ``secretKeyRef``."""

    root: Path
    secrets: dict[str, dict[str, Any]]  # Kubernetes Secret name -> manifest
    podman_secrets: dict[str, str]  # Kubernetes Secret name -> podman secret name
    host_aliases: list[dict[str, Any]]


def template_as_pod(template: dict[str, Any], *, pod: str, image: str, play: Play,
                    claims: dict[str, str] | None = None) -> dict[str, Any]:
    """A Deployment's or StatefulSet's pod template as podman 4.3 plays it.

    Each translation is for a podman limitation and changes nothing the pod
    does: a Secret volume's files are written to a host directory as kubelet
    writes them (owned by root, group fsGroup, mode defaultMode | 0440), as
    podman 4.3's secret volumes crash; each emptyDir is a host directory
    made the way kubelet makes it (podman's is 0755, owned by the pod's
    user); ``secretKeyRef`` names a podman secret holding the Secret's data,
    which is what podman reads it from; the Localhost seccomp profile goes
    through the older pod annotation, which podman reads; ``ports`` go (podman
    would publish them on the host); a Service's name
    resolves through ``hostAliases`` (podman has no Services); a claim
    template becomes a claim of its own.
    """
    spec = json.loads(json.dumps(template["spec"]))
    fs_group = spec.get("securityContext", {}).get("fsGroup")
    for container in spec["containers"]:
        container["image"] = image
        # podman 4.3 publishes a containerPort on the host; Kubernetes never does
        container.pop("ports", None)
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                ref["name"] = play.podman_secrets[ref["name"]]
    for volume in spec["volumes"]:
        path = play.root / pod / volume["name"]
        if "secret" in volume:
            source = volume.pop("secret")
            secret = play.secrets[source["secretName"]]
            items = source.get("items") or [{"key": k, "path": k} for k in secret["stringData"]]
            mode = source.get("defaultMode", 0o644) | (0o440 if fs_group is not None else 0)
            path.mkdir(parents=True)
            for item in items:
                file = path / item["path"]
                file.write_text(secret["stringData"][item["key"]])
                os.chown(file, 0, fs_group if fs_group is not None else 0)
                file.chmod(mode)
            volume["hostPath"] = {"path": str(path), "type": "Directory"}
        elif "emptyDir" in volume:
            del volume["emptyDir"]
            path.mkdir(parents=True)
            if fs_group is not None:
                os.chown(path, 0, fs_group)
            path.chmod(EMPTYDIR_MODE if fs_group is not None else 0o777)
            volume["hostPath"] = {"path": str(path), "type": "Directory"}
    for name, claim in (claims or {}).items():
        spec["volumes"].append({"name": name, "persistentVolumeClaim": {"claimName": claim}})
    if play.host_aliases:
        spec["hostAliases"] = play.host_aliases
    annotations = {}
    seccomp = spec.get("securityContext", {}).get("seccompProfile", {})
    if seccomp.get("type") == "Localhost":
        annotations["seccomp.security.alpha.kubernetes.io/pod"] = \
            "localhost/" + Path(seccomp["localhostProfile"]).name
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "labels": template["metadata"]["labels"],
                         "annotations": annotations},
            "spec": spec}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in _yaml().safe_load_all(path.read_text()) if d]


def test_replicated_manifests_are_consistent() -> None:
    """The Deployment's three replicas use the Service, the role's Secret
    and the policy that postgres.yaml, postgres-secret.yaml and the other
    manifests define, and carry no password."""
    from secretvault.vault.policy import Policy

    docs = _docs(KUBE / "replicated.yaml")
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert deployment["spec"]["replicas"] == 3
    pods = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == pods["metadata"]["labels"]
    (service,) = [d for d in _docs(KUBE / "postgres.yaml") if d["kind"] == "Service"]
    (secret,) = _docs(KUBE / "postgres-secret.yaml")
    vault = {c["name"]: c for c in pods["spec"]["containers"]}["vault"]
    (store,) = [a.split("=", 1)[1] for a in vault["args"] if a.startswith("--store=")]
    assert store.startswith(f"postgresql://{secret['stringData']['username']}@"
                            f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/")
    assert "sslmode=" in store
    refs = [e["valueFrom"]["secretKeyRef"] for e in vault["env"] if "valueFrom" in e]
    assert refs == [{"name": secret["metadata"]["name"], "key": "password"}]
    # no claim: the replicas keep nothing but their process lock
    assert not any("persistentVolumeClaim" in v for v in pods["spec"]["volumes"])
    assert "volumeClaimTemplates" not in deployment["spec"]
    in_compose = Policy.load(str(REPO / "deploy" / "policy.toml"))
    assert Policy.from_dict(tomllib.loads(configmap["data"]["policy.toml"])).identities == \
        in_compose.identities


@pytest.fixture
def kube_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="kr-", dir="/tmp"))  # short: sockets have 108 bytes
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_kubernetes_three_replicas_over_postgres(
    image_build: Build, pg_image_build: Build, kube_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    absent = [tool for tool in ("iptables", "nsenter") if shutil.which(tool) is None]
    if absent:
        pytest.skip(f"the store outage needs {' and '.join(absent)} "
                    "(installed by scripts/install-container-deps)")
    yaml = _yaml()
    docs = _docs(KUBE / "replicated.yaml")
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    configmaps = [{"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": d["metadata"]["name"]}, "data": d["data"]}
                  for d in docs if d["kind"] == "ConfigMap"]
    pg_docs = _docs(KUBE / "postgres.yaml")
    (pg_set,) = [d for d in pg_docs if d["kind"] == "StatefulSet"]
    (pg_secret,) = _docs(KUBE / "postgres-secret.yaml")
    unseal_secret = yaml.safe_load((KUBE / "unseal-secret.yaml").read_text())
    run = uuid.uuid4().hex[:6]
    # the test's own password, as an operator replaces the placeholder
    pg_secret["stringData"]["password"] = f"pw-{uuid.uuid4().hex}"
    secrets = {s["metadata"]["name"]: s for s in (pg_secret, unseal_secret)}
    podman_secret = f"svtest-pgapp-{run}"
    play = Play(kube_root, secrets, {pg_secret["metadata"]["name"]: podman_secret}, [])
    profiles = kube_root / "seccomp"
    profiles.mkdir()
    shutil.copy(REPO / "deploy" / "seccomp.json", profiles / "secretvault.json")

    pg_pod = f"svtest-pg-{run}"
    claim = f"{pg_pod}-data"
    pods = [f"svtest-rep-{run}-{i}" for i in range(deployment["spec"]["replicas"])]
    assert len(pods) == 3

    def kube_play(name: str, manifests: list[dict[str, Any]]) -> None:
        path = kube_root / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(manifests))
        podman("kube", "play", "--seccomp-profile-root", str(profiles), str(path), timeout=180)

    try:
        # what podman reads secretKeyRef from: the Secret's data, by key, base64
        data = {k: base64.b64encode(v.encode()).decode()
                for k, v in pg_secret["stringData"].items()}
        subprocess.run(["podman", "secret", "create", podman_secret, "-"],
                       input=json.dumps(data), text=True, capture_output=True, check=True)

        # PostgreSQL: the StatefulSet's pod, its claim
        (template_claim,) = pg_set["spec"]["volumeClaimTemplates"]
        kube_play(pg_pod, [
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": claim}, "spec": template_claim["spec"]},
            template_as_pod(pg_set["spec"]["template"], pod=pg_pod, image=pg_image_build.image,
                            play=play, claims={template_claim["metadata"]["name"]: claim}),
        ])
        pg_container = f"{pg_pod}-postgres"
        deadline = time.monotonic() + START_TIMEOUT_S
        while podman("healthcheck", "run", pg_container, check=False).returncode != 0:
            assert time.monotonic() < deadline, podman("logs", pg_container, check=False).stderr
            time.sleep(0.5)
        infra = json.loads(podman("pod", "inspect", pg_pod).stdout)["InfraContainerID"]
        addresses = podman("inspect", "--format",
                           "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                           infra).stdout.split()
        assert addresses, "the PostgreSQL pod has no address"
        ip = addresses[0]
        (service,) = [d for d in pg_docs if d["kind"] == "Service"]
        play.host_aliases = [{"ip": ip, "hostnames": [service["metadata"]["name"]]}]

        # the Deployment's three pods
        for pod in pods:
            kube_play(pod, [*configmaps, template_as_pod(
                deployment["spec"]["template"], pod=pod, image=image_build.image, play=play)])
        owner_dirs = [kube_root / pod / "owner-socket" for pod in pods]
        # world-writable, as kubelet makes an emptyDir: only the pod reaches it
        monkeypatch.setenv("SECRETVAULT_TRUST_SOCKET_DIRS", ":".join(map(str, owner_dirs)))

        replicas = [Replica(f"pod {i}", f"{pod}-vault",
                            str(owner_dirs[i] / "vault" / "secretvault.sock"))
                    for i, pod in enumerate(pods)]
        for r in replicas:
            r.wait_serving()
        vault0 = f"{pods[0]}-vault"
        logs = podman("logs", vault0, check=False).stderr
        assert "unseal key   created" not in logs, logs  # the Secret's passphrase unsealed it
        assert pg_secret["stringData"]["password"] not in logs
        lags = check_replication(replicas)
        assert len(lags) == 2 + 1 + 2, lags
        assert vault_sessions(pg_container) == SESSIONS_PER_REPLICA * len(replicas)
        check_outage(replicas, pg_container, [f"{pod}-vault" for pod in pods])

        # and the application beside pod 2's vault signs, as uid 10002 on its
        # own socket, with the key made through pod 0
        signed = subprocess.run(
            ["podman", "exec", "-i", f"{pods[2]}-client", "secretvault", "sign", "app/signer",
             "--json"], input=MESSAGE, capture_output=True, timeout=60, check=True).stdout
        from secretvault.clients import VaultClient

        with VaultClient(replicas[0].socket) as c:
            token = c.sign("app/signer", MESSAGE)
        assert base64.b64decode(json.loads(signed)["signature"]) == token
    finally:
        for pod in (*pods, pg_pod):
            podman("pod", "rm", "-f", "-t", "5", pod, check=False, timeout=120)
        for _ in range(10):
            if podman("volume", "rm", "-f", claim, check=False).returncode == 0:
                break
            time.sleep(1)
        podman("secret", "rm", podman_secret, check=False)
        # podman plays a ConfigMap as a volume of its name
        podman("volume", "rm", "-f", *[c["metadata"]["name"] for c in configmaps], check=False)


def test_image_holds_every_dependency_of_the_project(image_build: Build) -> None:
    """Every requirement of pyproject.toml is installed in the image (the
    replicas need psycopg), and the build's wheel cache keeps no wheel of the
    project: pip took a cached one of the same name as "already downloaded"
    and resolved its old dependencies, so a new one (psycopg) was missing."""
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = sorted(Requirement(r).name for r in project["dependencies"])
    probe = ("import importlib.metadata as m, sys;"
             "print(' '.join(n for n in sys.argv[1:] if not m.distributions(name=n)))")
    absent = podman("run", "--rm", "--read-only", *ulimit_args(),
                    "--entrypoint", "/opt/secretvault/bin/python", image_build.image,
                    "-c", probe, *names).stdout.split()
    assert absent == [], f"not installed in the image: {absent}"
    psycopg = podman("run", "--rm", "--read-only", *ulimit_args(),
                     "--entrypoint", "/opt/secretvault/bin/python", image_build.image, "-c",
                     "import psycopg; print(psycopg.pq.__impl__, psycopg.pq.version())").stdout
    assert psycopg.split()[0] == "binary", psycopg
    cache = Path(os.environ.get("SECRETVAULT_BUILD_CACHE", "/var/cache/secretvault-build"))
    assert not list((cache / "wheelhouse").glob("secretvault-*.whl"))
