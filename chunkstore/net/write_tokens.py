"""Write tokens for add_provider, as BEP 5 does for announce_peer.

A UDP source address can be forged; an answer to it cannot be read by the forger. So a
node gives each asker of get_providers a token derived from the asker's IP and a secret
that rotates every ROTATE_SECONDS, and records a holder from add_provider only when the
request presents a token made for its source IP within the last two periods. A forged
add_provider (from an address whose answers the forger never sees) carries no valid token
and records nothing. Pure: time is passed in.
"""

from __future__ import annotations

import hmac
import os

import blake3

# BEP 5 suggests 5 minutes and accepting the previous secret: a token is good for 5-10 min,
# the time between a lookup and the add_provider it leads to, with room to spare.
ROTATE_SECONDS = 300.0
TOKEN_BYTES = 8


class WriteTokens:
    """Makes and checks the tokens of one node."""

    def __init__(self, now: float) -> None:
        self._secrets = [os.urandom(32), os.urandom(32)]  # current, previous
        self._rotated = now

    def token_for(self, ip: str, now: float) -> bytes:
        self._rotate(now)
        return self._token(self._secrets[0], ip)

    def valid(self, ip: str, token: object, now: float) -> bool:
        if not isinstance(token, bytes) or len(token) != TOKEN_BYTES:
            return False
        self._rotate(now)
        return any(hmac.compare_digest(self._token(s, ip), token) for s in self._secrets)

    def _rotate(self, now: float) -> None:
        while now - self._rotated >= ROTATE_SECONDS:
            self._secrets = [os.urandom(32), self._secrets[0]]
            self._rotated += ROTATE_SECONDS
            if now - self._rotated >= ROTATE_SECONDS:  # asleep for long: start afresh
                self._secrets = [os.urandom(32), os.urandom(32)]
                self._rotated = now

    @staticmethod
    def _token(secret: bytes, ip: str) -> bytes:
        return blake3.blake3(ip.encode(), key=secret).digest(TOKEN_BYTES)
