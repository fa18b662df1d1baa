"""The web client (web/, served by the control plane's gateway) in Debian's Chromium
with fake devices, on a real cluster: etcd, a control plane with `--http-port`, two
relays. The views it passes through are saved to docs/img/ for docs/hosting.md."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page

from conclave.processes import EtcdServer, free_port, wait_for_line
from tests.e2e.conftest import launch_browser
from tests.integration.relay_harness import RelayProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"


@dataclass
class WebCluster:
    etcd: EtcdServer
    grpc: str
    base: str  # the web client's origin
    relays: dict[str, RelayProcess]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[WebCluster]:
    etcd = EtcdServer()
    etcd.start()
    etcd.wait_ready()
    grpc_port, http_port = free_port(), free_port()
    control_plane = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_plane", "--etcd", etcd.endpoint,
        "--listen", f"127.0.0.1:{grpc_port}", "--http-port", str(http_port),
        "--web-create-organisation", "web",  # the page creates meetings, as in `conclave dev`
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert control_plane.stdout is not None
    await wait_for_line(control_plane.stdout, "control-plane ready", timeout=30)
    relays = {name: RelayProcess(name, etcd.endpoint) for name in ("relay-a", "relay-b")}
    await asyncio.gather(*(r.start() for r in relays.values()))
    yield WebCluster(etcd, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", relays)
    await asyncio.gather(*(r.stop() for r in relays.values()))
    control_plane.terminate()
    await control_plane.wait()
    etcd.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """conftest's, on this module's event loop (the cluster's)."""
    async with launch_browser() as launched:
        yield launched


async def new_page(browser: Browser, width: int = 1280, height: int = 800) -> Page:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    page.on("pageerror", lambda error: print("page error:", error))
    return page


async def state(page: Page) -> Any:
    """window.conclave.state: home, prejoin, waiting, meeting, reconnecting, ended."""
    return await page.evaluate("() => window.conclave && window.conclave.state")


async def until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: Callable[[], Awaitable[str]]
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(await what())
        await asyncio.sleep(0.2)


async def until_state(page: Page, wanted: str, timeout: float = 20) -> None:
    async def check() -> bool:
        return bool(await state(page) == wanted)

    async def what() -> str:
        hooks = await page.evaluate("() => JSON.stringify(window.conclave || {})")
        return f"page state is not {wanted!r}: {hooks}"

    await until(check, timeout, what)


async def frames_from(page: Page) -> dict[str, int]:
    """framesDecoded per remote participant, from each tile's <video> receiver."""
    result: dict[str, int] = await page.evaluate(
        """async () => {
          const out = {};
          for (const [pid, receiver] of Object.entries(window.conclave.videoReceivers())) {
            const stats = await receiver.getStats();
            for (const s of stats.values())
              if (s.type === "inbound-rtp" && s.kind === "video")
                out[pid] = (out[pid] || 0) + (s.framesDecoded || 0);
          }
          return out;
        }"""
    )
    return result


async def until_frames(page: Page, participant_id: str, count: int, timeout: float = 30) -> None:
    async def check() -> bool:
        return (await frames_from(page)).get(participant_id, 0) >= count

    async def what() -> str:
        return f"frames {await frames_from(page)}, hooks {await hooks(page)}"

    await until(check, timeout, what)


async def hooks(page: Page) -> str:
    text: str = await page.evaluate("() => JSON.stringify(window.conclave || {})")
    return text


async def create_meeting(
    page: Page,
    base: str,
    *,
    waiting_room: bool = False,
    screenshot: str = "",
    name: str = "Design review",
) -> tuple[str, str]:
    """Through the home view's form: (the meeting link, its passcode, "" for none)."""
    await page.goto(base + "/")
    await until_state(page, "home")
    await page.fill("#create-name", name)
    if waiting_room:
        await page.check("#create-waiting-room")
    if screenshot:
        await shot(page, screenshot)
    await page.focus("#create-name")
    await page.keyboard.press("Enter")  # the keyboard is enough
    await page.locator("#meeting-link").wait_for()
    link = await page.input_value("#meeting-link")
    assert link.startswith(base + "/m/"), link
    passcode = await page.locator("#created-passcode").inner_text()
    return link, passcode.strip()


async def join_by_link(
    page: Page, link: str, name: str, passcode: str = "", screenshot: str = ""
) -> None:
    await page.goto(link)
    await until_state(page, "prejoin")
    await page.fill("#display-name", name)
    if passcode:
        await page.fill("#passcode", passcode)
    if screenshot:
        await page.wait_for_function("() => document.querySelector('#preview').readyState >= 2")
        await shot(page, screenshot)
    await page.click("#join-button")


async def host_joins(page: Page, name: str = "Hana (host)") -> None:
    await page.click("#join-as-host")
    await until_state(page, "prejoin")
    await page.fill("#display-name", name)
    await page.click("#join-button")
    await until_state(page, "meeting")


async def tile_of(page: Page, name: str, timeout: float = 15) -> str:
    """The participant id of the first tile whose text holds `name`, once one does."""
    found = """name => ([...document.querySelectorAll('figure.tile[data-participant-id]')]
                 .find(t => t.textContent.includes(name)) || {dataset: {}})
                 .dataset.participantId || ''"""

    async def seen() -> bool:
        return bool(await page.evaluate(found, name))

    await until(seen, timeout, lambda: hooks(page))
    value: str = await page.evaluate(found, name)
    return value


async def python_joins(
    page: Page,
    control_plane: str,
    room_id: str,
    passcode: str,
    name: str,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`conclave join` as `name` beside the page: the page decodes its video; returns
    the CLI's report once it has left."""
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conclave.cli", "join", room_id, "--passcode", passcode,
        "--name", name, "--duration", "12", "--json", "--control-plane", control_plane,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        await until_frames(page, await tile_of(page, name, timeout=20), 30)
        out, err = await asyncio.wait_for(cli.communicate(), 60)
    finally:
        if cli.returncode is None:
            cli.kill()
            await cli.wait()
    assert cli.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out)
    return report


async def participant_id(page: Page) -> str:
    value: str = await page.evaluate("() => window.conclave.participantId")
    return value


async def security_code(page: Page) -> str:
    value: str = await page.evaluate("() => window.conclave.securityCode || ''")
    return value


UNLABELLED = """() => {
  const problems = [];
  for (const b of document.querySelectorAll("button")) {
    const name = (b.getAttribute("aria-label") || b.textContent || "").trim();
    if (!name) problems.push("button " + (b.id || b.outerHTML.slice(0, 80)));
  }
  for (const i of document.querySelectorAll("input, select, textarea")) {
    if (i.type === "hidden") continue;
    const labelled = (i.labels && i.labels.length) || i.getAttribute("aria-label")
      || i.getAttribute("aria-labelledby");
    if (!labelled) problems.push("field " + (i.id || i.outerHTML.slice(0, 80)));
  }
  return problems;
}"""


async def unlabelled(page: Page) -> list[str]:
    """Controls of the view on screen that a screen reader could not name."""
    problems: list[str] = await page.evaluate(UNLABELLED)
    return problems


async def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


async def test_two_pages_join_by_link_see_each_other_and_agree_on_the_code(
    cluster: WebCluster, browser: Browser
) -> None:
    host, guest = await new_page(browser), await new_page(browser)
    link, passcode = await create_meeting(host, cluster.base, screenshot="home")
    assert passcode
    assert await unlabelled(host) == []
    await host_joins(host)
    await join_by_link(guest, link, "Gus", passcode, screenshot="prejoin")
    await until_state(guest, "meeting")
    host_id, guest_id = await participant_id(host), await participant_id(guest)
    await until_frames(host, guest_id, 30)
    await until_frames(guest, host_id, 30)

    async def agreed() -> bool:
        codes = {await security_code(host), await security_code(guest)}
        return len(codes) == 1 and "" not in codes

    await until(agreed, 20, lambda: hooks(guest))
    code = await security_code(host)
    assert len(code.replace(" ", "")) == 25
    assert (await host.locator("#security-code").inner_text()).strip() == code
    assert await host.locator("#e2ee-indicator").is_visible()
    await until_frames(host, guest_id, 60)  # a moment more, for a picture in the shot
    await shot(host, "meeting")
    await host.click("#participants-button")
    assert await unlabelled(host) == [] and await unlabelled(guest) == []

    # The host may share its screen: the guest gets a screen tile with a picture.
    await host.click("#screen-button")
    screen = guest.locator(f'figure.tile[data-source="screen"][data-participant-id="{host_id}"]')
    await screen.wait_for(timeout=15_000)
    await guest.wait_for_function(
        """id => [...document.querySelectorAll('figure.tile[data-source="screen"] video')]
                 .some(v => v.dataset.participantId === id && v.videoWidth > 0)""",
        arg=host_id,
        timeout=15_000,
    )
    # On a phone-sized screen the grid reflows: nothing sticks out sideways.
    await guest.set_viewport_size({"width": 390, "height": 844})
    await asyncio.sleep(0.5)
    assert await guest.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    await shot(guest, "phone")
    for page in (host, guest):
        assert await page.evaluate("() => window.conclave.errors") == []
        await page.context.close()


async def test_a_page_and_a_python_conclave_join_see_each_other(
    cluster: WebCluster, browser: Browser
) -> None:
    page = await new_page(browser)
    link, passcode = await create_meeting(page, cluster.base)
    room_id = link.rsplit("/", 1)[1]
    await host_joins(page, "Pia")
    report = await python_joins(page, cluster.grpc, room_id, passcode, "Py")
    assert report["remote"]["Pia"]["video_frames_decoded"] >= 30, report
    assert report["remote"]["Pia"]["decrypt_failures"] == 0, report
    assert report["security_code"] == await security_code(page)
    await page.context.close()


async def test_waiting_room_guest_waits_until_the_host_admits_it(
    cluster: WebCluster, browser: Browser
) -> None:
    host, guest = await new_page(browser), await new_page(browser)
    link, passcode = await create_meeting(host, cluster.base, waiting_room=True)
    assert passcode.startswith("none")  # the waiting room is the gate
    await host_joins(host)
    await join_by_link(guest, link, "Gus")
    await until_state(guest, "waiting")
    assert await guest.locator("#waiting-view").is_visible()
    await shot(guest, "waiting")
    await host.locator("#waiting-banner").wait_for()
    await host.click("#waiting-banner-show")  # opens the panel (it may be open already)
    admit = host.get_by_role("button", name="Admit Gus")
    await admit.wait_for()
    await asyncio.sleep(1.0)
    # Waiting, the guest has no peer connection: nothing of the meeting reaches it.
    assert await guest.evaluate("() => Object.keys(window.conclave.videoReceivers()).length") == 0
    await shot(host, "host-queue")
    await admit.click()
    await until_state(guest, "meeting")
    await until_frames(guest, await participant_id(host), 15)
    for page in (host, guest):
        await page.context.close()


async def test_a_removed_participant_is_told_and_gets_no_more_media(
    cluster: WebCluster, browser: Browser
) -> None:
    host, guest = await new_page(browser), await new_page(browser)
    link, passcode = await create_meeting(host, cluster.base)
    await host_joins(host)
    await join_by_link(guest, link, "Mal", passcode)
    await until_state(guest, "meeting")
    host_id = await participant_id(host)
    await until_frames(guest, host_id, 15)
    await host.click("#participants-button")
    await host.get_by_role("button", name="Remove Mal").click()
    await until_state(guest, "ended")
    assert await guest.evaluate("() => window.conclave.reason") == "removed"
    assert "removed" in (await guest.locator("#ended-view").inner_text()).lower()
    await shot(guest, "removed")
    # Its connection is closed: no receiver of the meeting's media is left.
    assert await guest.evaluate("() => Object.keys(window.conclave.videoReceivers()).length") == 0
    await asyncio.sleep(2.0)
    assert await state(guest) == "ended"
    # And the host's page no longer shows it.
    tiles = await host.evaluate(
        "() => [...document.querySelectorAll('figure.tile')].map(t => t.textContent)"
    )
    assert not any("Mal" in tile for tile in tiles), tiles
    for page in (host, guest):
        await page.context.close()


async def test_pages_move_without_a_reconnect_view_when_their_relay_drains(
    cluster: WebCluster, browser: Browser
) -> None:
    """`conclave relay drain`: the pages get `reconnect`, fetch a grant for the
    meeting's next relay and switch to it while the old connection still runs, so
    they never show the reconnecting view. A third relay joins for this test, so
    that the last one still has a relay to move to."""
    spare = RelayProcess("relay-c", cluster.etcd.endpoint)
    await spare.start()
    cluster.relays[spare.node_id] = spare
    host, guest = await new_page(browser), await new_page(browser)
    link, passcode = await create_meeting(host, cluster.base)
    await host_joins(host)
    await join_by_link(guest, link, "Gail", passcode)
    await until_state(guest, "meeting")
    await until_frames(guest, await participant_id(host), 10)
    node = await host.evaluate("() => window.conclave.nodeId")
    await host.evaluate(SAMPLE_STATES)
    await guest.evaluate(SAMPLE_STATES)
    drain = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conclave.cli", "relay", "drain", node,
        "--etcd", cluster.etcd.endpoint, "--wait", "--deadline", "30",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(drain.communicate(), 60)
    assert drain.returncode == 0 and json.loads(out)["state"] == "drained", out
    for page in (host, guest):
        assert await page.evaluate("() => window.conclave.nodeId") != node
        seen = await page.evaluate("() => window.statesSeen")
        assert "reconnecting" not in seen and seen[-1] == "meeting", seen
    await until_frames(guest, await participant_id(host), 5, timeout=10)
    for page in (host, guest):
        await page.context.close()
    # The drained relay stays up, draining: the last test must not count on it.
    await cluster.relays.pop(node).stop()


# Every state the page passes through, sampled every 50 ms.
SAMPLE_STATES = """() => {
  window.statesSeen = [window.conclave.state];
  setInterval(() => {
    const now = window.conclave.state;
    if (now !== window.statesSeen[window.statesSeen.length - 1]) window.statesSeen.push(now);
  }, 50);
}"""


async def test_pages_reconnect_when_their_relay_dies(cluster: WebCluster, browser: Browser) -> None:
    """Runs last: it kills a relay of the module's cluster. The meeting has a waiting
    room and is locked by then: the guest, admitted before, comes back with its
    rejoin token, neither waiting again nor locked out."""
    host, guest = await new_page(browser), await new_page(browser)
    link, _ = await create_meeting(host, cluster.base, waiting_room=True)
    await host_joins(host)
    await join_by_link(guest, link, "Gus")
    await until_state(guest, "waiting")
    await host.locator("#waiting-banner").wait_for()
    await host.click("#waiting-banner-show")
    await host.get_by_role("button", name="Admit Gus").click()
    await until_state(guest, "meeting")
    await until_frames(guest, await participant_id(host), 15)
    await host.click("#lock-button")
    await host.wait_for_function(
        "() => document.querySelector('#lock-button').ariaPressed === 'true'"
    )
    node = await host.evaluate("() => window.conclave.nodeId")
    cluster.relays[node].kill()
    killed_at = time.monotonic()

    async def reconnecting() -> bool:
        return bool(await state(guest) == "reconnecting" or await state(host) == "reconnecting")

    await until(reconnecting, 5, lambda: hooks(guest))
    await until_state(guest, "meeting", timeout=15)
    await until_state(host, "meeting", timeout=15)
    new_host = await participant_id(host)
    await until_frames(guest, new_host, 5, timeout=max(1.0, 10 - (time.monotonic() - killed_at)))
    assert await host.evaluate("() => window.conclave.nodeId") != node
    assert await guest.evaluate("() => window.conclave.reason") is None
    for page in (host, guest):
        await page.context.close()
