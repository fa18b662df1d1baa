"""Join attempt limits (control_plane/attempts.py) against an in-memory store with
etcd's compare-and-swap semantics, on a clock the test moves."""

from __future__ import annotations

from typing import Any, cast

from conclave.store import EtcdStore
from control_plane.attempts import AttemptLimiter, Policy


class MemoryStore:
    """get / get_versioned / put_if_version / create_if_absent, as etcd does them."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int]] = {}
        self.writes = 0

    async def get(self, key: str) -> bytes | None:
        entry = self.data.get(key)
        return entry[0] if entry else None

    async def get_versioned(self, key: str) -> tuple[bytes | None, int]:
        entry = self.data.get(key)
        return (entry[0], entry[1]) if entry else (None, 0)

    async def put_if_version(self, key: str, version: int, value: bytes, lease: int = 0) -> bool:
        if self.data.get(key, (b"", 0))[1] != version:
            return False
        self.data[key] = (value, version + 1)
        self.writes += 1
        return True

    async def create_if_absent(self, key: str, value: bytes) -> tuple[bool, bytes]:
        if key in self.data:
            return False, self.data[key][0]
        self.data[key] = (value, 1)
        return True, value

    async def grant_expiring_lease(self, ttl: int) -> int:
        return 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def limiter(policy: Policy) -> tuple[AttemptLimiter, MemoryStore, Clock]:
    store, clock = MemoryStore(), Clock()
    limits = AttemptLimiter(cast(EtcdStore, cast(Any, store)), policy, clock)
    await limits.start()
    return limits, store, clock


async def attempt(limits: AttemptLimiter, keys: list[str], right: bool) -> float:
    wait, spent = await limits.admit(keys)
    if wait == 0:
        await (limits.succeeded(spent) if right else limits.failed(keys, spent))
    return wait


async def test_a_burst_then_lockouts_that_double_and_leave_one_try() -> None:
    limits, _, clock = await limiter(Policy(burst=3, per_minute=1, lockout_s=10, max_lockout_s=25))
    keys = limits.keys("room-1", "198.51.100.7")
    assert [await attempt(limits, keys, False) for _ in range(3)] == [0, 0, 0]
    assert await attempt(limits, keys, False) == 10  # the bucket is empty: locked out
    clock.now += 5
    assert await attempt(limits, keys, False) == 5  # still (from memory, no etcd read)
    clock.now += 5
    assert await attempt(limits, keys, False) == 0  # one try after the lockout...
    assert await attempt(limits, keys, False) == 20  # ...failed: twice as long
    clock.now += 20
    assert await attempt(limits, keys, False) == 0
    assert await attempt(limits, keys, False) == 25  # capped
    clock.now += 25
    assert await attempt(limits, keys, True) == 0  # the real participant gets in
    assert limits.lockouts == 6  # both keys, the meeting and the address, each time


async def test_clean_keys_cost_no_write_and_addresses_are_not_stored() -> None:
    limits, store, _ = await limiter(Policy())
    keys = limits.keys("room-1", "198.51.100.7")
    writes = store.writes
    for _ in range(10):
        assert await attempt(limits, keys, True) == 0
    assert store.writes == writes  # no failure, no record, no write
    await attempt(limits, keys, False)
    assert not any("198.51.100.7" in key for key in store.data)
    assert limits.keys("room-1", "198.51.100.7") == keys  # stable per cluster key
    assert limits.keys("room-1", "198.51.100.8")[1] != keys[1]


async def test_a_meeting_is_limited_whatever_the_source() -> None:
    limits, _, _ = await limiter(Policy(burst=2, per_minute=1, lockout_s=10))
    for i in range(2):
        assert await attempt(limits, limits.keys("room-1", f"10.0.0.{i}"), False) == 0
    # A third address, never seen: the meeting's own bucket is empty.
    assert await attempt(limits, limits.keys("room-1", "10.0.0.9"), True) > 0
    assert await attempt(limits, limits.keys("room-2", "10.0.0.9"), True) == 0


async def test_refilled_tokens_allow_tries_again() -> None:
    limits, _, clock = await limiter(Policy(burst=2, per_minute=6, lockout_s=30))
    keys = limits.keys("room-1", "10.0.0.1")
    for _ in range(2):
        await attempt(limits, keys, False)
    clock.now += 10  # one token back (6 a minute)
    assert await attempt(limits, keys, False) == 0
    assert await attempt(limits, keys, False) == 30


async def test_right_passcodes_after_a_typo_do_not_wear_the_budget_down() -> None:
    """One wrong passcode leaves a record; the right ones after it give back the
    token they took, so a meeting (or an office behind one address) is not locked
    by its own participants."""
    limits, _, _ = await limiter(Policy(burst=3, per_minute=0.001, lockout_s=60))
    keys = limits.keys("room-1", "10.0.0.1")
    assert await attempt(limits, keys, False) == 0
    for _ in range(20):
        assert await attempt(limits, keys, True) == 0
    assert await attempt(limits, keys, False) == 0  # still two failures left
    assert await attempt(limits, keys, False) == 0
    assert await attempt(limits, keys, False) == 60
