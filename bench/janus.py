"""Janus 1.1 as a benchmark peer on loopback: the server, its HTTP/JSON signalling,
and load participants that count like Conclave's (client/loadtest).

The server runs from a config folder of our own (`-F`/`-C`): HTTP transport on
127.0.0.1 only, the VideoRoom plugin only (plugin and transport folders holding
just those two libraries), `event_loops = 2` (its fastest threading here), no STUN,
`ice_enforce_list = "127.0.0.1"`. Stock Janus never gathers a loopback candidate
(it and libnice skip interfaces flagged loopback), so it runs with the
LD_PRELOAD shim bench/janus_loopback.c, compiled here with `cc`.
See /work/shared/notes/janus-on-loopback.md for why each setting.

Signalling (Janus HTTP API): one Janus session per worker process with one
long-poll loop, one handle per participant. A publisher joins the room with an id
chosen by the benchmark, offers its clip tracks (aiortc) and applies Janus's
answer; a subscriber joins as a subscriber to the publishers' feeds, answers
Janus's offer and sends `start` with the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription

from client.loadtest.participants import CountingPeer

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
SHIM_SOURCE = HERE / "janus_loopback.c"
PLUGIN = "janus.plugin.videoroom"


def janus_paths() -> tuple[str, Path] | None:
    """(janus binary, its library folder) if the Debian package is installed."""
    binary = shutil.which("janus")
    if binary is None:
        return None
    for lib in (
        Path("/usr/lib/x86_64-linux-gnu/janus"),
        Path("/usr/lib/aarch64-linux-gnu/janus"),
        Path("/usr/lib/janus"),
    ):
        if (lib / "plugins" / "libjanus_videoroom.so").exists():
            return binary, lib
    return None


def ensure_janus() -> tuple[str, Path]:
    """Install Debian's janus with apt-get when missing (as root), else say how."""
    found = janus_paths()
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("Janus is not installed: run `sudo apt-get install janus` (Debian)")
    print("installing Debian janus (apt-get)", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "janus"], check=True, env=env
    )
    # the package starts a system service on its default ports: not ours, stop it
    subprocess.run(
        ["systemctl", "disable", "--now", "janus"],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    found = janus_paths()
    if found is None:
        raise RuntimeError("apt-get installed janus, but its VideoRoom plugin was not found")
    return found


class JanusServer:
    """One Janus process with a config folder of its own; `start()`, then `stop()`."""

    def __init__(
        self, http_port: int, rtp_ports: tuple[int, int] = (40000, 49999), event_loops: int = 2
    ) -> None:
        self.http_port = http_port
        self.rtp_ports = rtp_ports
        self.event_loops = event_loops
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-janus-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.version = ""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}/janus"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _configure(self, lib: Path) -> None:
        work = self.workdir
        for folder, library in (
            ("plugins", "libjanus_videoroom.so"),
            ("transports", "libjanus_http.so"),
        ):
            (work / folder).mkdir()
            (work / folder / library).symlink_to(lib / folder / library)
        for folder in ("events", "loggers", "conf"):
            (work / folder).mkdir()
        conf = work / "conf"
        (conf / "janus.jcfg").write_text(
            "general: {\n"
            f'  configs_folder = "{conf}"\n'
            f'  plugins_folder = "{work / "plugins"}"\n'
            f'  transports_folder = "{work / "transports"}"\n'
            f'  events_folder = "{work / "events"}"\n'
            f'  loggers_folder = "{work / "loggers"}"\n'
            "  debug_level = 3\n"
            '  interface = "127.0.0.1"\n'
            "  session_timeout = 0\n"
            f"  event_loops = {self.event_loops}\n"
            "  protected_folders = []\n"
            "}\n"
            "media: {\n"
            f'  rtp_port_range = "{self.rtp_ports[0]}-{self.rtp_ports[1]}"\n'
            "}\n"
            "nat: {\n"
            '  ice_enforce_list = "127.0.0.1"\n'
            "  ignore_mdns = true\n"
            "  nice_debug = false\n"
            "}\n"
            "events: { broadcast = false }\n"
        )
        (conf / "janus.transport.http.jcfg").write_text(
            "general: {\n"
            '  base_path = "/janus"\n'
            "  http = true\n"
            f"  port = {self.http_port}\n"
            f'  ip = "{HOST}"\n'
            "  https = false\n"
            "}\n"
            "admin: { admin_http = false admin_https = false }\n"
            "cors: {}\n"
        )
        (conf / "janus.plugin.videoroom.jcfg").write_text("general: {}\n")

    def _shim(self) -> Path:
        shim = self.workdir / "janus_loopback.so"
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(SHIM_SOURCE), "-ldl"], check=True
        )
        return shim

    def _launch(self) -> subprocess.Popen[bytes]:
        """Install if needed, configure, compile the shim, start the process."""
        binary, lib = ensure_janus()
        self._configure(lib)
        shim = self._shim()
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
        self.version = (
            (version.stdout or version.stderr).strip().splitlines()[0]
            if (version.stdout or version.stderr)
            else "?"
        )
        env = dict(os.environ, LD_PRELOAD=str(shim))
        with open(self.workdir / "janus.log", "wb") as log:
            return subprocess.Popen(
                [
                    binary,
                    "-F",
                    str(self.workdir / "conf"),
                    "-C",
                    str(self.workdir / "conf" / "janus.jcfg"),
                    "-N",
                ],  # -N: no colours in the log
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    async def start(self, timeout: float = 20.0) -> None:
        self.process = await asyncio.to_thread(self._launch)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"janus exited with {self.process.returncode}: {self.log_tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"{self.url}/info") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(
            f"janus did not answer on {self.url} within {timeout:g} s: {self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(
                (self.workdir / "janus.log").read_text(errors="replace").splitlines()[-lines:]
            )
        return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


