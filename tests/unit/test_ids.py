"""Room and participant ids: format, entropy, key safety."""

from __future__ import annotations

import math
import re

from control_plane.ids import (
    ROOM_ID_ALPHABET,
    ROOM_ID_BITS,
    is_safe_id,
    new_participant_id,
    new_room_id,
)


def test_room_id_format_and_entropy() -> None:
    ids = {new_room_id() for _ in range(2000)}
    assert len(ids) == 2000
    for room_id in ids:
        assert re.fullmatch(r"[0-9a-z]{4}(-[0-9a-z]{4}){4}", room_id)
        assert set(room_id.replace("-", "")) <= set(ROOM_ID_ALPHABET)
        assert is_safe_id(room_id)
    assert len(set(ROOM_ID_ALPHABET)) == 32
    assert ROOM_ID_BITS == 20 * math.log2(len(ROOM_ID_ALPHABET)) >= 96  # issue 5
    # every symbol is used: the generator draws from the whole alphabet
    assert set("".join(ids).replace("-", "")) == set(ROOM_ID_ALPHABET)


def test_participant_ids_are_prefixed_and_unique() -> None:
    ids = {new_participant_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(p.startswith("p_") and is_safe_id(p) for p in ids)


def test_unsafe_ids_are_refused() -> None:
    for bad in ["", "a/b", "../x", "x" * 65, "a b", "é"]:
        assert not is_safe_id(bad)
