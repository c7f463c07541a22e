"""URLs in messages: what of a URL setting may be shown, and what a parser's complaint about one may quote.

Every message or log line that may quote a database, Redis or broker URL goes through ``mask_url`` (or ``scrub`` when
it is a parser's complaint about the URL), so no answer, log line or 503 ever shows a password.
"""

from __future__ import annotations

import re

# scheme://user-info@host: the user-info runs to the last "@" of the token, so a password holding "@" or "/" is masked
# whole (over-masking a query that holds an "@" rather than leaking part of a password).
_URL_USERINFO = re.compile(r"\b(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>\S*)@")
# A query parameter whose name says it holds a secret (?password=..., &api_key=..., auth_token=...): its value runs
# to the next "&", "#" or space, a closing quote of the text around it kept.
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;][^=&#\s?;]*(?:pass|pwd|secret|token|key|auth|credential)[^=&#\s?;]*=)"
    r"(?P<value>[^&#\s]*?)(?=['\"]?(?:[&#\s]|$))",
    re.IGNORECASE,
)


def _masked_userinfo(found: re.Match) -> str:
    user, colon, _password = found["info"].partition(":")
    if "@" not in user and not colon:  # a user name alone
        return found[0]
    if "@" not in user:  # user:password, as SQLAlchemy shows it (hide_password=True)
        return f"{found['scheme']}{user}:***@"
    return f"{found['scheme']}***@"  # no telling which part is the password: none of it is shown


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``: the user-info's password
    (``scheme://user:***@host``, as SQLAlchemy's ``URL.render_as_string(hide_password=True)``; all of the user-info
    when its user part holds an ``@``) and the value of every query parameter whose name holds pass/pwd/secret/token/
    key/auth/credential (``?password=***``), which SQLAlchemy, redis-py and libpq all take as the password.
    Every message or log line that may quote a URL goes through it, including text that is not a valid URL."""
    return _SECRET_PARAM.sub(r"\g<name>***", _URL_USERINFO.sub(_masked_userinfo, text))


def mask_setting_url(url: str) -> str:
    """``url``, a URL setting's value that may not parse, masked for a message: ``mask_url``, and everything
    between ``://`` (or the start) and the last ``@`` replaced by ``***``, since which part is the password cannot be
    told (``postgresql://u:pa@ss@host`` -> ``postgresql://***@host``)."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return mask_url(head + sep + rest)


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that may be secret: the pieces of its user-info (split at ``:`` and ``@``) and the values
    of its secret-named query parameters; what a message about ``url`` must not show."""
    rest = url.partition("://")[2] or url
    pieces = re.split(r"[:@]", rest.rpartition("@")[0]) if "@" in rest else []
    pieces += [m["value"] for m in _SECRET_PARAM.finditer(url)]
    return [p for p in pieces if p]


def scrub(reason: str, url: str) -> str:
    """``reason`` (a parser's complaint about ``url``) without any part of ``url``'s user-info or secret parameters:
    a quoted fragment holding one becomes ``'***'``, any other occurrence ``***``."""
    secrets = url_secrets(url)
    if not secrets:
        return mask_url(reason)

    def quoted(found: re.Match) -> str:
        return "'***'" if any(p in found[0] for p in secrets) else found[0]

    reason = re.sub(r"'[^']*'|\"[^\"]*\"", quoted, reason)
    for piece in sorted(secrets, key=len, reverse=True):
        if len(piece) >= 3:
            reason = reason.replace(piece, "***")
    return mask_url(reason)
