"""JWT verification of the `authorization` message header, and minting for the CLI injector.

HS256 only (pinned: a token naming any other algorithm, `none` included, is refused), `exp`
required, `nbf`/`iat` honoured with a small leeway, `aud`/`iss` checked when configured.

A message carries exactly one `authorization` header (names compare without case: two that
differ only in case are refused, whatever their order). A token may live at most
`max_lifetime_s` (its `exp` minus its `iat`, or minus now when it has no `iat`), so a token
minted to last for years is refused.

Peers send the same service token with many requests: a token that verified is remembered
(the last VERIFIED_TOKENS of them) with its expiry, so it is not decoded and signed again for
every message; its expiry is still checked each time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import jwt

from llm_consumer.errors import Forbidden, Unauthorized

ALGORITHM = "HS256"
BEARER = "bearer "
MAX_TOKEN_LENGTH = 8192
VERIFIED_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    permissions: frozenset[str]

    def allows(self, permission: str) -> bool:
        return permission in self.permissions


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    secret: str
    audience: str | None = None
    issuer: str | None = None
    leeway_s: int = 30
    max_lifetime_s: int = 86_400
    _verified: dict[str, tuple[Principal, float]] = field(default_factory=dict, repr=False)

    def verify_header(self, headers: Mapping[str, object]) -> Principal:
        """Check the `authorization: Bearer <JWT>` header; raise Unauthorized when it fails."""
        found = [value for key, value in headers.items() if key.lower() == "authorization"]
        if not found:
            raise Unauthorized("missing authorization header")
        if len(found) > 1:
            raise Unauthorized("more than one authorization header")
        raw = _text(found[0])
        if raw is None:
            raise Unauthorized("authorization header is not text")
        if not raw.lower().startswith(BEARER):
            raise Unauthorized("authorization header is not a Bearer token")
        token = raw[len(BEARER):].strip()
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("empty or oversized bearer token")
        return self.verify(token)

    def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None:
            principal, expires_at = known
            if time.time() <= expires_at + self.leeway_s:
                return principal
            del self._verified[token]
            raise Unauthorized("token expired")
        principal, expires_at = self._decode(token)
        if len(self._verified) >= VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[token] = (principal, expires_at)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        options: dict[str, object] = {"require": ["exp", "sub"]}
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as error:
            raise Unauthorized(f"invalid token: {error}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("token subject must be a non-empty string")
        expires_at = float(claims["exp"])
        issued = claims.get("iat")
        start = float(issued) if isinstance(issued, int | float) else time.time()
        if expires_at - start > self.max_lifetime_s + self.leeway_s:
            raise Unauthorized(f"token lifetime is over the {self.max_lifetime_s}s maximum "
                               "(MAX_TOKEN_LIFETIME_S)")
        return Principal(subject=subject, permissions=_permissions(claims)), expires_at


def require(principal: Principal, permission: str | tuple[str, ...]) -> None:
    """`permission`, or any one of several."""
    wanted = (permission,) if isinstance(permission, str) else permission
    if not any(principal.allows(p) for p in wanted):
        raise Forbidden(f"token of {principal.subject!r} lacks permission {' or '.join(wanted)}")


def mint_token(
    secret: str,
    *,
    subject: str,
    permissions: Iterable[str],
    ttl_s: int = 300,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """A short-lived token, as the platform's Auth Service would issue (used by the CLI)."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": subject,
        "scope": " ".join(sorted(set(permissions))),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
    }
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def _permissions(claims: Mapping[str, object]) -> frozenset[str]:
    found: set[str] = set()
    scope = claims.get("scope")
    if isinstance(scope, str):
        found.update(scope.split())
    listed = claims.get("permissions")
    if isinstance(listed, list):
        found.update(item for item in listed if isinstance(item, str))
    return frozenset(found)
