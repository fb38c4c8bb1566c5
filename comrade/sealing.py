"""How Raft messages between workers are sealed with the cluster's cookie: AES-GCM-SIV
(RFC 8452, `cryptography`'s AESGCMSIV) instead of pysyncobj's Fernet.

pysyncobj encrypts every message it sends with Fernet (AES-128-CBC, then HMAC-SHA256 over it,
then base64): in the benchmark's busy workers that cost about 50 us of CPU per task (three
workers, about 0.5 messages per task each way), a tenth of what the workers spend on a `true`
task. One AEAD call does the same work (secrecy and authenticity) in a few microseconds.

A sealed message (`Sealer.encrypt_at_time`) is: a version byte (SEALED), the sender's time
as 8 big-endian bytes (pysyncobj's, whole seconds of its monotonic clock: a receiver drops a
connection whose messages go back in time), a random 12-byte nonce, then the AEAD's
ciphertext and tag; the version and time are authenticated as associated data, so neither
can be changed. GCM-SIV rather than GCM: with random nonces under one key for the cluster's
whole life, GCM must stop at about 2^32 messages (a collision reveals its authentication
key), which a busy cluster reaches in weeks; a GCM-SIV nonce collision only reveals whether
two messages were equal. The key is derived from the cookie with PBKDF2-HMAC-SHA256 as
pysyncobj derives Fernet's, under a salt of Leoronic's own.

Every TcpConnection of the process reads and writes through these (`comrade.raftmend`
installs `Sealer` as pysyncobj's encryptor, its utility's too), so workers of a version
before this one cannot talk to it over Raft: they also run another `PROTOCOL`, and are refused
before they join.
"""

from __future__ import annotations

import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

#: The first byte of a sealed message (a Fernet token starts with "g", its base64 of 0x80).
SEALED = 0x91
#: Salt of the key derivation: fixed, as pysyncobj's is, and not pysyncobj's, so the key is
#: not Fernet's.
SALT = b"leoronic raft messages, AES-GCM-SIV"
#: PBKDF2 iterations (pysyncobj's for Fernet): once per worker start and per utility connection.
ITERATIONS = 100_000
NONCE_BYTES = 12
_HEAD = struct.Struct(">BQ")  # version, time
HEADER_BYTES = _HEAD.size + NONCE_BYTES


class Sealer:
    """pysyncobj's encryptor, as its transport uses one: `encrypt_at_time(data, time)` and
    `decrypt(token)`, plus `token_time(token)` (pysyncobj's `extract_timestamp`, without
    authenticating the token again: read it after `decrypt` accepted the token)."""

    def __init__(self, password: str | bytes) -> None:
        secret = password.encode() if isinstance(password, str) else bytes(password)
        kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=SALT, iterations=ITERATIONS)
        self._aead = AESGCMSIV(kdf.derive(secret))

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        """`data` sealed, stamped with `current_time` (whole seconds, 0 to 2^64 - 1)."""
        head = _HEAD.pack(SEALED, current_time)
        nonce = os.urandom(NONCE_BYTES)
        return head + nonce + self._aead.encrypt(nonce, data, head)

    def decrypt(self, token: bytes) -> bytes:
        """The data of a token sealed with this cookie; ValueError if it is not one, or
        cryptography's InvalidTag if it was sealed with another key or changed on the way."""
        token = bytes(token)
        if len(token) < HEADER_BYTES or token[0] != SEALED:
            raise ValueError("not a sealed Raft message")
        return self._aead.decrypt(token[_HEAD.size:HEADER_BYTES], token[HEADER_BYTES:],
                                  token[:_HEAD.size])

    @staticmethod
    def token_time(token: bytes) -> int:
        """The time a token was sealed at (not authenticated here: see the class)."""
        version, stamp = _HEAD.unpack_from(token)
        if version != SEALED:
            raise ValueError("not a sealed Raft message")
        return int(stamp)
