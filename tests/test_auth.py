"""Token verification: what a remembered token still has to pass."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from llm_consumer import auth
from llm_consumer.auth import TokenVerifier, mint_token
from llm_consumer.errors import Unauthorized

SECRET = "auth-test-" + "k" * 40


def test_a_verified_token_is_not_decoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counting)
    verifier = TokenVerifier(SECRET)
    token = mint_token(SECRET, subject="character-service", permissions=["llm:generate"])
    first = [verifier.verify(token) for _ in range(50)]
    assert decoded == [token]
    assert {p.subject for p in first} == {"character-service"}
    assert first[0].allows("llm:generate")


def test_a_remembered_token_still_expires() -> None:
    verifier = TokenVerifier(SECRET, leeway_s=0)
    token = mint_token(SECRET, subject="svc", permissions=["llm:generate"], ttl_s=1)
    assert verifier.verify(token).subject == "svc"
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires_at - time.time()) + 0.05)  # `exp` is whole seconds: <= 1 s
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(token)
    with pytest.raises(Unauthorized, match="expired"):  # and is not remembered any more
        verifier.verify(token)


def test_a_tampered_copy_of_a_remembered_token_is_refused() -> None:
    verifier = TokenVerifier(SECRET)
    token = mint_token(SECRET, subject="svc", permissions=["llm:generate"])
    verifier.verify(token)
    header, payload, signature = token.split(".")
    forged = ".".join((header, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA"
                                                          else "BBBB")))
    with pytest.raises(Unauthorized, match="invalid token"):
        verifier.verify(forged)


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "VERIFIED_TOKENS", 8)
    verifier = TokenVerifier(SECRET)
    tokens = [mint_token(SECRET, subject=f"svc-{n}", permissions=["llm:generate"])
              for n in range(20)]
    for token in tokens:
        verifier.verify(token)
    assert len(verifier._verified) == 8
    assert tokens[-1] in verifier._verified and tokens[0] not in verifier._verified


@pytest.mark.parametrize("names", [("authorization", "Authorization"),
                                   ("Authorization", "authorization"),
                                   ("AUTHORIZATION", "authorization")])
def test_exactly_one_authorization_header_whatever_its_case(names: tuple[str, str]) -> None:
    verifier = TokenVerifier(SECRET)
    good = mint_token(SECRET, subject="alice", permissions=["llm:content"])
    other = mint_token(SECRET, subject="mallory", permissions=["llm:admin"])
    headers = {names[0]: f"Bearer {good}", names[1]: f"Bearer {other}"}
    with pytest.raises(Unauthorized, match="more than one authorization header"):
        verifier.verify_header(headers)
    assert verifier.verify_header({names[1]: f"Bearer {good}"}).subject == "alice"


def test_a_token_may_not_live_longer_than_the_maximum() -> None:
    verifier = TokenVerifier(SECRET, max_lifetime_s=3600)
    now = int(time.time())
    year_9999 = jwt.encode({"sub": "svc", "iat": now, "exp": 253402300799}, SECRET,
                           algorithm="HS256")
    with pytest.raises(Unauthorized, match="lifetime"):
        verifier.verify(year_9999)
    no_iat = jwt.encode({"sub": "svc", "exp": now + 7200}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="lifetime"):
        verifier.verify(no_iat)
    hour = mint_token(SECRET, subject="svc", permissions=["llm:content"], ttl_s=3600)
    assert verifier.verify(hour).subject == "svc"
