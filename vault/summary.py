"""The start-up summary: what a started server holds and where it listens, as text.

``secretvault serve`` prints it once, on stderr, when the server is ready:
the backend and whether keys are in secret memory, the memlock limit and the
headroom in keys, damaged keys, the store, each listener and its identity,
each listener's connection cap under RLIMIT_NOFILE, the policy, the audit
log, the metrics endpoint, and a warning when the unseal key was created
next to the store.
"""

from __future__ import annotations

from secretvault.backends import Exposure, exposure
from secretvault.vault.server import VaultServer
from secretvault.vault.sizes import format_bytes


def capabilities_line(e: Exposure, *, kept: bool) -> str:
    """The capability state: none, or the effective set (``all N`` when it is every one)."""
    if not e.effective:
        return "none" if kept else "none (dropped at start: RLIMIT_MEMLOCK holds)"
    names = (f"all {len(e.effective)}" if len(e.effective) == len(e.bounding)
             and len(e.effective) > 30 else ", ".join(n.removeprefix("cap_") for n in e.effective))
    return names + (" (kept: --keep-capabilities)" if kept else
                    " (still held by grpc's threads, which started before the listeners "
                    "that needed it were bound; CAP_IPC_LOCK is gone)")


def ptrace_line(e: Exposure) -> str:
    """Who can attach a debugger (and so read every key), and whether one is attached."""
    scope = ("absent (no Yama)" if e.yama_ptrace_scope is None
             else str(e.yama_ptrace_scope))
    root = "yes" if e.root_can_attach else "no"
    traced = f"YES, pid {e.tracer_pid}" if e.tracer_pid else "no"
    return (f"ptrace_scope {scope}; root (CAP_SYS_PTRACE) can attach: {root}; "
            f"the server's user: {e.user_can_attach}; traced now: {traced}")


def summary(server: VaultServer) -> str:
    """The one start-up summary, as text."""
    v = server.vault
    s = v.allocator.statistics()
    lines = ["secretvault is serving"]
    if s.protection == "secretmem":
        lines.append(f"  backend      {s.backend}: keys live in secret memory (memfd_secret), "
                     "out of the kernel's direct map")
    else:
        lines.append(f"  backend      {s.backend}: a MODEL for measurement and development")
        lines.append("  !!! WARNING  keys are NOT in secret memory: they are in ordinary locked "
                     "memory. Do not use this backend in production.")
    ml = s.memlock
    soft = "unlimited" if ml.soft < 0 else format_bytes(ml.soft)
    if ml.cap_ipc_lock:
        limit = f"{soft}, not enforced: the server has CAP_IPC_LOCK"
    else:
        limit = f"{soft} (locked now {format_bytes(ml.locked)})"
    lines.append(f"  memlock      {limit}")
    e = exposure()
    lines.append(f"  capabilities {capabilities_line(e, kept=server.config.keep_capabilities)}")
    room = ", ".join(f"{n:,} {t}" for t, n in ml.headroom_keys if n is not None)
    lines.append(f"  headroom     {room + ' more keys' if room else 'unlimited'}")
    counts = v.keyring.counts_by_type()
    damaged = v.keyring.damaged_keys()
    lines.append(f"  keys         {sum(counts.values())} loaded"
                 + (f", {len(damaged)} damaged" if damaged else ""))
    if damaged:
        names = ", ".join(repr(n) for n in list(damaged)[:5])
        more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        lines.append(f"  !!! WARNING  damaged keys (their records do not open; using them "
                     f"fails with DATA_LOSS naming the damage): {names}{more}")
    import_damage = v.keyring.import_key_damage
    if import_damage is not None:
        lines.append("  !!! WARNING  wrapped import is unavailable (ImportKey and GetImportKey "
                     f"answer FAILED_PRECONDITION): {import_damage}; everything else works")
    lines.append(f"  debugger     {ptrace_line(e)}")
    if e.root_can_attach:
        stop = (f"on a tracer: zero secret memory and exit (checked every "
                f"{server.config.tracer_check_seconds:g} s)" if server.config.stop_on_tracer
                else "on a tracer: keep serving (--stop-on-tracer stops)")
        lines.append(f"  !!! WARNING  root can read every key with a debugger "
                     f"(kernel.yama.ptrace_scope=3 forbids it); {stop}")
    lines.append(f"  store        {v.store.describe}")
    for item in server.listeners:
        lines.append(f"  listening    {item.name} (identity: {item.identity})")
    for agent in server.agent.listeners if server.agent is not None else ():
        lines.append(f"  listening    {agent.name} (identity: {agent.binding.identity}; "
                     f"SSH_AUTH_SOCK={agent.path})")
    if server.connections is not None:
        idle = server.config.connection_idle_seconds
        lines.append(f"  connections  {server.connections.describe()}; idle ones closed after "
                     f"{idle:g} s")
    lines.append(f"  policy       {server.policy.source}")
    fail = "fail open" if server.audit.fail_open else "fail closed"
    lines.append(f"  audit        {server.audit.where} ({fail})")
    if server.metrics_address:
        host, port = server.metrics_address
        lines.append(f"  metrics      http://{host}:{port}/metrics")
    if v.created_key_file:
        lines.append(f"  unseal key   created {v.created_key_file} (mode 0600)")
        lines.append("  !!! WARNING  the unseal key sits next to the store it unseals: in "
                     "production keep it elsewhere (another volume, a secret manager) and "
                     "pass --unseal-key-file")
    return "\n".join(lines)
