"""Identifiers: the body's encoding is Crockford base32 of the stamp and the random bits,
exactly as RFC 4648 base32 mapped onto Crockford's alphabet would give it."""

from __future__ import annotations

import base64
import os

import pytest

from tether import ids
from tether.ids import IdPrefix, looks_like, new_id, new_ids

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())


def _reference(raw: bytes) -> str:
    return base64.b32encode(raw).translate(_FROM_RFC4648).decode()


def test_the_random_part_is_base32_of_its_bytes() -> None:
    for raw in [bytes(10), b"\xff" * 10, bytes(range(10)), *(os.urandom(10) for _ in range(2000))]:
        assert ids._random16(int.from_bytes(raw)) == _reference(raw)


@pytest.mark.parametrize("ms", [0, 1, 31, 32, 1023, 1024, 1_700_000_000_000, 2**48 - 1])
def test_the_stamp_is_the_milliseconds_in_base32(ms: int) -> None:
    stamp = ids._encode(ms, 10)
    assert len(stamp) == 10
    assert sum(_CROCKFORD.index(c) << (5 * (9 - i)) for i, c in enumerate(stamp)) == ms


def test_ids_sort_by_time_and_match_their_pattern() -> None:
    earlier = new_id(IdPrefix.EVENT, now_ms=1_700_000_000_000)
    later = new_ids(IdPrefix.EVENT, 3, now_ms=1_700_000_000_001)
    assert all(earlier < x for x in later)
    assert len(set(later)) == 3
    assert all(looks_like(IdPrefix.EVENT, x) for x in [earlier, *later])
    assert all(x[4:14] == later[0][4:14] for x in later)  # one millisecond, one stamp
    assert not looks_like(IdPrefix.AGENT, earlier)
