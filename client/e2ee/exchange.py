"""One participant's end of the key exchange, carried by the relay's signalling.

The relay only passes opaque text (docs/signaling.md): each participant posts its
binding (`e2ee_binding`), the relay gives everyone the member list in join order
(`e2ee_members`), the leader that list elects sends each member its key message
(`e2ee_key`), and members install the epoch. `MeetingKeys` wraps a `GroupSession`
with the timers (rekey window, retiring old epochs) and a lock, because aiortc
encodes frames on executor threads while keys change on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from client.e2ee.context import SFrameContext, UnprotectResult
from client.e2ee.epoch import EPOCH_BITS, SENDER_BITS
from client.e2ee.group import GroupSession, Refused, elect_leader
from client.e2ee.group_errors import GroupKeyError, WireFormatError
from client.e2ee.identity import Binding, IdentityKey
from client.e2ee.suites import CipherSuite

log = logging.getLogger("conclave.client.e2ee")

SUITE = CipherSuite.AES_128_GCM_SHA256_128
# Frames of the previous epoch are accepted this long after a new one starts, for
# frames in flight; after that a member who left holds no key anyone accepts.
RETIRE_AFTER_S = 2.0

Send = Callable[[dict[str, Any]], Awaitable[None]]


def _text(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bytes(text: object) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class MeetingKeys:
    """Group keys of one participant in one meeting, and SFrame with them."""

    def __init__(
        self,
        meeting_id: str,
        participant_id: str,
        send: Send,
        *,
        identity: IdentityKey | None = None,
        on_epoch: Callable[[], None] | None = None,
    ) -> None:
        self.participant_id = participant_id
        self._send = send
        self._on_epoch = on_epoch
        self._lock = threading.Lock()
        self.group = GroupSession(
            meeting_id=meeting_id,
            participant_id=participant_id,
            identity=identity or IdentityKey.generate(),
            context=SFrameContext(SUITE),
        )
        #: key messages refused, by reason (a forged or replayed message lands here)
        self.refused: collections.Counter[str] = collections.Counter()
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False

    # --- state ---------------------------------------------------------------

    @property
    def security_code(self) -> str | None:
        with self._lock:
            return self.group.security_code

    @property
    def members(self) -> tuple[str, ...]:
        with self._lock:
            roster = self.group.roster
            return roster.participant_ids if roster is not None else ()

    # --- signalling ----------------------------------------------------------

    def binding_message(self) -> dict[str, Any]:
        return {"type": "e2ee_binding", "binding": _text(self.group.binding.to_bytes())}

    async def on_members(self, members: object) -> None:
        """The relay's member list: the elected leader keys exactly these members."""
        entries = [m for m in members if isinstance(m, dict)] if isinstance(members, list) else []
        order = [str(m.get("participant_id")) for m in entries]
        if self.participant_id not in order:
            return  # our own binding has not been announced yet
        if elect_leader(order) != self.participant_id:
            return
        bindings = []
        for entry in entries:
            data = _bytes(entry.get("binding"))
            try:
                bindings.append(Binding.from_bytes(data or b""))
            except (WireFormatError, ValueError):
                log.warning("a member's key binding is malformed: left out of the keys")
        now = asyncio.get_running_loop().time()
        with self._lock:
            messages = self.group.on_roster_change(bindings, now)
            if self.group.rejected:
                log.warning("%d binding(s) refused: left out of the keys", len(self.group.rejected))
        await self._issued(messages)

    async def on_key(self, message: object) -> None:
        """A key message from the leader (through the relay)."""
        data = _bytes(message)
        with self._lock:
            result = self.group.receive(data if data is not None else b"")
        if isinstance(result, Refused):
            self.refused[result.reason.value] += 1
            log.warning("key message refused: %s", result.reason.value)
            return
        self._installed()

    async def _issued(self, messages: list[Any] | None) -> None:
        """As leader: send what `on_roster_change`/`tick` produced, and come back
        when the rekey policy says the next epoch is due."""
        if messages is not None:  # an epoch was issued (and installed here)
            for message in messages:
                await self._send(
                    {
                        "type": "e2ee_key",
                        "to": message.recipient_id,
                        "message": _text(message.to_bytes()),
                    }
                )
            self._installed()
        with self._lock:
            due = self.group.policy.next_due()
        if due is not None:
            delay = max(0.0, due - asyncio.get_running_loop().time())
            self._later(delay, self._tick)

    def _installed(self) -> None:
        """A new epoch is live here (issued as leader or received as member)."""
        self._later(RETIRE_AFTER_S, self._retire)
        if self._on_epoch is not None:
            self._on_epoch()

    def _tick(self) -> None:
        async def tick() -> None:
            with self._lock:
                messages = self.group.tick(asyncio.get_running_loop().time())
            await self._issued(messages)

        task = asyncio.get_running_loop().create_task(tick())
        task.add_done_callback(_log_failure)

    def _retire(self) -> None:
        with self._lock:
            self.group.retire_previous_epoch()

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def run() -> None:
            assert handle is not None
            self._timers.discard(handle)
            callback()

        handle = loop.call_later(delay, run)
        self._timers.add(handle)

    def close(self) -> None:
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    # --- frames (any thread) ---------------------------------------------------

    def protect(self, plaintext: bytes, metadata: bytes) -> bytes | None:
        """SFrame-encrypt one frame; None before the first epoch (nothing is sent
        in clear, ever)."""
        with self._lock:
            return self.group.protect(plaintext, metadata)

    def missed(self, kid: int) -> bool:
        """Whether a frame under `kid` that did not decrypt should have: its key is
        not held, and it is not from an epoch before ours (a joiner is never keyed
        for those, by design) nor from outside the KID layout's view of a member."""
        with self._lock:
            if self.group.context.has_recv_key(kid):
                return False
            if kid >= 1 << (EPOCH_BITS + SENDER_BITS):
                return True
            return kid >> SENDER_BITS >= self.group.epoch

    def unprotect(self, ciphertext: bytes, metadata: bytes) -> UnprotectResult:
        """Decrypt one frame (failures are counted in the context's stats)."""
        with self._lock:
            return self.group.unprotect(ciphertext, metadata)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if isinstance(exc, GroupKeyError | ConnectionError):
            log.warning("key exchange step failed: %s", exc)
        else:
            log.error("key exchange step failed", exc_info=exc)
