"""Make "the relay never decodes media" checkable.

Forwarding bypasses aiortc's receivers, so no decoder should ever exist in a relay
process. This guard replaces the factory aiortc's receiver uses: any attempt is
counted in `conclave_relay_decoders_created_total` (tests assert it stays 0) and
refused.
"""

from __future__ import annotations

from typing import Any

import aiortc.rtcrtpreceiver

from relay import metrics


class DecodingForbidden(RuntimeError):
    """Something on the relay tried to decode media."""


def _refuse_decoder(codec: Any) -> Any:
    metrics.DECODERS_CREATED.inc()
    raise DecodingForbidden(f"the relay must not decode {codec.mimeType}")


def install_decoder_guard() -> None:
    aiortc.rtcrtpreceiver.get_decoder = _refuse_decoder  # type: ignore[attr-defined]
