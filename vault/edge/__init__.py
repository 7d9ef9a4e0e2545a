"""The server edge: every call passes here before a servicer sees it.

``methods`` is the table of what each method is called in the policy and
the audit log, ``identity`` says who is calling, ``limits`` bounds what one
caller may hold (batch sizes, streams and watches), ``state`` is what the
listeners share, ``interceptor`` is the one wrapper that runs around every
call and ``stages`` what each kind of method does inside it.
"""

from secretvault.vault.edge.identity import Authenticator
from secretvault.vault.edge.interceptor import EdgeInterceptor
from secretvault.vault.edge.state import Edge

__all__ = ["Authenticator", "Edge", "EdgeInterceptor"]