class JanusError(RuntimeError):
    pass


class JanusSession:
    """A Janus session over HTTP: one long-poll loop delivering each event to the
    request (transaction) waiting for it."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.id = 0
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def open(self) -> None:
        reply = await self._post(self.url, {"janus": "create"})
        self.id = int(reply["data"]["id"])
        self._poller = asyncio.create_task(self._poll(), name="janus-poll")

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        body.setdefault("transaction", secrets.token_hex(8))
        async with asyncio.timeout(30.0), self.http.post(url, json=body) as response:
            reply: dict[str, Any] = await response.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(f"janus: {reply.get('error')}")
        return reply

    async def _poll(self) -> None:
        while True:
            try:
                async with self.http.get(
                    f"{self.url}/{self.id}", params={"maxev": "50"}
                ) as response:
                    data = await response.json(content_type=None)
            except (aiohttp.ClientError, OSError, ValueError):
                await asyncio.sleep(0.2)
                continue
            for event in data if isinstance(data, list) else [data]:
                waiter = self._pending.get(str(event.get("transaction")))
                if waiter is not None and event.get("janus") == "event" and not waiter.done():
                    waiter.set_result(event)

    async def attach(self) -> int:
        reply = await self._post(f"{self.url}/{self.id}", {"janus": "attach", "plugin": PLUGIN})
        return int(reply["data"]["id"])

    async def detach(self, handle: int) -> None:
        with contextlib.suppress(Exception):
            await self._post(f"{self.url}/{self.id}/{handle}", {"janus": "detach"})

    async def message(
        self,
        handle: int,
        body: dict[str, Any],
        jsep: dict[str, str] | None = None,
        timeout: float = 20.0,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A VideoRoom request: (the plugin's data, the JSEP it came with)."""
        transaction = secrets.token_hex(8)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = waiter
        request: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            request["jsep"] = jsep
        try:
            reply = await self._post(f"{self.url}/{self.id}/{handle}", request)
            if reply.get("janus") != "ack":
                event = reply
            else:
                async with asyncio.timeout(timeout):
                    event = await waiter
        finally:
            self._pending.pop(transaction, None)
        data: dict[str, Any] = event.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"videoroom {body.get('request')}: {data['error']}")
        return data, event.get("jsep")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._post(f"{self.url}/{self.id}", {"janus": "destroy"})


