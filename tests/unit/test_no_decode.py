"""The relay's decoder guard counts and refuses any attempt to decode."""

from __future__ import annotations

from collections.abc import Iterator

import aiortc.rtcrtpreceiver
import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from relay import metrics
from relay.no_decode import DecodingForbidden, install_decoder_guard


@pytest.fixture
def guard() -> Iterator[None]:
    original = aiortc.rtcrtpreceiver.get_decoder  # type: ignore[attr-defined]
    install_decoder_guard()
    yield
    aiortc.rtcrtpreceiver.get_decoder = original  # type: ignore[attr-defined]


def test_guard_counts_and_refuses(guard: None) -> None:
    before = metrics.DECODERS_CREATED._value.get()
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
    with pytest.raises(DecodingForbidden):
        aiortc.rtcrtpreceiver.get_decoder(codec)  # type: ignore[attr-defined]
    assert metrics.DECODERS_CREATED._value.get() == before + 1
