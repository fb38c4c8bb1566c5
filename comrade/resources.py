"""psutil probes: what this node has and what it offers.

`Probe` is the interface; `PsutilProbe` reads the machine, `FixedProbe` is its in-memory twin
for tests.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass
from typing import Protocol

import psutil

from comrade.model import Resources


class Probe(Protocol):
    """Reads what the machine has free right now."""

    def total(self) -> Resources:
        """All cores, all memory (bytes), all disk (bytes) of the work dir's filesystem."""
        ...

    def available(self) -> Resources:
        """Free memory (psutil available, bytes), all cores, free disk of the work dir (bytes)."""
        ...


class PsutilProbe:
    """The real machine, with the disk measured where `path` lives.

    `available()` is cached for `cache_s` seconds: a scheduling pass runs on every Raft entry,
    and reading /proc/meminfo and statvfs each time would cost more than the pass itself.
    """

    def __init__(self, path: str, cache_s: float = 0.2) -> None:
        self._path = path
        self._cache_s = cache_s
        self._cached: tuple[float, Resources] | None = None

    def total(self) -> Resources:
        disk = shutil.disk_usage(self._path)
        return Resources(
            memory=psutil.virtual_memory().total,
            cores=psutil.cpu_count() or 1,
            storage=disk.total,
        )

    def available(self) -> Resources:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self._cache_s:
            return self._cached[1]
        value = Resources(
            memory=psutil.virtual_memory().available,
            cores=psutil.cpu_count() or 1,
            storage=shutil.disk_usage(self._path).free,
        )
        self._cached = (now, value)
        return value


@dataclass
class FixedProbe:
    """A probe that returns what it was given (tests)."""

    free: Resources

    def total(self) -> Resources:
        return self.free

    def available(self) -> Resources:
        return self.free


def offered(probe: Probe, cores: int | None, memory: int | None, storage: int | None) -> Resources:
    """What a node offers: the machine's totals, capped by the operator's options."""
    total = probe.total()
    return Resources(
        memory=min(memory, total.memory) if memory else total.memory,
        cores=min(cores, total.cores) if cores else total.cores,
        storage=min(storage, total.storage) if storage else total.storage,
    )


def free(probe: Probe, offer: Resources, reserved: Resources) -> Resources:
    """Free for new tasks: the lesser of (offer - reserved) and (available now - reserved)."""
    now = probe.available()
    return Resources(
        memory=min(offer.memory, now.memory) - reserved.memory,
        cores=offer.cores - reserved.cores,
        storage=min(offer.storage, now.storage) - reserved.storage,
    )


def automatic_tags() -> set[str]:
    """Tags every node gets at start: os-<system>, arch-<machine>, and has_gpu if one is visible.

    A GPU is "visible" when /dev/nvidia0 or /dev/kfd (AMD ROCm) exists, or nvidia-smi or
    rocm-smi is on PATH.
    """
    tags = {f"os-{platform.system().lower()}", f"arch-{platform.machine().lower()}"}
    if (
        os.path.exists("/dev/nvidia0")
        or os.path.exists("/dev/kfd")
        or shutil.which("nvidia-smi")
        or shutil.which("rocm-smi")
    ):
        tags.add("has_gpu")
    return tags