_sessions: dict[str, asyncio.Future[JanusSession]] = {}


async def shared_session(http: aiohttp.ClientSession, url: str) -> JanusSession:
    """One session per worker process and server."""
    if url not in _sessions:
        future: asyncio.Future[JanusSession] = asyncio.get_running_loop().create_future()
        _sessions[url] = future
        session = JanusSession(http, url)
        try:
            await session.open()
        except BaseException as exc:
            del _sessions[url]
            future.set_exception(exc)
            future.exception()
            raise
        future.set_result(session)
    return await _sessions[url]


async def create_room(http: aiohttp.ClientSession, url: str, room: int, publishers: int) -> None:
    """A VideoRoom room for one benchmark point: VP8/Opus, no bitrate cap, no FIR."""
    session = JanusSession(http, url)
    await session.open()
    try:
        handle = await session.attach()
        await session.message(
            handle,
            {
                "request": "create",
                "room": room,
                "publishers": max(publishers, 1),
                "bitrate": 0,
                "fir_freq": 0,
                "videocodec": "vp8",
                "audiocodec": "opus",
                "notify_joining": False,
                "permanent": False,
            },
        )
        await session.detach(handle)
    finally:
        await session.close()


async def destroy_room(http: aiohttp.ClientSession, url: str, room: int) -> None:
    session = JanusSession(http, url)
    await session.open()
    try:
        handle = await session.attach()
        with contextlib.suppress(JanusError):
            await session.message(handle, {"request": "destroy", "room": room})
        await session.detach(handle)
    finally:
        await session.close()


class JanusParticipant(CountingPeer):
    """A VideoRoom publisher (clip tracks) or subscriber (counting) on one handle.

    Entry: {"url", "room", "feed" (publisher: its id), "feeds" (subscriber: the
    publishers' ids), "publish" (kinds), "video" (clip settings)}."""

    def __init__(self, http: aiohttp.ClientSession, entry: dict[str, Any]) -> None:
        super().__init__(http, entry)
        self.entry = entry
        self.url = str(entry["url"])
        self.room = int(entry["room"])
        self.session: JanusSession | None = None
        self.handle = 0

    async def start(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            self.session = session = await shared_session(self.http, self.url)
            self.handle = await session.attach()
            if self.publish:
                await self._publish(session)
            else:
                await self._subscribe(session)

    async def _publish(self, session: JanusSession) -> None:
        await session.message(
            self.handle,
            {
                "request": "join",
                "ptype": "publisher",
                "room": self.room,
                "id": int(self.entry["feed"]),
                "display": f"pub-{self.entry['feed']}",
            },
        )
        pc = self.pc
        for track in self.tracks.values():
            pc.addTransceiver(track, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        _, jsep = await session.message(
            self.handle,
            {"request": "publish"},
            {"type": "offer", "sdp": pc.localDescription.sdp},
        )
        if jsep is None:
            raise JanusError("publish: no answer")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="answer"))
        # Janus lists a feed to subscribers only once its PeerConnection is up.
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed"):
                raise JanusError(f"publisher connection {pc.connectionState}")
            await asyncio.sleep(0.05)

    async def _subscribe(self, session: JanusSession) -> None:
        streams = [{"feed": int(feed)} for feed in self.entry["feeds"]]
        join = {"request": "join", "ptype": "subscriber", "room": self.room, "streams": streams}
        for attempt in range(50):  # a feed is listed once its publisher's media is set up
            try:
                _, jsep = await session.message(self.handle, join)
                break
            except JanusError as exc:
                if "No such feed" not in str(exc) or attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        if jsep is None:
            raise JanusError("subscribe: no offer")
        pc = self.pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        self.counter.hook(pc, jsep["sdp"])
        await session.message(
            self.handle, {"request": "start"}, {"type": "answer", "sdp": pc.localDescription.sdp}
        )

    async def leave(self) -> None:
        if self.session is not None and self.handle:
            await self.session.detach(self.handle)
            self.handle = 0
        await super().leave()
