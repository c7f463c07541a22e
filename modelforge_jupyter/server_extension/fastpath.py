"""The data plane's lean path through Jupyter (``POST modelforge/predict``, V2 ``infer``): the same answers as the full
path, with less work per request. Mixed into ``base.CancellableHandler``.

- **Header token.** With Jupyter's own identity provider (exactly ``PasswordIdentityProvider``, the server's default,
  or ``IdentityProvider``: neither overrides how a user is found; a subclass or another provider never takes it), a
  request that carries ``Authorization: token ...`` and no login cookie is authenticated by that provider's own
  ``get_user_token`` before ``JupyterHandler.prepare`` runs. ``prepare`` then finds the user set (the provider's
  ``_get_user`` returns an already authenticated user as it is) and does everything else as always: host check, CORS,
  XSRF (skipped for token requests, as always), ``allow_unauthenticated_access``, the Authorizer through
  ``@authorized``. What it no longer does is sign and set a login cookie on every token request (~47 µs a request,
  measured on this path; an API client sending its token in a header never uses the cookie). A token in the query
  (a browser link), a cookie, or any other IdentityProvider: the full path, unchanged.
- **Access log.** A successful data-plane request is not formatted into a log line that the default log level
  (INFO) would drop anyway; Jupyter's request-duration metric (``http_request_duration_seconds``) still records it
  when ``ServerApp.record_http_request_metrics`` is on. Failures, and every request at DEBUG, are logged as before.
"""

from __future__ import annotations

import logging
from typing import Any

from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider

TOKEN_SCHEME = "token "
JUPYTER_PROVIDERS = (IdentityProvider, PasswordIdentityProvider)  # exact classes whose user lookup is known


class DataPlaneMixin:
    """``prepare`` with the header-token check first, and ``_log`` without a line for a success below DEBUG."""

    async def prepare(self) -> None:
        """Authenticate a header-token request with the default IdentityProvider (module docstring), then the
        handler's own ``prepare`` (Jupyter's checks, the query, the body limits)."""
        await header_token_user(self)
        await super().prepare()  # type: ignore[misc]

    def _log(self) -> None:
        """Tornado's per-request log call: a success below DEBUG only feeds Jupyter's request-duration metric."""
        handler: Any = self
        if handler.get_status() < 300 and not debug_shown(handler.log):
            if getattr(handler.serverapp, "record_http_request_metrics", True):
                from jupyter_server.prometheus.log_functions import prometheus_log_method

                prometheus_log_method(handler)
            return
        super()._log()  # type: ignore[misc]


def debug_shown(logger: logging.Logger) -> bool:
    """True when a DEBUG record of ``logger`` would reach a handler that emits it. Jupyter's logger is itself at
    DEBUG (traitlets sets it so) and filters at its handler's level (``--log-level``, INFO by default), so
    ``isEnabledFor`` alone would say yes and every success would still be formatted, then dropped."""
    if not logger.isEnabledFor(logging.DEBUG):
        return False
    current: logging.Logger | None = logger
    while current is not None:
        if any(h.level <= logging.DEBUG for h in current.handlers):
            return True
        current = current.parent if current.propagate else None
    return False


async def header_token_user(handler: Any) -> None:
    """Set ``handler``'s user from its ``Authorization: token`` header when the server's identity provider is exactly
    one of Jupyter's own (``JUPYTER_PROVIDERS``) and the request has no login cookie; leave everything else to ``JupyterHandler.prepare``. A wrong
    token sets nothing (prepare then answers 403 as always)."""
    provider = handler.identity_provider
    if type(provider) not in JUPYTER_PROVIDERS or not provider.auth_enabled:
        return
    header = handler.request.headers.get("Authorization", "")
    if not header.startswith(TOKEN_SCHEME) or handler.request.query_arguments.get("token"):
        return
    if handler.get_cookie(provider.get_cookie_name(handler)) is not None:
        return
    user = await provider.get_user_token(handler)
    if user is not None:
        handler._jupyter_current_user = user
        handler._token_authenticated = True  # as the provider records it: the XSRF check is skipped for tokens
