"""A custom Jupyter IdentityProvider for the tests: the user named by the ``X-Test-User`` header if it is ``alice``,
and nobody else (the server's token is no credential for it). Configured by class name
(``--ServerApp.identity_provider_class=tests.mf_plugin.identity.MfHeaderIdentityProvider``), so that a test can
prove the data plane's lean path (``server_extension/fastpath.py``) never bypasses a provider it does not know."""

from __future__ import annotations

from jupyter_server.auth import IdentityProvider, User


class MfHeaderIdentityProvider(IdentityProvider):
    """``alice`` when ``X-Test-User: alice`` is sent; else no user (403), whatever token is sent."""

    def get_user(self, handler):
        """The user the header names, if it is alice."""
        return User("alice") if handler.request.headers.get("X-Test-User") == "alice" else None
