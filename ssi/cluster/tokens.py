"""Join tokens: single use, limited life, stored only as a hash.

A token tells a joining node where the coordinator is and which key it must present, so
the joiner can authenticate the coordinator (CURVE) before it sends the secret:

    ssi1.<base64url(msgpack {cluster, address, port, key, secret})>
"""

from __future__ import annotations

import base64
import hashlib
import secrets

import msgspec

from ssi.proto.errors import BadRequest

PREFIX = "ssi1."


class JoinToken(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cluster: str
    address: str  # coordinator's address and join port
    port: int
    key: str  # coordinator's z85 public key
    secret: str

    def encode(self) -> str:
        raw = msgspec.msgpack.encode(self)
        return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @property
    def digest(self) -> str:
        return digest(self.secret)


def new_token(cluster: str, address: str, port: int, key: str) -> JoinToken:
    return JoinToken(cluster, address, port, key, secrets.token_urlsafe(24))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def decode(text: str) -> JoinToken:
    text = text.strip()
    if not text.startswith(PREFIX):
        raise BadRequest(f"not an ssi join token (it should start with {PREFIX!r})")
    body = text[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        return msgspec.msgpack.decode(raw, type=JoinToken)
    except (ValueError, msgspec.DecodeError) as e:
        raise BadRequest(f"damaged join token: {e}") from None
