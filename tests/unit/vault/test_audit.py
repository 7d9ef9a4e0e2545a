"""Every audit line is bounded, whatever its fields hold (issue 13, item 4)."""

from __future__ import annotations

import json
import os

from secretvault.vault.audit import MAX_LINE, AuditLog, AuditRecord

HUGE = "\x01" * (4 << 20)  # escapes to 24 MiB whole


def test_every_line_is_bounded_and_a_clipped_one_says_so(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "audit.log")
    log = AuditLog(path)
    log.write_one(HUGE, HUGE, HUGE, HUGE, 2**64, HUGE)
    log.write([AuditRecord("tls:" + "\U0001f600" * 10**5, "unix:/s", "sign", "k", 1, "ok")])
    log.write_entries("ci", "unix:/s", [("sign", HUGE, 1, "ok"), ("sign", "ci/k", 1, "ok")])
    log.write_summary("ci", "unix:/s", "sign", HUGE, "PERMISSION_DENIED", 2,
                      {"sign": 1, HUGE: 1})
    log.write_one("ci", "unix:/s", "sign", "ci/k", 1, "ok")
    log.close()
    with open(path, "rb") as f:
        raw = f.read().splitlines()
    assert all(len(line) <= MAX_LINE for line in raw), [len(line) for line in raw]
    lines = [json.loads(x) for x in raw]
    assert [x.get("truncated") for x in lines] == [True, True, True, None, True, None]
    assert lines[0]["key"].startswith("\x01") and lines[0]["version"] == 2**64
    assert lines[4]["batch"]["operations"] == 2
    # a line with nothing to clip is exactly as before
    assert lines[5]["key"] == "ci/k" and list(lines[5]) == [
        "time", "identity", "listener", "operation", "key", "version", "result"]


def test_a_detail_line_is_json_with_its_fields_clipped(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "audit.log")
    log = AuditLog(path)
    log.write_detail("dev", "ssh-agent:/s", "ssh_session_bind", None, "ok",
                     {"host_key": "SHA256:abc", "session_id": "ff" * 500, "quote": 'a"b'})
    log.close()
    with open(path) as f:
        line = f.read()
    assert len(line) <= MAX_LINE
    record = json.loads(line)
    assert (record["identity"], record["operation"], record["result"]) == (
        "dev", "ssh_session_bind", "ok")
    assert record["detail"]["host_key"] == "SHA256:abc" and record["detail"]["quote"] == 'a"b'
    assert len(record["detail"]["session_id"]) < 200  # clipped


def test_a_worker_names_its_process_in_every_line(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "audit.log")
    log = AuditLog(path, worker=3)
    log.write_one("ci", "unix:/s", "sign", "ci/k", 1, "ok")
    log.write_entries("ci", "unix:/s", [("sign", "ci/k", 1, "ok")])
    log.write_summary("ci", "unix:/s", "batch", None, "PERMISSION_DENIED", 2)
    log.close()
    with open(path, "rb") as f:
        lines = [json.loads(x) for x in f.read().splitlines()]
    assert [(x["pid"], x["worker"]) for x in lines] == [(os.getpid(), 3)] * 3
    assert list(lines[0]) == ["time", "identity", "listener", "pid", "worker", "operation",
                              "key", "version", "result"]


def test_a_worker_writes_a_pipe_in_whole_lines_of_at_most_pipe_buf() -> None:
    """N workers share one stderr: a longer write could interleave mid-line."""
    from secretvault.vault.audit import PIPE_BUF

    r, w = os.pipe()
    log = AuditLog(f"/proc/self/fd/{w}", worker=0)  # the pipe, opened again
    os.close(w)
    entries = [("sign", f"ci/key-{i:04d}", 1, "ok") for i in range(300)]
    writes: list[int] = []
    real = os.write

    def counting(fd: int, data: bytes) -> int:
        writes.append(len(data))
        assert data.endswith(b"\n")
        return real(fd, data)

    os.write = counting  # type: ignore[assignment]
    try:
        log.write_entries("ci", "unix:/s", entries)
    finally:
        os.write = real  # type: ignore[assignment]
    log.close()
    with os.fdopen(r, "rb") as f:
        lines = f.read().splitlines()
    assert len(lines) == 300 and len(writes) > 1 and max(writes) <= PIPE_BUF
    assert [json.loads(x)["key"] for x in lines] == [e[1] for e in entries]
