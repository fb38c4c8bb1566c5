"""The pysyncobj transport mend: a message bigger than the socket buffer goes out as the peer
reads, without waiting for the connection's next send."""

from __future__ import annotations

import os
import socket
from typing import Any

from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import TcpConnection

from comrade import raftmend


def test_a_message_bigger_than_the_socket_buffer_arrives_without_another_send() -> None:
    assert raftmend.flush_partial_sends()
    assert raftmend.flush_partial_sends()  # installing twice is harmless
    poller = createPoller("auto")
    a, b = socket.socketpair()
    a.setblocking(False)  # as pysyncobj's server and connect() leave them
    b.setblocking(False)
    received: list[Any] = []
    sender = TcpConnection(poller, socket=a)
    receiver = TcpConnection(poller, socket=b, onMessageReceived=received.append)
    try:
        for _ in range(3):  # both connected and idle: the first writable events are handled
            poller.poll(0.01)
        payload = os.urandom(4 << 20)  # incompressible, far beyond the socket's buffer
        sender.send({"type": "append_entries", "data": payload})
        # Only the poller runs from here on, as in pysyncobj's tick loop with nothing else to
        # send; without the mend the message stops at what the first write took.
        for _ in range(500):
            if received:
                break
            poller.poll(0.01)
        assert len(received) == 1, "the message stalled in the sender's buffer"
        assert received[0]["data"] == payload
    finally:
        sender.disconnect()
        receiver.disconnect()
