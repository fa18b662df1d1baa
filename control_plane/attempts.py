"""Limits on failed JoinRoom attempts, per meeting and per source address, shared by
every control-plane replica through etcd: adding replicas does not multiply an
attacker's budget (issue 5; docs/decisions.md).

Each limited key is a token bucket of failures: `burst` failures at once, refilled
at `per_minute`. An empty bucket locks the key out for `lockout_s`, doubling with
every lockout up to `max_lockout_s`. A locked-out attempt is refused before the
passcode is hashed, so an attack costs the cluster little CPU. The same applies to
meeting ids that do not exist, so lockouts tell nothing about which ids are real.

State lives under /conclave/attempts/, updated by compare-and-swap, on leases that
nobody renews: every record vanishes at most `forget_s` plus one lease period
after its last failure. Source addresses are never stored: only an HMAC of them
under a key the cluster draws once and keeps in etcd.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from conclave.store import EtcdStore

ATTEMPTS_PREFIX = "/conclave/attempts/"
KEY_KEY = ATTEMPTS_PREFIX + "address-key"
CAS_TRIES = 8
MAX_REMEMBERED = 100_000  # lockouts kept in memory per replica (bounded under attack)


@dataclass(frozen=True)
class Policy:
    burst: int = 5  # failures allowed at once
    per_minute: float = 5.0  # failures allowed per minute, sustained
    lockout_s: float = 60.0  # the first lockout; each next one doubles
    max_lockout_s: float = 3600.0
    forget_s: int = 3600  # a record is dropped this long after its last failure


class AttemptLimiter:
    """`admit` before checking a passcode, `failed` after a wrong one, `succeeded`
    after a right one."""

    def __init__(
        self, store: EtcdStore, policy: Policy | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self.policy = policy or Policy()
        self._clock = clock
        self._address_key: bytes | None = None
        self._lease: tuple[int, float] | None = None  # (id, renew after)
        self.lockouts = 0  # lockouts started by this replica (for metrics)
        self.refused = 0  # attempts refused while locked out
        # Lockouts this replica has seen, by key: refused again without asking etcd
        # until they end (an attack is mostly refusals; they must stay cheap).
        self._locked: dict[str, float] = {}

    def keys(self, room_id: str, source: str) -> list[str]:
        """The two limited keys of an attempt: its meeting, and its source address."""
        return [f"{ATTEMPTS_PREFIX}room/{room_id}", f"{ATTEMPTS_PREFIX}source/{self.tag(source)}"]

    def tag(self, source: str) -> str:
        """The HMAC of a source address under the cluster's address key: the same on
        every replica, and never the address itself. It names the source's attempt
        bucket, and goes into join grants as `source_tag` (a removed participant's
        address is refused by it)."""
        assert self._address_key is not None, "start() first"
        return hmac.new(self._address_key, source.encode(), hashlib.sha256).hexdigest()[:32]

    async def start(self) -> None:
        """Agree the address key with the other replicas (the first one draws it)."""
        _, stored = await self._store.create_if_absent(KEY_KEY, os.urandom(32).hex().encode())
        self._address_key = bytes.fromhex(stored.decode())

    async def admit(self, keys: list[str]) -> tuple[float, list[str]]:
        """Whether an attempt may go on: (seconds to wait, 0 if it may; the keys it
        spent a token of). A key with no recent failure has no record and costs no
        write; a key with one spends a token now, atomically, so that concurrent
        attempts through any replica cannot all pass the check before the first
        failure is written."""
        now = self._clock()
        known = max((self._locked.get(key, 0.0) - now for key in keys), default=0.0)
        if known > 0:
            self.refused += 1
            return known, []
        results = await asyncio.gather(*(self._take(key) for key in keys))
        wait = max(w for w, _ in results)
        if wait > 0:
            self.refused += 1
        return wait, [key for key, (_, spent) in zip(keys, results, strict=True) if spent]

    async def succeeded(self, spent: list[str]) -> None:
        """A right passcode: give back the tokens `admit` took, so that joining a
        meeting after someone's typo does not wear down its (or an office's) budget."""
        await asyncio.gather(*(self._give_back(key) for key in spent))

    async def failed(self, keys: list[str], spent: list[str]) -> None:
        """A wrong passcode: spend a token of each key that has not paid yet; a key
        whose bucket is empty is locked out."""
        await asyncio.gather(*(self._spend(key) for key in keys if key not in spent))

    async def _take(self, key: str) -> tuple[float, bool]:
        for _ in range(CAS_TRIES):
            raw, version = await self._store.get_versioned(key)
            if raw is None:
                return 0.0, False
            now = self._clock()
            state = self._refilled(_state(raw), now)
            if state["locked_until"] > now:
                self._remember_lock(key, state["locked_until"])
                return state["locked_until"] - now, False
            if state["tokens"] < 1:
                self._lock(state, now)
                wait, spent = state["locked_until"] - now, False
            else:
                state["tokens"] -= 1
                wait, spent = 0.0, True
            if await self._write(key, version, state):
                return wait, spent
        return 0.0, False  # contended beyond reason: let the passcode check decide

    async def _spend(self, key: str) -> None:
        for _ in range(CAS_TRIES):
            raw, version = await self._store.get_versioned(key)
            now = self._clock()
            state = self._refilled(_state(raw), now)
            state["tokens"] -= 1
            if state["tokens"] < 0 and state["locked_until"] <= now:
                self._lock(state, now)
            if await self._write(key, version, state):
                return

    async def _give_back(self, key: str) -> None:
        for _ in range(CAS_TRIES):
            raw, version = await self._store.get_versioned(key)
            if raw is None:
                return  # forgotten meanwhile: nothing to give back to
            state = self._refilled(_state(raw), self._clock())
            state["tokens"] = min(float(self.policy.burst), state["tokens"] + 1)
            if await self._write(key, version, state):
                return

    def _refilled(self, state: dict[str, float], now: float) -> dict[str, float]:
        """The bucket refilled up to `now`. A lockout that has ended leaves at least
        one try: the lockout was the penalty; its failure locks again, for twice as
        long (the back-off)."""
        policy = self.policy
        tokens = state.get("tokens", float(policy.burst))
        elapsed = max(0.0, now - state.get("at", now))
        tokens = min(float(policy.burst), tokens + elapsed * policy.per_minute / 60)
        locked_until = state.get("locked_until", 0.0)
        if 0 < locked_until <= now:
            tokens, locked_until = max(tokens, 1.0), 0.0
        return {
            "tokens": tokens,
            "at": now,
            "locked_until": locked_until,
            "strikes": state.get("strikes", 0.0),
        }

    def _remember_lock(self, key: str, until: float) -> None:
        now = self._clock()
        if len(self._locked) > MAX_REMEMBERED:  # drop the ended ones
            self._locked = {k: t for k, t in self._locked.items() if t > now}
        if len(self._locked) <= MAX_REMEMBERED:
            self._locked[key] = until

    def _lock(self, state: dict[str, float], now: float) -> None:
        policy = self.policy
        strikes = int(state["strikes"])
        state["locked_until"] = now + min(policy.lockout_s * 2**strikes, policy.max_lockout_s)
        state["strikes"] = strikes + 1
        state["tokens"] = 0.0
        self.lockouts += 1

    async def _write(self, key: str, version: int, state: dict[str, float]) -> bool:
        state["tokens"] = max(state["tokens"], 0.0)
        value = json.dumps(state).encode()
        written = await self._store.put_if_version(key, version, value, await self._lease_id())
        if written and state["locked_until"] > self._clock():
            self._remember_lock(key, state["locked_until"])
        return written

    async def _lease_id(self) -> int:
        """One expiring lease per period: records written in it outlive their last
        write by `forget_s` to `forget_s` + one period."""
        now = self._clock()
        if self._lease is None or now >= self._lease[1]:
            period = max(60, self.policy.forget_s // 6)
            lease = await self._store.grant_expiring_lease(self.policy.forget_s + period)
            self._lease = (lease, now + period)
        return self._lease[0]


def _state(raw: bytes | None) -> dict[str, float]:
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)}
