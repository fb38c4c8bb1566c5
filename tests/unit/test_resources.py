"""offered() caps and free() arithmetic, with FixedProbe."""

from __future__ import annotations

import pytest

from comrade.model import Resources
from comrade.resources import FixedProbe, automatic_tags, free, offered

GiB = 1024**3
MACHINE = Resources(memory=16 * GiB, cores=8, storage=100 * GiB)


def test_fixed_probe_returns_what_it_was_given() -> None:
    probe = FixedProbe(MACHINE)
    assert probe.total() == probe.available() == MACHINE
    probe.free = Resources(1, 2, 3)
    assert probe.available() == Resources(1, 2, 3)


@pytest.mark.parametrize("cores, memory, storage, expected", [
    (None, None, None, MACHINE),
    (4, None, None, Resources(16 * GiB, 4, 100 * GiB)),
    (None, 2 * GiB, None, Resources(2 * GiB, 8, 100 * GiB)),
    (None, None, 10 * GiB, Resources(16 * GiB, 8, 10 * GiB)),
    (2, GiB, GiB, Resources(GiB, 2, GiB)),
    (64, None, None, MACHINE),  # a cap above the machine is the machine
    (None, 64 * GiB, None, MACHINE),
    (8, 16 * GiB, 100 * GiB, MACHINE),
])
def test_offered_caps(cores: int | None, memory: int | None, storage: int | None,
                      expected: Resources) -> None:
    assert offered(FixedProbe(MACHINE), cores, memory, storage) == expected


def test_offered_storage_cap_above_disk_is_the_disk() -> None:
    assert offered(FixedProbe(MACHINE), None, None, 1000 * GiB) == MACHINE


@pytest.mark.parametrize("available, offer, reserved, expected", [
    # nothing reserved, machine as offered
    (MACHINE, MACHINE, Resources(), MACHINE),
    # reservations come off the offer
    (MACHINE, MACHINE, Resources(GiB, 3, 10 * GiB), Resources(15 * GiB, 5, 90 * GiB)),
    # the offer caps memory and disk when more is available
    (MACHINE, Resources(4 * GiB, 2, 20 * GiB), Resources(GiB, 1, GiB),
     Resources(3 * GiB, 1, 19 * GiB)),
    # less available than offered: the available amount counts (reserved still subtracted)
    (Resources(2 * GiB, 8, 5 * GiB), MACHINE, Resources(GiB, 2, GiB),
     Resources(GiB, 6, 4 * GiB)),
    # cores come from the offer only, never from what the probe says
    (Resources(16 * GiB, 1, 100 * GiB), Resources(16 * GiB, 4, 100 * GiB), Resources(0, 1, 0),
     Resources(16 * GiB, 3, 100 * GiB)),
    # over-reserved: negative, so nothing fits
    (Resources(GiB, 8, GiB), MACHINE, Resources(2 * GiB, 9, 2 * GiB),
     Resources(-GiB, -1, -GiB)),
])
def test_free_arithmetic(available: Resources, offer: Resources, reserved: Resources,
                         expected: Resources) -> None:
    got = free(FixedProbe(available), offer, reserved)
    assert got == expected
    assert Resources(1, 1, 1).fits_in(got) is (min(expected.memory, expected.cores,
                                                    expected.storage) >= 1)


def test_free_follows_the_probe() -> None:
    probe = FixedProbe(MACHINE)
    offer = offered(probe, 4, 8 * GiB, 50 * GiB)
    assert free(probe, offer, Resources()) == Resources(8 * GiB, 4, 50 * GiB)
    probe.free = Resources(GiB, 8, GiB)  # memory and disk filled up by something else
    assert free(probe, offer, Resources(0, 1, 0)) == Resources(GiB, 3, GiB)


def test_resources_arithmetic() -> None:
    a, b = Resources(5, 4, 3), Resources(1, 1, 1)
    assert a - b == Resources(4, 3, 2) and a - b + b == a
    assert b.fits_in(a) and not a.fits_in(b) and Resources().fits_in(Resources())


def test_automatic_tags_name_os_and_arch() -> None:
    tags = automatic_tags()
    assert any(t.startswith("os-") for t in tags) and any(t.startswith("arch-") for t in tags)
    assert tags <= {t for t in tags if t.startswith(("os-", "arch-"))} | {"has_gpu"}
