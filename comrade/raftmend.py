"""A mend for a pysyncobj (0.3.x) transport bug that stalls large Raft messages.

`TcpConnection.send` writes what the socket takes and keeps the rest in its buffer, but asks
its poller for "writable" events only while it is connecting or after a "writable" event found
data left over. A message bigger than the socket's send buffer (pysyncobj sets it to 64 KiB,
which Linux doubles) therefore waits for the connection's next `send`, such as the leader's
heartbeat every 100 ms: a task with 2 x 64 KiB of random output took about 170 ms from exit to
being final on every node, against 3 ms for a small one. After each `send` that leaves data
unsent, this mend subscribes the connection to "writable" events too, as pysyncobj's own event
handler does, so the rest goes out as soon as the peer reads (about 55 ms for that task, the
rest being pysyncobj's pickling, compression and encryption of the message).

It relies on pysyncobj's private names; where they are missing (another version) it changes
nothing and says so in the log.
"""

from __future__ import annotations

import logging
from typing import Any

from pysyncobj import tcp_connection
from pysyncobj.poller import POLL_EVENT_TYPE

log = logging.getLogger(__name__)

_PRIVATE = ("_TcpConnection__writeBuffer", "_TcpConnection__fileno", "_TcpConnection__poller")
_HANDLER = "_TcpConnection__processConnection"
_EVENTS = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR


def flush_partial_sends() -> bool:
    """Install the mend (once per process); False if this pysyncobj lacks what it needs."""
    cls: Any = tcp_connection.TcpConnection
    if getattr(cls.send, "_leoronic_mended", False):
        return True
    if not hasattr(cls, _HANDLER):
        log.warning("pysyncobj's TcpConnection has no %s: large Raft messages may stall", _HANDLER)
        return False
    original = cls.send

    def send(self: Any, message: Any) -> None:
        original(self, message)
        try:
            left, fileno, poller = (getattr(self, name) for name in _PRIVATE)
        except AttributeError:
            return
        if left and fileno is not None:
            poller.subscribe(fileno, getattr(self, _HANDLER), _EVENTS)

    send._leoronic_mended = True  # type: ignore[attr-defined]
    cls.send = send
    return True
