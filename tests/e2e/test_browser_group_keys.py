"""The browser's key exchange (web/e2ee/group.js) against the Python one
(client/e2ee/group.py), message by message: either side can lead, the other
verifies and installs, and both end with the same keys and security code."""

from __future__ import annotations

import base64
from typing import Any

from playwright.async_api import Browser, Page

from client.e2ee.context import SFrameContext
from client.e2ee.group import EpochInstalled, GroupSession, KeyMessage, RefusalReason, Refused
from client.e2ee.identity import Binding, IdentityKey
from client.e2ee.suites import CipherSuite

MEETING = "room-keys"
SETUP = """async ([meetingId, participantId]) => {
  const { MeetingKeys } = await import("/web/e2ee/group.js");
  window.sent = [];
  window.keyUpdates = [];
  window.keys = new MeetingKeys({
    meetingId, participantId,
    send: (m) => window.sent.push(m),
    onKeys: (u) => window.keyUpdates.push({
      send: u.send && {kid: u.send.kid, key: Array.from(u.send.key)},
      recv: u.recv.map((k) => ({kid: k.kid, key: Array.from(k.key)})),
      remove: u.remove,
    }),
  });
  await window.keys.init();
  return window.keys.bindingMessage().binding;
}"""


def python_member(pid: str) -> GroupSession:
    return GroupSession(
        meeting_id=MEETING,
        participant_id=pid,
        identity=IdentityKey.generate(),
        context=SFrameContext(CipherSuite.AES_128_GCM_SHA256_128),
    )


async def js(page: Page, expression: str, arg: Any = None) -> Any:
    return await page.evaluate(expression, arg)


def members(*entries: tuple[str, str]) -> list[dict[str, str]]:
    return [{"participant_id": pid, "binding": binding} for pid, binding in entries]


async def test_python_leads_and_the_browser_installs(browser: Browser, page_url: str) -> None:
    page = await browser.new_page()
    await page.goto(f"{page_url}?")
    js_binding = await js(page, SETUP, [MEETING, "p_web"])
    leader = python_member("p_py")
    binding = Binding.from_bytes(base64.b64decode(js_binding))
    messages = leader.on_roster_change([leader.binding, binding], 0.0)
    assert messages is not None and [m.recipient_id for m in messages] == ["p_web"]
    # Tampered copies first: refused with the reasons Python would give.
    forged = bytearray(messages[0].to_bytes())
    forged[-1] ^= 1  # the leader's signature
    truncated = messages[0].to_bytes()[:-1]
    for bad in (bytes(forged), truncated):
        await js(page, "async (m) => window.keys.onKey(m)", base64.b64encode(bad).decode())
    assert await js(page, "() => window.keys.refused") == {"bad_signature": 1, "malformed": 1}
    await js(page, "() => { window.keys.refused = {}; }")
    wire = base64.b64encode(messages[0].to_bytes()).decode()
    await js(page, "async (m) => window.keys.onKey(m)", wire)
    state = await js(page, "() => ({code: window.keys.securityCode, refused: window.keys.refused})")
    assert state == {"code": leader.security_code, "refused": {}}
    # The browser's SFrame keys are the ones the Python leader derived: what the
    # browser will send under its KID opens with the leader's receive key.
    (update,) = await js(page, "() => window.keyUpdates")
    assert update["send"]["kid"] == (1 << 8) | 1  # epoch 1, sender index 1 (p_web)
    sender = SFrameContext(CipherSuite.AES_128_GCM_SHA256_128)
    sender.add_send_key(update["send"]["kid"], bytes(update["send"]["key"]))
    sealed = sender.protect(update["send"]["kid"], b"frame from the browser")
    assert sealed is not None
    assert leader.unprotect(sealed).plaintext == b"frame from the browser"
    await js(page, "async (m) => window.keys.onKey(m)", wire)  # a replay
    assert await js(page, "() => window.keys.refused") == {"stale_epoch": 1}
    await page.close()


async def test_the_browser_leads_and_python_installs(browser: Browser, page_url: str) -> None:
    page = await browser.new_page()
    await page.goto(f"{page_url}?")
    js_binding = await js(page, SETUP, [MEETING, "p_a_web"])  # first in join order
    member = python_member("p_b_py")
    py_binding = base64.b64encode(member.binding.to_bytes()).decode()
    listed = members(("p_a_web", js_binding), ("p_b_py", py_binding))
    await js(page, "async (m) => window.keys.onMembers(m)", listed)
    sent = await js(page, "() => window.sent")
    assert [(m["type"], m["to"]) for m in sent] == [("e2ee_key", "p_b_py")]
    result = member.receive(base64.b64decode(sent[0]["message"]))
    assert isinstance(result, EpochInstalled), result
    code = await js(page, "() => window.keys.securityCode")
    assert result.security_code == member.security_code == code
    assert result.members == ("p_a_web", "p_b_py") and result.leader_id == "p_a_web"
    # A second participant joins: after the rekey window, one new epoch for both.
    third = python_member("p_c_py")
    listed.append(
        {"participant_id": "p_c_py", "binding": base64.b64encode(third.binding.to_bytes()).decode()}
    )
    await js(page, "async (m) => window.keys.onMembers(m)", listed)
    await page.wait_for_function("window.sent.length === 3", timeout=5000)
    sent = (await js(page, "() => window.sent"))[1:]
    results = {
        m["to"]: (member if m["to"] == "p_b_py" else third).receive(
            KeyMessage.from_bytes(base64.b64decode(m["message"]))
        )
        for m in sent
    }
    assert all(isinstance(r, EpochInstalled) and r.epoch == 2 for r in results.values()), results
    assert (
        member.security_code
        == third.security_code
        == await js(page, "() => window.keys.securityCode")
    )
    # A message the browser signed cannot be redirected to another member.
    replayed = third.receive(base64.b64decode(sent[0]["message"]))
    assert isinstance(replayed, Refused)
    assert replayed.reason in (RefusalReason.WRONG_RECIPIENT, RefusalReason.STALE_EPOCH)
    await page.close()
