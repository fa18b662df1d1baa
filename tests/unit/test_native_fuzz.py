"""The native fuzzer (tests/fuzz/native.py) on the normal build, bounded: a few
thousand garbage and mutated inputs into every relay._native entry point that
takes packet bytes. `make fuzz-native` runs a million under AddressSanitizer and
UBSan (docs/native.md, step 5)."""

from __future__ import annotations

import time

import pytest

from relay import _native
from tests.fuzz import native as fuzz

SEED = 20261130
INPUTS = 3000
ENGINE_KEYS = ("engine_", "readable_calls", "sent_back")  # depend on the kernel's queues


def test_every_native_entry_point_survives_garbage() -> None:
    started = time.monotonic()
    result = fuzz.run(SEED, INPUTS)
    assert result.failures == []
    counts = result.counts
    assert counts["inputs"] == INPUTS
    for target in fuzz.TARGETS:  # every target was reached, and not only its refusals
        assert counts[target] > 0, target
    assert counts["parsed"] > 0 and counts["keyframe_sizes"] > 0 and counts["unprotected"] > 0
    assert counts["forwarded"] > 0 and counts["retransmitted"] > 0
    assert counts["engine_datagrams"] > 0 and counts["readable_calls"] > 0
    assert time.monotonic() - started < 15


def test_inputs_are_a_function_of_the_seed() -> None:
    def steady(counts: dict[str, int]) -> dict[str, int]:
        return {k: v for k, v in counts.items() if not k.startswith(ENGINE_KEYS)}

    first, second = fuzz.run(SEED + 1, 1000), fuzz.run(SEED + 1, 1000)
    assert steady(first.counts) == steady(second.counts)
    assert steady(fuzz.run(SEED + 2, 1000).counts) != steady(first.counts)


def test_an_undocumented_exception_is_a_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(codec: str, payload: bytes) -> tuple[bool, None]:
        if len(payload) > 20:
            raise RuntimeError("injected")
        return False, None

    monkeypatch.setattr(_native, "keyframe", broken)
    assert fuzz.main(["--inputs", "500", "--seed", str(SEED)]) == 1
    out, err = capsys.readouterr()
    assert "FAILED seed=" in err and "(keyframe," in err and "RuntimeError: injected" in err
    assert "input hex: " in err and "500 inputs in" in out


def test_a_run_is_bounded_in_time() -> None:
    result = fuzz.run(SEED, 10**9, deadline=time.monotonic() + 0.5)
    assert result.counts["stopped_at_deadline"] == 1 and result.failures == []
