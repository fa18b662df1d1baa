"""H.264 when both ends offer it (issue 3): the relay offers VP8 first and H.264
second; a publisher that prefers H.264 sends it, and the relay forwards it to
subscribers on the payload types they negotiated, starting them at a key frame with
its parameter sets; end-to-end encrypted per NAL unit (client/e2ee/h264.py)."""

from __future__ import annotations

from client.sdk import Session
from tests.integration.relay_harness import GrantMinter, RelayProcess, wait_for_frames


def sent_video_codec(session: Session) -> str:
    """The codec of the first payload type on our publish video m-line's answer."""
    pc = session._pc
    assert pc is not None and pc.localDescription is not None
    sections = pc.localDescription.sdp.split("\r\nm=")
    video = next(s for s in sections if s.startswith("video") and "a=sendonly" in s)
    first_pt = video.split("\r\n")[0].split()[3]
    rtpmap = next(line for line in video.split("\r\n") if line.startswith(f"a=rtpmap:{first_pt} "))
    return rtpmap.split()[1].split("/")[0]


async def test_an_h264_publisher_reaches_subscribers_in_h264(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    room = await minter.new_room()
    ann = Session(
        minter.join_response(relay, room, "p_ann", "ann"),
        "ann",
        ["video"],
        video_codec="H264",
    )
    ben = Session(minter.join_response(relay, room, "p_ben", "ben"), "ben", [])
    async with ann, ben:
        await wait_for_frames(ben, "ann", 30, timeout=30)
        assert sent_video_codec(ann) == "H264"
        late = Session(minter.join_response(relay, room, "p_cyd", "cyd"), "cyd", [])
        async with late:  # joins mid-stream: starts at the next key frame with its SPS
            await wait_for_frames(late, "ann", 30, timeout=30)
            assert ben.security_code == late.security_code == ann.security_code
        for session in (ben, late):
            assert session.stats()["ann"]["decrypt_failures"] == 0, session.stats()
    assert relay.metric("conclave_codec_mismatches_total") == 0
    assert relay.metric("conclave_relay_decoders_created_total") == 0


async def test_vp8_stays_the_default(relay: RelayProcess, minter: GrantMinter) -> None:
    room = await minter.new_room()
    ann = Session(minter.join_response(relay, room, "p_ann", "ann"), "ann", ["video"])
    ben = Session(minter.join_response(relay, room, "p_ben", "ben"), "ben", [])
    async with ann, ben:
        await wait_for_frames(ben, "ann", 10, timeout=30)
        assert sent_video_codec(ann) == "VP8"
