"""The benchmark's peer clients give correct answers before they give figures.

Each peer is real (ssh-agent from openssh-client, SoftHSM2 through
python-pkcs11, the grpcio echo server); where one cannot run here the test
is skipped with what is missing, which ``benchmarks/setup-peers`` installs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from benchmarks import echo
from benchmarks._measure import Measure, PeerMissing, per_round_ratio, percentile
from benchmarks._rpc import (
    inflight_rate,
    start_echo,
    stream_rate,
    tls_channel,
    unary_rate,
    unix_channel,
)
from benchmarks._tls import make_tls_files
from benchmarks.crypto_limit import crypto_forms
from benchmarks.peers.softhsm import SoftHsm
from benchmarks.peers.ssh_agent import AgentProtocolError, SshAgent

MESSAGE = bytes(range(64))


@pytest.fixture(scope="module")
def agent() -> Iterator[SshAgent]:
    try:
        a = SshAgent()
    except PeerMissing as e:
        pytest.skip(f"ssh-agent peer missing: {e}")
    with a:
        yield a


@pytest.fixture(scope="module")
def hsm() -> Iterator[SoftHsm]:
    try:
        h = SoftHsm()
    except PeerMissing as e:
        pytest.skip(f"SoftHSM2 peer missing: {e}")
    with h:
        yield h


# --- ssh-agent ------------------------------------------------------------------


def test_agent_lists_the_ed25519_key_it_was_given(agent: SshAgent) -> None:
    with agent.client() as c:
        ids = c.identities()
    assert [i.blob for i in ids] == [agent.identity.blob]
    assert ids[0].comment == "sv-bench"
    assert len(agent.identity.ed25519_public) == 32


def test_agent_signature_verifies_and_binds_the_message(agent: SshAgent) -> None:
    pk = Ed25519PublicKey.from_public_bytes(agent.identity.ed25519_public)
    with agent.client() as c:
        sig = c.sign(agent.identity.blob, MESSAGE)
        again = c.sign(agent.identity.blob, MESSAGE)
    pk.verify(sig, MESSAGE)
    assert sig == again  # Ed25519 is deterministic
    with pytest.raises(InvalidSignature):
        pk.verify(sig, MESSAGE[:-1] + b"\x00")


def test_agent_refuses_a_key_it_does_not_hold(agent: SshAgent) -> None:
    other = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(32)
    with agent.client() as c, pytest.raises(AgentProtocolError, match="refused"):
        c.sign(other, MESSAGE)


def test_agent_stops_with_its_context(tmp_path: Path) -> None:
    try:
        a = SshAgent()
    except PeerMissing as e:
        pytest.skip(f"ssh-agent peer missing: {e}")
    sock = a.socket_path
    a.close()
    assert not sock.exists()


# --- SoftHSM2 -------------------------------------------------------------------


def test_softhsm_ed25519_signature_verifies(hsm: SoftHsm) -> None:
    pk = Ed25519PublicKey.from_public_bytes(hsm.ed25519_public())
    sig = hsm.sign_ed25519(MESSAGE)
    assert len(sig) == 64
    pk.verify(sig, MESSAGE)
    with pytest.raises(InvalidSignature):
        pk.verify(sig, b"another message")


def test_softhsm_p256_signature_verifies(hsm: SoftHsm) -> None:
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), hsm.p256_public_point())
    sig = hsm.sign_p256(MESSAGE)
    assert len(sig) == 64
    der = utils.encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
    pub.verify(der, MESSAGE, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        pub.verify(der, b"another message", ec.ECDSA(hashes.SHA256()))


def test_softhsm_runner_signs(hsm: SoftHsm) -> None:
    hsm.runner("ed25519", MESSAGE)(3)
    hsm.runner("p256", MESSAGE)(3)


# --- the echo ceiling and the crypto limit --------------------------------------------


def test_echo_server_echoes_over_unix_and_mutual_tls(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    proc, sock = start_echo(tmp_path, tmp_path)
    with proc:
        for channel in (unix_channel(sock), tls_channel(proc.port, tls)):
            with channel:
                unary = channel.unary_unary(echo.UNARY)
                assert unary(b"ping") == b"ping"
                stream = channel.stream_stream(echo.STREAM)
                lats: list[list[int]] = [[], [], []]
                rates = [
                    unary_rate(unary, b"x" * 80, lats[0]),
                    inflight_rate(unary, b"x" * 80, 8, lats[1]),
                    stream_rate(stream, b"y", 4, lats[2]),
                ]
                for rate, lat in zip(rates, lats, strict=True):
                    assert rate(0.05) > 0
                    assert lat and all(t > 0 for t in lat)


@pytest.mark.memfd_secret
def test_crypto_forms_run_on_both_sides() -> None:
    with crypto_forms() as (secret, ordinary):
        assert [f.key.split(".")[1] for f in secret] == [f.key.split(".")[1] for f in ordinary]
        for form in secret + ordinary:
            form.run(2)


# --- measurement helpers ----------------------------------------------------------


def test_ratio_is_the_median_of_per_round_ratios() -> None:
    a = Measure("a", "a", rounds=[10.0, 30.0, 100.0])
    b = Measure("b", "b", rounds=[5.0, 10.0, 100.0])
    # per round: 2, 3, 1 -> median 2 (the ratio of medians would be 30/10 = 3)
    assert per_round_ratio(a, b) == 2.0


def test_percentile_nearest_rank() -> None:
    samples = list(range(1, 101))
    assert percentile(samples, 50) == 50
    assert percentile(samples, 99) == 99
    assert percentile([7], 99) == 7


# --- the secretvault server and the whole run --------------------------------------------


@pytest.mark.memfd_secret
def test_vault_target_serves_verified_signatures_over_both_transports(tmp_path: Path) -> None:
    from benchmarks._rpc import RPC_FORMS
    from benchmarks.vault_target import VaultServer

    tls = make_tls_files(tmp_path)
    # the constructor verifies one unary, batched and streamed signature per transport
    with VaultServer(tmp_path, tls) as server:
        for transport in ("unix", "tls"):
            with server.channel(transport) as ch:
                target = server.target(ch)
                for form in RPC_FORMS:
                    lat: list[int] = []
                    assert target.rate(form, lat)(0.02) > 0, (transport, form)
                    assert lat
    assert not server.socket.exists()  # SIGTERM: drained, socket removed


@pytest.mark.memfd_secret
def test_compare_runs_end_to_end_and_reports_every_target(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from benchmarks.compare import main

    assert main(["--rounds", "1", "--seconds", "0.02", "--keys", "2000", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["targets"]) == 5
    for t in doc["targets"]:
        assert t["verdict"] in ("PASS", "MISS", "MISSING")
    for key in ("sv.unix.unary1", "sv.tls.stream32", "echo.unix.batch32",
                "crypto.hmac_sha256.secret"):
        m = doc["measures"][key]
        assert m["missing"] is None and m["median"] > 0, key
    assert doc["measures"]["sv.unix.unary1"]["p99_us"] >= doc["measures"]["sv.unix.unary1"][
        "p50_us"]
    assert doc["memory"]["keys"] == 2000
    assert doc["memory"]["pages_resident"] >= 2000 * 64 // 4096
