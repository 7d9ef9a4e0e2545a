"""The server edge: every call passes here before a servicer sees it."""

from secretvault.vault.edge.interceptor import Authenticator, Edge, EdgeInterceptor

__all__ = ["Authenticator", "Edge", "EdgeInterceptor"]
