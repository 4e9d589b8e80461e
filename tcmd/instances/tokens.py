"""The live instance tokens, looked up without a timing side channel.

A token proves who calls over a channel with no peer pid (an HTTP hook on loopback), so
the lookup must not tell a guesser how much of a token was right. A dict keyed by the
token itself would compare strings byte by byte; here the key is the token's SHA-256,
which leaks nothing usable about the token, and the one candidate found is then compared
with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Tokens:
    """token → instance id, for the tokens of instances that are not terminated."""

    def __init__(self) -> None:
        self._by_key: dict[bytes, tuple[bytes, str]] = {}

    def add(self, token: str, instance_id: str) -> None:
        self._by_key[_key(token)] = (token.encode("utf-8", "surrogatepass"), instance_id)

    def revoke(self, token: str) -> None:
        self._by_key.pop(_key(token), None)

    def owner(self, token: str | None) -> str | None:
        """The instance whose live token this is; None for no token or an unknown one."""
        if not token:
            return None
        found = self._by_key.get(_key(token))
        if found is None:
            return None
        known, instance_id = found
        same = hmac.compare_digest(known, token.encode("utf-8", "surrogatepass"))
        return instance_id if same else None
