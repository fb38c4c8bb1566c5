"""LAN discovery with mDNS/DNS-SD (the zeroconf library): boxes find each other without --peer.

Every worker announces `_leoronic._tcp.local.` with its RPC address, its kind and a cluster
fingerprint: HMAC-SHA256(cookie, "leoronic discovery v1"), 16 hex digits. The fingerprint
carries no secret (the cookie cannot be recovered from it) and only lets a node tell beacons
of its own cluster from others; a beacon triggers nothing but an authenticated join attempt.

Discovery is on by default and off (a) with `--no-discovery` / `LEORONIC_DISCOVERY=0`, and
(b) whenever the node binds a loopback address: several nodes on one box name each other with
--peer, and no multicast leaves for the LAN from tests or benchmarks.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from comrade.config import binds_everywhere

if TYPE_CHECKING:  # zeroconf is imported only when discovery runs (it costs ~6 MB of RSS)
    from zeroconf import Zeroconf

log = logging.getLogger(__name__)

SERVICE = "_leoronic._tcp.local."


def fingerprint(cookie: str) -> str:
    """The cluster's public fingerprint (16 hex digits)."""
    return hmac.new(cookie.encode(), b"leoronic discovery v1", hashlib.sha256).hexdigest()[:16]


def enabled(bind: str) -> bool:
    """Discovery runs unless LEORONIC_DISCOVERY=0 or the bind address is a loopback one."""
    if os.environ.get("LEORONIC_DISCOVERY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        return not ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind not in ("localhost",)


def _zeroconf(bind: str) -> Zeroconf:
    from zeroconf import IPVersion, Zeroconf

    if binds_everywhere(bind):
        return Zeroconf(ip_version=IPVersion.V4Only)
    return Zeroconf(interfaces=[bind], ip_version=IPVersion.V4Only)


class Beacon:
    """Announces one node on the LAN until stopped."""

    def __init__(self, name: str, kind: str, advertise: str, port: int, bind: str,
                 cookie: str) -> None:
        from zeroconf import ServiceInfo

        self._zc: Zeroconf | None = None
        self._info = ServiceInfo(
            SERVICE,
            f"{name}.{SERVICE}",
            addresses=[socket.inet_aton(advertise)],
            port=port,
            properties={"kind": kind, "cluster": fingerprint(cookie), "node": name},
        )
        self._bind = bind

    def start(self) -> None:
        """Register the service (non-blocking for the caller's purposes)."""
        try:
            self._zc = _zeroconf(self._bind)
            self._zc.register_service(self._info, allow_name_change=True)
        except (OSError, ValueError) as exc:  # no multicast here: discovery is best effort
            log.warning("discovery beacon not started: %s", exc)
            self._zc = None

    def stop(self) -> None:
        """Withdraw the announcement."""
        if self._zc is not None:
            try:
                self._zc.unregister_service(self._info)
            finally:
                self._zc.close()
                self._zc = None


def discover(cookie: str, bind: str, seconds: float = 2.0, kind: str = "worker") -> list[str]:
    """HOST:PORT of the nodes of our cluster (same fingerprint, given kind) heard within
    `seconds`, in address order. [] if none, or if multicast is unavailable."""
    from zeroconf import ServiceBrowser, ServiceStateChange

    mine = fingerprint(cookie)
    found: dict[str, str] = {}
    names: set[str] = set()
    lock = threading.Lock()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: Any) -> None:
        if state_change is ServiceStateChange.Added:
            with lock:
                names.add(name)

    try:
        zc = _zeroconf(bind)
    except (OSError, ValueError) as exc:
        log.warning("discovery unavailable: %s", exc)
        return []
    try:
        browser = ServiceBrowser(zc, SERVICE, handlers=[on_change])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with lock:
                pending = names - set(found)
            for name in pending:
                info = zc.get_service_info(SERVICE, name, timeout=500)
                addr = _address_of(info, mine, kind)
                if addr:
                    found[name] = addr
            time.sleep(0.1)  # browse interval, bounded by the deadline above
        browser.cancel()
    finally:
        zc.close()
    return sorted(set(found.values()), key=_key)


def _address_of(info: Any, mine: str, kind: str) -> str:
    if info is None:
        return ""
    props = {k.decode(): (v.decode() if isinstance(v, bytes) else "")
             for k, v in (info.properties or {}).items()}
    if props.get("cluster") != mine or props.get("kind") != kind:
        return ""
    addrs = info.parsed_addresses()
    return f"{addrs[0]}:{info.port}" if addrs else ""


def _key(addr: str) -> tuple[int, int]:
    host, _, port = addr.rpartition(":")
    try:
        return int(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return 0, int(port)
