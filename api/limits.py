"""The server's default limits on one request, which clients size their requests by.

The server's configuration (``ServerConfig``) takes these as its defaults and
may be set otherwise; a client that splits a long list of operations into
batches keeps each batch within them, so it works against a server on its
defaults without being told.
"""

from __future__ import annotations

#: operations in one BatchRequest; more is RESOURCE_EXHAUSTED
MAX_BATCH_OPERATIONS = 10_000
#: bytes of one request message; more is refused by the transport (RESOURCE_EXHAUSTED)
MAX_MESSAGE_BYTES = 4 << 20
