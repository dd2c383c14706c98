"""JWT-shaped bearer tokens (HS256) and signed storage URLs for the test server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    """Issue and verify HS256 JWTs signed with a per-server secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, message: bytes) -> bytes:
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def issue(
        self,
        *,
        subject: str = "test-user",
        ttl: float = 24 * 3600,
        claims: dict[str, Any] | None = None,
    ) -> str:
        """Return a token for `subject` that expires `ttl` seconds from now (negative: already expired)."""
        now = int(time.time())
        header = {"alg": "HS256", "typ": "JWT"}
        payload = {"sub": subject, "iat": now, "exp": int(now + ttl), **(claims or {})}
        signing_input = ".".join(
            _b64encode(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
        )
        return f"{signing_input}.{_b64encode(self._mac(signing_input.encode()))}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """Return the claims of a valid, unexpired token, else None."""
        try:
            header_b64, payload_b64, signature_b64 = token.split(".")
            header = json.loads(_b64decode(header_b64))
            payload = json.loads(_b64decode(payload_b64))
            signature = _b64decode(signature_b64)
        except ValueError:
            return None
        if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(payload, dict):
            return None
        if not hmac.compare_digest(signature, self._mac(f"{header_b64}.{payload_b64}".encode())):
            return None
        exp = payload.get("exp")
        if not isinstance(exp, (int, float)) or exp <= time.time():
            return None
        return payload

    def sign(self, message: str) -> str:
        """Signature for a storage URL (the upload/download URLs carry no Authorization header)."""
        return _b64encode(self._mac(f"storage:{message}".encode()))[:32]

    def check(self, message: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(message), signature)
