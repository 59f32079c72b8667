"""Who a request belongs to, and the names derived from that.

CloudEvents makes `source` + `id` unique per producer; the contract (v1.1) adds the token's
`sub`, so a request is named by all three. Everything the service keys by a request (job
ledger, cancel markers, running jobs) uses `RequestOwner.key`, never the bare event id: the same
id sent by another caller is a different request.

Stored images carry an owner tag: an HMAC of the caller's `sub` under a key derived from
SECRET_KEY. It is stable across replicas and restarts, reveals nothing about the subject, and
lets the store check a `source_image.ref` against its reader without a lookup.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

OWNER_TAG_CHARS = 16
REQUEST_KEY_CHARS = 32


@dataclass(frozen=True, slots=True)
class RequestOwner:
    """The authenticated caller of a request and the `source` it published from."""

    subject: str
    source: str

    def key(self, request_id: str) -> str:
        """The request's scoped name: a digest of (sub, source, id), safe in any Redis key."""
        joined = "\x00".join((self.subject, self.source, request_id)).encode()
        return hashlib.sha256(joined).hexdigest()[:REQUEST_KEY_CHARS]


def derive_key(secret: str, purpose: str) -> bytes:
    """A key for one purpose (`purpose`) from SECRET_KEY, so no two uses share a key."""
    return hmac.new(secret.encode(), f"llm-consumer/{purpose}".encode(), hashlib.sha256).digest()


def owner_tag(key: bytes, subject: str) -> str:
    """The opaque tag under which `subject`'s stored images live."""
    return hmac.new(key, subject.encode(), hashlib.sha256).hexdigest()[:OWNER_TAG_CHARS]
