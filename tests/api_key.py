"""The test run's API key (tests/conftest.py makes it) as gRPC call metadata, for
tests that call RoomService through a bare stub rather than RoomsClient."""

from __future__ import annotations

from conclave.credentials import METADATA_KEY, find_key, mint_token


def api_metadata() -> tuple[tuple[str, str], ...]:
    key = find_key()
    assert key is not None, "tests/conftest.py sets CONCLAVE_API_KEY_FILE"
    return ((METADATA_KEY, f"Bearer {mint_token(key)}"),)
