"""Raft messages sealed with the cookie (comrade.sealing)."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from comrade.sealing import HEADER_BYTES, SEALED, Sealer


def test_a_sealed_message_opens_with_the_same_cookie_and_keeps_its_time() -> None:
    sender, receiver = Sealer("cookie"), Sealer(b"cookie")
    for data in (b"", b"x", bytes(range(256)) * 300):
        token = sender.encrypt_at_time(data, 1234)
        assert token[0] == SEALED and len(token) == HEADER_BYTES + len(data) + 16
        assert receiver.decrypt(token) == data
        assert Sealer.token_time(token) == 1234


def test_the_same_message_sealed_twice_looks_different() -> None:
    sealer = Sealer("cookie")
    a, b = sealer.encrypt_at_time(b"same", 7), sealer.encrypt_at_time(b"same", 7)
    assert a != b and b"same" not in a  # a fresh nonce each time; the data not in clear


def test_every_changed_byte_and_every_other_cookie_is_refused() -> None:
    sealer = Sealer("cookie")
    token = sealer.encrypt_at_time(b"claim t1 on n2", 99)
    for i in range(len(token)):  # version, time, nonce, ciphertext, tag
        changed = bytearray(token)
        changed[i] ^= 0x40
        with pytest.raises((InvalidTag, ValueError)):
            sealer.decrypt(bytes(changed))
    with pytest.raises(InvalidTag):
        Sealer("cookie2").decrypt(token)
    for short in (b"", token[:HEADER_BYTES], token[:HEADER_BYTES + 15]):
        with pytest.raises((InvalidTag, ValueError)):
            sealer.decrypt(short)


def test_a_token_of_another_kind_has_no_time() -> None:
    with pytest.raises(ValueError, match="not a sealed Raft message"):
        Sealer.token_time(b"gAAAAABn" + bytes(40))  # a Fernet token's start
