"""Headers of dead letters as ops tools show them: secrets replaced, the rest as it was.

Dead letters keep their original headers (a replay needs the caller's token), so everything that
prints them goes through `redact_headers`. The `authorization` header (any case) becomes
`Bearer <redacted sub=alice …Xy3Z>`: the token's `sub` (as the token claims it, unverified: the
letter may be there precisely because the token failed) tells an operator whose request it was,
and the last 4 characters, shown only for tokens of 32 characters or more, let them match it
against a token they hold. For a JWT those are 24 bits of its signature, no help in forging one.
Any other header whose name suggests a secret is replaced whole.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

import orjson

AUTHORIZATION_NAMES = frozenset({"authorization", "proxy-authorization"})
SECRET_NAME = re.compile(
    r"auth|token|secret|passw|pwd|api[-_]?key|credential|cookie|session|private[-_]?key", re.I)
REDACTED = "<redacted>"
MIN_TAIL_LENGTH = 32  # shorter tokens show no tail: 4 characters would be too much of them
MAX_SUB_SHOWN = 64
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,19}")


def redact_headers(headers: Mapping[str, object]) -> dict[str, object]:
    return {str(name): _redact(str(name), value) for name, value in headers.items()}


def _redact(name: str, value: object) -> object:
    if name.lower() in AUTHORIZATION_NAMES:
        return redact_authorization(value)
    if SECRET_NAME.search(name):
        return REDACTED
    if isinstance(value, Mapping):  # nested tables (x-death, the parked mark) by their keys
        return {str(k): _redact(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact("", item) for item in value]
    return value


def redact_authorization(value: object) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if not isinstance(text, str):
        return REDACTED
    scheme, _, credentials = text.strip().partition(" ")
    credentials = credentials.strip()
    if not _SCHEME.fullmatch(scheme) or not credentials:
        return REDACTED
    hints = []
    sub = _claimed_subject(credentials) if scheme.lower() == "bearer" else None
    if sub is not None:
        hints.append(f"sub={sub}")
    if len(credentials) >= MIN_TAIL_LENGTH:
        hints.append(f"…{credentials[-4:]}")
    shown = scheme.capitalize() if scheme.lower() == "bearer" else scheme
    return f"{shown} <redacted{''.join(' ' + hint for hint in hints)}>"


def _claimed_subject(token: str) -> str | None:
    """The `sub` a JWT claims, unverified, made printable and short; None when unreadable."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = orjson.loads(payload)
    except (binascii.Error, ValueError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    if not isinstance(sub, str):
        return None
    printable = "".join(c if c.isprintable() and not c.isspace() else "?" for c in sub)
    return printable[:MAX_SUB_SHOWN] + ("…" if len(printable) > MAX_SUB_SHOWN else "")
