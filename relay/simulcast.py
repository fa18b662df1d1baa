"""Simulcast on publish video m-lines: the offer's lines and the answer's reading.

The relay is the offerer, so it asks for layers itself (docs/simulcast.md): rid
lines (RFC 8851), `a=simulcast:recv` (RFC 8853) and the rtp-stream-id header
extensions (RFC 8852) that tell which SSRC carries which layer. aiortc ignores all
of this, so the relay adds it to the text it sends and reads the answer itself.
"""

from __future__ import annotations

from dataclasses import dataclass

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
# Highest resolution first, with the scaleResolutionDownBy each layer is sent at.
LAYERS: tuple[tuple[str, int], ...] = (("h", 1), ("m", 2), ("l", 4))
PREFERRED_EXTENSION_IDS = (10, 11)  # not used by aiortc's offers


@dataclass(frozen=True)
class SimulcastAnswer:
    """What the answer accepted on one m-line: the rids it sends, best first, and
    the id under which packets carry their rid."""

    rids: tuple[str, ...]
    rid_extension_id: int


def _sections(sdp: str) -> list[list[str]]:
    """The session part and each m-section, as lists of lines."""
    sections: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        if line:
            sections[-1].append(line)
    return sections


def _mid(section: list[str]) -> str | None:
    return next((line[6:] for line in section if line.startswith("a=mid:")), None)


def _extension_ids(section: list[str]) -> dict[str, int]:
    """`a=extmap:<id>[/<direction>] <uri>` (RFC 8285 §8), by URI."""
    ids: dict[str, int] = {}
    for line in section:
        if line.startswith("a=extmap:"):
            fields = line[9:].split()
            if len(fields) >= 2 and fields[0].split("/")[0].isdigit():
                ids[fields[1]] = int(fields[0].split("/")[0])
    return ids


def offer_with_layers(sdp: str, mids: list[str]) -> str:
    """`sdp` with every m-section of `mids` asking to receive the three layers.
    Extension ids are unique across the BUNDLE group (RFC 8285 §6), hence chosen
    among those no m-section uses."""
    sections = _sections(sdp)
    used = {i for section in sections for i in _extension_ids(section).values()}
    free = [i for i in PREFERRED_EXTENSION_IDS if i not in used]
    free += [i for i in range(1, 15) if i not in used and i not in free]
    extra = [f"a=extmap:{free[0]} {RID_URI}", f"a=extmap:{free[1]} {REPAIRED_RID_URI}"]
    extra += [f"a=rid:{rid} recv" for rid, _ in LAYERS]
    extra.append("a=simulcast:recv " + ";".join(rid for rid, _ in LAYERS))
    lines: list[str] = []
    for section in sections:
        lines += section
        if section and section[0].startswith("m=") and _mid(section) in mids:
            lines += extra
    return "\r\n".join(lines) + "\r\n"


def offer_layers() -> list[dict[str, object]]:
    """The `simulcast` entry of an `offer` message for one m-line."""
    return [{"rid": rid, "scale": scale} for rid, scale in LAYERS]


def parse_answer(sdp: str, mid: str) -> SimulcastAnswer | None:
    """The layers the answer sends on `mid`, or None when it sends one stream.

    `a=simulcast:send` lists streams separated by `;`, alternatives by `,`, paused
    ones prefixed with `~` (RFC 8853 §5.1); only the first alternative is used. A rid
    counts only with its `a=rid:<rid> send` line (RFC 8851 §4) and when the relay
    offered it; without the rtp-stream-id extension SSRCs cannot be told apart."""
    section = next((s for s in _sections(sdp)[1:] if _mid(s) == mid), None)
    if section is None:
        return None
    rid_id = _extension_ids(section).get(RID_URI)
    declared = set()
    listed: list[str] = []
    for line in section:
        if line.startswith("a=rid:"):
            fields = line[6:].split()
            if len(fields) >= 2 and fields[1] == "send":
                declared.add(fields[0])
        elif line.startswith("a=simulcast:"):
            fields = line[12:].split()
            for direction, streams in zip(fields[::2], fields[1::2], strict=False):
                if direction == "send":
                    listed = [s.split(",")[0].lstrip("~") for s in streams.split(";")]
    offered = [rid for rid, _ in LAYERS]
    rids = tuple(rid for rid in offered if rid in listed and rid in declared)
    if rid_id is None or not rids:
        return None
    return SimulcastAnswer(rids, rid_id)
