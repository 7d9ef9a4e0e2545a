"""The vault as an SSH agent: draft-miller-ssh-agent, as OpenSSH implements it.

By concern: :mod:`~secretvault.vault.agent.wire` (message numbers, framing
and parsing of public fields), :mod:`~secretvault.vault.agent.keys` (Ed25519
key and signature blobs, fingerprints), :mod:`~secretvault.vault.agent.held`
(keys added with ``ssh-add``, per identity, in secret memory; the lock),
:mod:`~secretvault.vault.agent.session` (one connection: frames read
straight off the socket, secrets into secret memory),
:mod:`~secretvault.vault.agent.service` (the request dispatcher: policy,
audit, counters) and :mod:`~secretvault.vault.agent.listener` (the Unix
socket's accept loop, bounded threads, idle timeouts).
"""
