"""Stateful SFrame context for the media path (RFC 9605 §4.4.1, §9, Appendix A).

One context holds sending and receiving keys by KID, as in RFC 9605 Appendix A.
It keeps the guarantees the stateless functions leave to the application:

* a sending key's CTR only moves forward, so no (key, nonce) pair repeats (§7.4, §9.1);
* a base key is for encryption or for decryption, never both (§4.4.1);
* a per-KID sliding window rejects repeated and too-old CTRs (§9.3, after RFC 3711 §3.3.2);
* frames for a KID not yet known are buffered briefly, then dropped (§4.4.4).

Nothing on the media path (`protect`, `unprotect`) raises for a bad frame or a key
problem: it returns None or an `UnprotectResult` and counts the failure in `stats`,
so one forged packet cannot tear down a track. Key management calls do raise.
"""

from __future__ import annotations

import collections
import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, hmac

from client.e2ee.errors import (
    AuthenticationError,
    CounterExhaustedError,
    FormatError,
    HeaderError,
    KeyUsageError,
    SFrameError,
)
from client.e2ee.sframe import MAX_CTR, MAX_KID, Header, KeyContext, decode_header
from client.e2ee.suites import suite_params

DEFAULT_REPLAY_WINDOW = 1024  # CTRs; about 30 s of 30 fps video per KID
DEFAULT_PENDING_LIMIT = 64  # frames held for unknown KIDs, across all KIDs
DEFAULT_PENDING_TTL = 0.5  # seconds; long enough for a key to arrive with the first frames


class KeyUsage(enum.Enum):
    """The one role a base key may have (RFC 9605 §4.4.1)."""

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"


class DecryptStatus(enum.Enum):
    """Why `unprotect` did or did not yield a plaintext."""

    OK = "ok"
    PENDING = "pending"  # unknown KID: buffered until its key arrives or it expires
    MALFORMED = "malformed"  # header or length invalid
    UNKNOWN_KID = "unknown_kid"  # unknown KID and buffering is off
    WRONG_KEY_USAGE = "wrong_key_usage"  # the KID is one of our sending keys
    AUTH_FAILED = "auth_failed"  # tag did not verify
    REPLAY = "replay"  # CTR already accepted for this KID
    TOO_OLD = "too_old"  # CTR behind the replay window


class EncryptFailure(enum.Enum):
    """Why `protect` returned None."""

    UNKNOWN_KID = "unknown_kid"
    WRONG_KEY_USAGE = "wrong_key_usage"
    CTR_EXHAUSTED = "ctr_exhausted"
    INVALID_INPUT = "invalid_input"


@dataclass(frozen=True, slots=True)
class UnprotectResult:
    """Outcome of one decryption; `plaintext` is set only when `status` is OK."""

    status: DecryptStatus
    kid: int | None = None
    ctr: int | None = None
    plaintext: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status is DecryptStatus.OK


@dataclass(slots=True)
class SFrameStats:
    """Counters for metrics; failures are counted here instead of raised."""

    encrypted: int = 0
    decrypted: int = 0
    encrypt_failures: collections.Counter[EncryptFailure] = field(
        default_factory=collections.Counter
    )
    decrypt_failures: collections.Counter[DecryptStatus] = field(
        default_factory=collections.Counter
    )
    buffered: int = 0  # frames ever put in the unknown-KID buffer
    dropped_unknown_kid: int = 0  # buffered frames expired or evicted without a key


class ReplayWindow:
    """Sliding bitmap of accepted CTRs for one receiving KID (RFC 3711 §3.3.2 style).

    `check` is cheap and runs before decryption; `commit` runs only after the tag
    verified, so forged frames cannot move the window.
    """

    __slots__ = ("_bits", "_highest", "size")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW) -> None:
        if size < 1:
            raise ValueError("replay window must hold at least one CTR")
        self.size = size
        self._highest = -1
        self._bits = 0  # bit i set: CTR (highest - i) was accepted

    def check(self, ctr: int) -> DecryptStatus | None:
        """None if `ctr` may be accepted, else REPLAY or TOO_OLD."""
        if ctr > self._highest:
            return None
        diff = self._highest - ctr
        if diff >= self.size:
            return DecryptStatus.TOO_OLD
        if (self._bits >> diff) & 1:
            return DecryptStatus.REPLAY
        return None

    def commit(self, ctr: int) -> None:
        """Record an authenticated CTR."""
        if ctr > self._highest:
            shift = ctr - self._highest
            # cap the shift: a CTR jump of up to 2**64 must not build a huge integer
            self._bits = 1 if shift >= self.size else ((self._bits << shift) | 1)
            self._bits &= (1 << self.size) - 1
            self._highest = ctr
        else:
            self._bits |= 1 << (self._highest - ctr)


