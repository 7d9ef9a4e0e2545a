"""benchmarks/bench_embedded.py: every form signs correctly, and the run reports both targets.

Opening a keyring hardens the process for good (not dumpable, no core
dumps), which would change the pytest process for every later test: here
it is recorded instead of applied.
"""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import bench_embedded
from secretvault.vault import app


@pytest.fixture(autouse=True)
def hardened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(app, "harden_process", lambda: calls.append(os.getpid()))
    return calls


@pytest.mark.memfd_secret
def test_the_embedded_form_signs_on_a_hardened_keyring_of_its_own(hardened: list[int]) -> None:
    with bench_embedded.embedded_form() as run:
        assert hardened == [os.getpid()]
        run(100)


def test_the_pynacl_form_signs() -> None:
    bench_embedded.pynacl_form()(10)


@pytest.mark.memfd_secret
def test_a_run_reports_every_form_and_both_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_embedded.main(["--rounds", "1", "--seconds", "0.02", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {t["target"] for t in doc["targets"]} == {
        "embedded sign >= 5x SoftHSM2 in-process Ed25519",
        "embedded sign >= 0.9x bare libsodium, key in ordinary memory",
    }
    for t in doc["targets"]:
        assert t["verdict"] in ("PASS", "MISS", "MISSING")
    for key in ("embedded.sign", "crypto.ed25519_sign.ordinary", "crypto.ed25519_sign.secret",
                "peer.pynacl.ed25519"):
        m = doc["measures"][key]
        assert m["missing"] is None and m["median"] > 0, key
    # SoftHSM2 runs where benchmarks/setup-peers installed it, and says why not elsewhere
    hsm = doc["measures"]["peer.softhsm.ed25519"]
    assert (hsm["missing"] is None and hsm["median"] > 0) or "setup-peers" in hsm["missing"]