@dataclass(slots=True)
class _SendKey:
    key: KeyContext
    next_ctr: int


@dataclass(slots=True)
class _RecvKey:
    key: KeyContext
    window: ReplayWindow


@dataclass(frozen=True, slots=True)
class _Pending:
    kid: int
    metadata: bytes
    ciphertext: bytes
    expires: float


def _check_kid(kid: int) -> None:
    if not 0 <= kid <= MAX_KID:
        raise HeaderError(f"KID {kid} does not fit in 64 bits (RFC 9605 §4.3)")


class SFrameContext:
    """Send and receive keys for one cipher suite, with CTR, role and replay state."""

    def __init__(
        self,
        suite: int,
        *,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
        pending_limit: int = DEFAULT_PENDING_LIMIT,
        pending_ttl: float = DEFAULT_PENDING_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.suite = suite_params(suite).suite
        if replay_window < 1:
            raise ValueError("replay_window must be at least 1")
        if pending_limit < 0 or pending_ttl < 0:
            raise ValueError("pending_limit and pending_ttl must not be negative")
        self._replay_window = replay_window
        self._pending_limit = pending_limit
        self._pending_ttl = pending_ttl
        self._clock = clock
        self._send: dict[int, _SendKey] = {}
        self._recv: dict[int, _RecvKey] = {}
        self._retired_send: set[int] = set()
        # Role of every base key ever added, by keyed fingerprint: the secret itself
        # is not kept, and a per-context key makes the fingerprints useless elsewhere.
        self._fp_key = os.urandom(32)
        self._roles: dict[bytes, KeyUsage] = {}
        self._pending: collections.deque[_Pending] = collections.deque()
        self.stats = SFrameStats()

    # --- key management (may raise) ---------------------------------------------

    def _fingerprint(self, base_key: bytes) -> bytes:
        mac = hmac.HMAC(self._fp_key, hashes.SHA256())
        mac.update(bytes(base_key))
        return mac.finalize()

    def _claim_role(self, base_key: bytes, usage: KeyUsage) -> None:
        """RFC 9605 §4.4.1: mark each base_key for encryption or decryption, never both."""
        fp = self._fingerprint(base_key)
        role = self._roles.get(fp)
        if role is not None and role is not usage:
            raise KeyUsageError(f"base key is already registered for {role.value}")
        self._roles[fp] = usage

    def add_send_key(self, kid: int, base_key: bytes, *, next_ctr: int = 0) -> None:
        """Register an encryption-only key. `next_ctr` resumes a persisted counter (§9.1)."""
        _check_kid(kid)
        if kid in self._send or kid in self._retired_send:
            raise KeyUsageError(f"KID {kid} was already used for sending; CTRs would repeat")
        if kid in self._recv:
            raise KeyUsageError(f"KID {kid} is registered for decryption")
        if not 0 <= next_ctr <= MAX_CTR + 1:
            raise ValueError("next_ctr out of range")
        self._claim_role(base_key, KeyUsage.ENCRYPT)
        self._send[kid] = _SendKey(KeyContext(self.suite, kid, base_key), next_ctr)

    def add_recv_key(self, kid: int, base_key: bytes) -> list[UnprotectResult]:
        """Register a decryption-only key; returns results for frames buffered for it.

        Replacing an existing receive key for the same KID starts a fresh replay window.
        """
        _check_kid(kid)
        if kid in self._send or kid in self._retired_send:
            raise KeyUsageError(f"KID {kid} is registered for encryption")
        self._claim_role(base_key, KeyUsage.DECRYPT)
        self._recv[kid] = _RecvKey(
            KeyContext(self.suite, kid, base_key), ReplayWindow(self._replay_window)
        )
        return self._release_pending(kid)

    def remove_key(self, kid: int) -> None:
        """Forget a key. A removed sending KID can never be added again for sending."""
        if kid in self._send:
            del self._send[kid]
            self._retired_send.add(kid)
        self._recv.pop(kid, None)

    def has_recv_key(self, kid: int) -> bool:
        """Whether frames under `kid` can be decrypted now."""
        return kid in self._recv

    def next_ctr(self, kid: int) -> int:
        """The CTR the next `protect` with `kid` will use (to persist first, §9.1)."""
        entry = self._send.get(kid)
        if entry is None:
            raise KeyUsageError(f"KID {kid} is not a sending key")
        if entry.next_ctr > MAX_CTR:
            raise CounterExhaustedError(f"KID {kid} has no CTR values left")
        return entry.next_ctr

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # --- media path (never raises for bad frames or key problems) -----------------

    def protect(self, kid: int, plaintext: bytes, metadata: bytes = b"") -> bytes | None:
        """Encrypt with the sending key `kid`; None (counted) if that is not possible."""
        entry = self._send.get(kid)
        if entry is None:
            reason = EncryptFailure.WRONG_KEY_USAGE if kid in self._recv else None
            self._encrypt_failed(reason or EncryptFailure.UNKNOWN_KID)
            return None
        ctr = entry.next_ctr
        if ctr > MAX_CTR:
            self._encrypt_failed(EncryptFailure.CTR_EXHAUSTED)
            return None
        # Advance before sealing: even if sealing fails, this CTR is never offered again.
        entry.next_ctr = ctr + 1
        try:
            out = entry.key.seal(ctr, metadata, plaintext)
        except (SFrameError, ValueError):
            self._encrypt_failed(EncryptFailure.INVALID_INPUT)
            return None
        self.stats.encrypted += 1
        return out

    def unprotect(self, ciphertext: bytes, metadata: bytes = b"") -> UnprotectResult:
        """Decrypt one SFrame ciphertext; failures come back as a status, never raised."""
        self._expire_pending()
        data = bytes(ciphertext)
        try:
            header = decode_header(data)
        except SFrameError:
            return self._decrypt_failed(DecryptStatus.MALFORMED)
        entry = self._recv.get(header.kid)
        if entry is None:
            if header.kid in self._send or header.kid in self._retired_send:
                return self._decrypt_failed(DecryptStatus.WRONG_KEY_USAGE, header.kid, header.ctr)
            return self._buffer(header.kid, header.ctr, bytes(metadata), data)
        return self._open(entry, header, data, bytes(metadata))

    # --- internals ----------------------------------------------------------------

    def _open(
        self, entry: _RecvKey, header: Header, data: bytes, metadata: bytes
    ) -> UnprotectResult:
        verdict = entry.window.check(header.ctr)
        if verdict is not None:
            return self._decrypt_failed(verdict, header.kid, header.ctr)
        try:
            plaintext = entry.key.open(header, metadata, data)
        except AuthenticationError:
            return self._decrypt_failed(DecryptStatus.AUTH_FAILED, header.kid, header.ctr)
        except (FormatError, ValueError):
            return self._decrypt_failed(DecryptStatus.MALFORMED, header.kid, header.ctr)
        entry.window.commit(header.ctr)
        self.stats.decrypted += 1
        return UnprotectResult(DecryptStatus.OK, header.kid, header.ctr, plaintext)

    def _buffer(self, kid: int, ctr: int, metadata: bytes, data: bytes) -> UnprotectResult:
        """RFC 9605 §4.4.4: MAY buffer a frame whose KID has no key yet, briefly."""
        if self._pending_limit == 0 or self._pending_ttl == 0:
            return self._decrypt_failed(DecryptStatus.UNKNOWN_KID, kid, ctr)
        if len(self._pending) >= self._pending_limit:
            self._pending.popleft()  # the oldest is the least useful to a decoder
            self.stats.dropped_unknown_kid += 1
        self._pending.append(_Pending(kid, metadata, data, self._clock() + self._pending_ttl))
        self.stats.buffered += 1
        return UnprotectResult(DecryptStatus.PENDING, kid, ctr)

    def _expire_pending(self) -> None:
        now = self._clock()
        while self._pending and self._pending[0].expires <= now:
            self._pending.popleft()
            self.stats.dropped_unknown_kid += 1

    def _release_pending(self, kid: int) -> list[UnprotectResult]:
        self._expire_pending()
        ready = [p for p in self._pending if p.kid == kid]
        if not ready:
            return []
        self._pending = collections.deque(p for p in self._pending if p.kid != kid)
        entry = self._recv[kid]
        return [
            self._open(entry, decode_header(p.ciphertext), p.ciphertext, p.metadata) for p in ready
        ]

    def _encrypt_failed(self, reason: EncryptFailure) -> None:
        self.stats.encrypt_failures[reason] += 1

    def _decrypt_failed(
        self, status: DecryptStatus, kid: int | None = None, ctr: int | None = None
    ) -> UnprotectResult:
        self.stats.decrypt_failures[status] += 1
        return UnprotectResult(status, kid, ctr)
