"""web/e2ee/sframe.js in Chromium against RFC 9605 Appendix C and the Python SFrame.

A browser and a Python client in one meeting must decrypt each other's frames, so
the JavaScript library has to be byte-identical with client/e2ee/sframe.py: every
published vector, both interop directions on random inputs, and the same verdict
(success, or the same kind of error) on broken input. The expected values are all
computed here in Python; the page only runs sframe.js and reports what it got.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from client.e2ee import sframe
from client.e2ee.context import SFrameContext
from client.e2ee.errors import (
    AuthenticationError,
    FormatError,
    HeaderError,
    UnsupportedCipherSuiteError,
)
from client.e2ee.sframe import CipherSuite

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "unit" / "vectors" / "rfc9605_appendix_c.json").read_text()
)
EXPECTED_VECTORS = 289 + 3 + 5  # C.1 headers, C.2 AES-CTR+HMAC, C.3 one per suite
ALL_SUITES = [int(s) for s in CipherSuite]

# Prepended to every page.evaluate body. KID and CTR cross the Playwright boundary
# as decimal strings: JSON numbers are doubles and lose bits above 2**53.
PRELUDE = """
const S = await import("/web/e2ee/sframe.js");
const unhex = (s) => Uint8Array.from(s.match(/../g) ?? [], (b) => parseInt(b, 16));
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const outcome = async (run) => {
  try {
    const r = await run();
    return {ok: [String(r.kid), String(r.ctr), "plaintext" in r ? hex(r.plaintext) : r.length]};
  } catch (e) {
    return {error: e instanceof S.SFrameError ? e.code : `not SFrameError: ${e}`};
  }
};
"""


async def run_js(page: Page, body: str, arg: Any = None) -> Any:
    """Run `body` (an async function body that sees `arg`, S, hex, unhex, outcome)."""
    return await page.evaluate(f"async (arg) => {{ {PRELUDE}\n{body}\n}}", arg)


@pytest.fixture
async def page(browser: Browser, page_url: str) -> AsyncIterator[Page]:
    opened = await browser.new_page()
    await opened.goto(page_url)  # a secure context (127.0.0.1): crypto.subtle exists
    yield opened
    await opened.close()


def error_code(exc: sframe.SFrameError) -> str:
    """The `code` sframe.js gives the same failure (client/e2ee/errors.py classes)."""
    for cls, code in [
        (UnsupportedCipherSuiteError, "suite"),
        (HeaderError, "header"),  # before FormatError: it is a subclass
        (FormatError, "format"),
        (AuthenticationError, "auth"),
    ]:
        if isinstance(exc, cls):
            return code
    raise AssertionError(f"unexpected SFrameError {exc!r}")


def header_outcome(data: bytes) -> dict[str, Any]:
    try:
        parsed = sframe.decode_header(data)
    except sframe.SFrameError as exc:
        return {"error": error_code(exc)}
    return {"ok": [str(parsed.kid), str(parsed.ctr), len(parsed.encoded)]}


def decrypt_outcome(suite: int, key: bytes, meta: bytes, ct: bytes) -> dict[str, Any]:
    try:
        kid, ctr, pt = sframe.decrypt(suite, key, meta, ct)
    except sframe.SFrameError as exc:
        return {"error": error_code(exc)}
    return {"ok": [str(kid), str(ctr), pt.hex()]}


def non_minimal(headers: list[bytes]) -> int:
    """How many of `headers` Python refuses for a non-minimal KID or CTR (§4.3)."""
    count = 0
    for data in headers:
        try:
            sframe.decode_header(data)
        except HeaderError as exc:
            count += "minimally" in str(exc)
    return count


def random_u64(rng: random.Random) -> int:
    """0..2**64-1 with every encoded length (0 to 8 extra bytes) equally likely."""
    size = rng.randrange(9)
    return rng.randrange(8) if size == 0 else rng.randrange(1 << (8 * size - 8), 1 << (8 * size))


# --- RFC 9605 Appendix C ------------------------------------------------------------


async def test_every_rfc9605_vector_in_chromium(page: Page) -> None:
    def stringify(vec: dict[str, Any]) -> dict[str, Any]:
        return {k: str(v) if k in ("kid", "ctr") else v for k, v in vec.items()}

    data = {
        section: [stringify(v) for v in VECTORS[section]]
        for section in ("header", "aes_ctr_hmac", "sframe")
    }
    result = await run_js(
        page,
        """
const failures = [];
let checked = 0;
const same = (label, got, want) => {
  if (got !== want) failures.push(`${label}: ${got} != ${want}`);
};
for (const v of arg.header) {  // C.1
  const kid = BigInt(v.kid), ctr = BigInt(v.ctr), at = `header kid=${v.kid} ctr=${v.ctr}`;
  same(at, hex(S.encodeHeader(kid, ctr)), v.header);
  const parsed = S.decodeHeader(unhex(v.header + "aabb"));  // self-delimiting
  same(at + " decode", `${parsed.kid} ${parsed.ctr} ${parsed.length}`,
       `${kid} ${ctr} ${v.header.length / 2}`);
  checked++;
}
for (const v of arg.aes_ctr_hmac) {  // C.2
  const at = `aead suite ${v.cipher_suite}`;
  const [enc, auth] = S.deriveSubkeys(v.cipher_suite, unhex(v.key));
  same(at + " subkeys", hex(enc) + hex(auth), v.enc_key + v.auth_key);
  const aead = await S.Aead.create(v.cipher_suite, unhex(v.key));
  same(at + " ct", hex(await aead.encrypt(unhex(v.nonce), unhex(v.aad), unhex(v.pt))), v.ct);
  same(at + " pt", hex(await aead.decrypt(unhex(v.nonce), unhex(v.aad), unhex(v.ct))), v.pt);
  checked++;
}
for (const v of arg.sframe) {  // C.3
  const suite = v.cipher_suite, kid = BigInt(v.kid), ctr = BigInt(v.ctr);
  const at = `sframe suite ${suite}`, key = unhex(v.base_key), meta = unhex(v.metadata);
  same(at + " key label", hex(S.keyLabel(suite, kid)), v.sframe_key_label);
  same(at + " salt label", hex(S.saltLabel(suite, kid)), v.sframe_salt_label);
  same(at + " secret", hex(await S.extractSecret(suite, key)), v.sframe_secret);
  const derived = await S.deriveKeySalt(suite, kid, key);
  same(at + " key", hex(derived.key), v.sframe_key);
  same(at + " salt", hex(derived.salt), v.sframe_salt);
  same(at + " nonce", hex(S.makeNonce(derived.salt, ctr)), v.nonce);
  same(at + " aad", hex(S.encodeHeader(kid, ctr)) + v.metadata, v.aad);
  same(at + " ct", hex(await S.encrypt(suite, key, kid, ctr, meta, unhex(v.pt))), v.ct);
  const opened = await S.decrypt(suite, key, meta, unhex(v.ct));
  same(at + " decrypt", `${opened.kid} ${opened.ctr} ${hex(opened.plaintext)}`,
       `${kid} ${ctr} ${v.pt}`);
  checked++;
}
return {checked, failures};
""",
        data,
    )
    checked, failures = result["checked"], result["failures"]
    assert failures == [], f"{len(failures)} mismatches over {checked} vectors: {failures[:20]}"
    assert checked == EXPECTED_VECTORS, f"{checked} of {EXPECTED_VECTORS} RFC 9605 vectors checked"
    assert sorted(v["cipher_suite"] for v in data["sframe"]) == ALL_SUITES


# --- byte-identical with Python, both directions ------------------------------------


async def check_random_frames(page: Page) -> None:
    """Byte-identical ciphertext both ways, every suite, every KID/CTR length."""
    rng = random.Random(9605)
    frames: list[dict[str, Any]] = []
    for suite in ALL_SUITES:
        for size in [0, 1, 15, 16, 17, 200, 1500]:
            frames.append(
                {
                    "suite": suite,
                    "key": rng.randbytes(rng.choice([16, 32])).hex(),
                    "kid": str(random_u64(rng)),
                    "ctr": str(random_u64(rng)),
                    "meta": rng.randbytes(rng.randrange(12)).hex(),
                    "pt": rng.randbytes(size).hex(),
                }
            )
    for f in frames:  # Python -> JavaScript
        key, meta, pt = (bytes.fromhex(f[k]) for k in ("key", "meta", "pt"))
        f["python_ct"] = sframe.encrypt(
            f["suite"], key, int(f["kid"]), int(f["ctr"]), meta, pt
        ).hex()
    result = await run_js(
        page,
        """
const out = [];
for (const f of arg) {
  const [key, meta] = [unhex(f.key), unhex(f.meta)];
  const js = await S.encrypt(f.suite, key, BigInt(f.kid), BigInt(f.ctr), meta, unhex(f.pt));
  const opened = await outcome(() => S.decrypt(f.suite, key, meta, unhex(f.python_ct)));
  out.push({js_ct: hex(js), opened});
}
return out;
""",
        frames,
    )
    assert len(result) == len(frames) == 35
    for f, got in zip(frames, result, strict=True):
        assert got["opened"] == {"ok": [f["kid"], f["ctr"], f["pt"]]}, f  # JS decrypts Python
        assert got["js_ct"] == f["python_ct"], f  # and encrypts the very same bytes
        key, meta, js_ct = (bytes.fromhex(v) for v in (f["key"], f["meta"], got["js_ct"]))
        kid, ctr, pt = sframe.decrypt(f["suite"], key, meta, js_ct)  # JavaScript -> Python
        assert (kid, ctr, pt.hex()) == (int(f["kid"]), int(f["ctr"]), f["pt"])


async def check_header_codec(page: Page) -> None:
    """Every config byte, truncated and non-minimal fields: the same verdict as Python."""
    rng = random.Random(4)
    # a zero byte at each offset makes a KID or CTR field non-minimal for some configs
    tails = [b"", b"\x00" * 9, b"\x01" + b"\x00" * 8, rng.randbytes(9)]
    tails += [b"\xff" * i + b"\x00" + b"\xff" * (8 - i) for i in range(10)]
    inputs = [bytes([config]) + tail for config in range(256) for tail in tails]
    inputs += [sframe.encode_header(2**64 - 1, 2**64 - 1)[:n] for n in range(18)]  # truncations
    values = [0, 7, 8, 255, 256, 2**53, 2**53 + 1, 2**64 - 1] + [random_u64(rng) for _ in range(40)]
    pairs = [(str(k), str(c)) for k in values for c in values[:12]]
    result = await run_js(
        page,
        """
const decoded = [];
for (const h of arg.inputs) decoded.push(await outcome(() => S.decodeHeader(unhex(h))));
const encoded = arg.pairs.map(([k, c]) => hex(S.encodeHeader(BigInt(k), BigInt(c))));
const refuse = (run) => {
  try { run(); return "accepted"; } catch (e) { return e.code ?? String(e); }
};
return {
  decoded, encoded,
  numbers: hex(S.encodeHeader(300, 70000)) === hex(S.encodeHeader(300n, 70000n)),
  refused: [
    refuse(() => S.encodeHeader(1n << 64n, 0)), refuse(() => S.encodeHeader(0, -1)),
    refuse(() => S.encodeHeader(2 ** 60, 0)),  // a Number that has lost bits
    refuse(() => S.encodeHeader(0.5, 0)), refuse(() => S.suiteParams(6)),
  ],
};
""",
        {"inputs": [i.hex() for i in inputs], "pairs": pairs},
    )
    expected = [header_outcome(i) for i in inputs]
    mismatched = [
        (i.hex(), got, want)
        for i, got, want in zip(inputs, result["decoded"], expected, strict=True)
        if got != want
    ]
    assert mismatched == [], f"{len(mismatched)} of {len(inputs)} headers differ: {mismatched[:10]}"
    kinds = Counter("ok" if "ok" in e else e["error"] for e in expected)
    assert kinds["ok"] > 500 and kinds["header"] > 500, kinds  # both verdicts exercised
    assert non_minimal(inputs) > 300  # and not only truncations among the refusals
    assert result["encoded"] == [sframe.encode_header(int(k), int(c)).hex() for k, c in pairs]
    assert result["numbers"] is True
    assert result["refused"] == ["header", "header", "header", "header", "suite"]


async def check_broken_frames(page: Page) -> None:
    """Tampered header/body/tag, truncation, wrong key, metadata or suite all throw an
    SFrameError, with the same kind of error Python raises (code "auth", "format"...)."""
    rng = random.Random(3)
    key = rng.randbytes(16)
    cases: list[tuple[int, bytes, bytes, bytes]] = []
    for suite in ALL_SUITES:
        ct = sframe.encrypt(suite, key, 300, 70000, b"meta", b"payload")
        cases.append((suite, key, b"meta", ct))  # the untouched frame decrypts
        cases += [(suite, key, b"meta", ct[:n]) for n in range(len(ct))]
        for i in range(len(ct)):
            for bit in (0x01, 0x80):
                cases.append((suite, key, b"meta", ct[:i] + bytes([ct[i] ^ bit]) + ct[i + 1 :]))
        cases += [
            (suite, rng.randbytes(16), b"meta", ct),
            (suite, key, b"meta!", ct),
            (suite, key, b"", ct),
            (suite, key, b"meta", ct + b"\x00"),
            (suite, key, b"meta", sframe.encode_header(300, 70001) + ct[5:]),
            (4 if suite != 4 else 5, key, b"meta", ct),
        ]
    for vec in VECTORS["sframe"]:
        base, meta, ct = (bytes.fromhex(vec[k]) for k in ("base_key", "metadata", "ct"))
        cases += [(vec["cipher_suite"], base, meta, ct), (vec["cipher_suite"], base, meta, ct[:-1])]
    cases += [(0, key, b"", b"\x00" + bytes(16)), (6, key, b"", b"\x00" + bytes(16))]
    result = await run_js(
        page,
        """
const out = [];
for (const [suite, key, meta, ct] of arg) {
  out.push(await outcome(() => S.decrypt(suite, unhex(key), unhex(meta), unhex(ct))));
}
return out;
""",
        [[s, k.hex(), m.hex(), c.hex()] for s, k, m, c in cases],
    )
    expected = [decrypt_outcome(*case) for case in cases]
    mismatched = [
        (case[0], case[3].hex(), got, want)
        for case, got, want in zip(cases, result, expected, strict=True)
        if got != want
    ]
    assert mismatched == [], f"{len(mismatched)} of {len(cases)} differ: {mismatched[:10]}"
    kinds = Counter("ok" if "ok" in e else e["error"] for e in expected)
    # 5 good frames, 5 vectors; everything else must have failed, every way it can
    assert kinds["ok"] == 10, kinds
    assert {"auth", "format", "header", "suite"} <= set(kinds), kinds


# --- SFrameContext ------------------------------------------------------------------


async def check_context(page: Page) -> None:
    """CTR, replay window, unknown KIDs and key roles, as client/e2ee/context.py."""
    alice_key, bob_key = bytes(range(16)), bytes(range(16, 32))
    suite = int(CipherSuite.AES_128_GCM_SHA256_128)
    python_sender = SFrameContext(suite)
    python_sender.add_send_key(0x4321, bob_key)
    from_python = [python_sender.protect(0x4321, b"py%d" % i, b"m") for i in range(3)]
    result = await run_js(
        page,
        """
const [suite, alice, bob] = [arg.suite, unhex(arg.alice), unhex(arg.bob)];
const KID = 0x1234n;
const text = (s) => new TextEncoder().encode(s);
const brief = (r) => ({
  status: r.status,
  ctr: r.ctr === null ? null : String(r.ctr),
  plaintext: r.plaintext === null ? null : new TextDecoder().decode(r.plaintext),
});
const thrown = async (run) => {
  try { await run(); return "no error"; } catch (e) { return e.code ?? String(e); }
};
const statuses = async (ctx, list, meta) => {
  const out = [];
  for (const f of list) out.push((await ctx.unprotect(f, meta)).status);
  return out;
};
const o = {};

// CTR strictly increasing, also for concurrent calls, and visible to Python
const sender = new S.SFrameContext(suite);
await sender.addSendKey(KID, alice);
const serial = [];
for (let i = 0; i < 5; i++) serial.push(await sender.protect(KID, text(`f${i}`), text("m")));
const parallel = await Promise.all(
  Array.from({length: 20}, (_, i) => sender.protect(KID, text(`p${i}`), text("m"))));
const frames = [...serial, ...parallel];
o.ctrs = frames.map((f) => Number(S.decodeHeader(f).ctr));
o.nextCtr = String(sender.nextCtr(KID));
o.toPython = frames.slice(0, 3).map(hex);

// replay, reordering, too old, forgeries that must not move the window
const receiver = new S.SFrameContext(suite, {replayWindow: 8});
o.released = (await receiver.addRecvKey(KID, alice)).length;
o.first = brief(await receiver.unprotect(frames[0], text("m")));
o.replayed = brief(await receiver.unprotect(frames[0], text("m")));
o.twice = (await Promise.all([frames[3], frames[3]].map((f) => receiver.unprotect(f, text("m")))))
  .map((r) => r.status).sort();
o.wrongMeta = (await receiver.unprotect(frames[4], text("x"))).status;
const forged = await S.encrypt(suite, bob, KID, 12n, text("m"), text("evil"));
o.forged = (await receiver.unprotect(forged, text("m"))).status;
o.jump = (await receiver.unprotect(frames[12], text("m"))).status;
o.inWindow = (await receiver.unprotect(frames[5], text("m"))).status;
o.inWindowAgain = (await receiver.unprotect(frames[5], text("m"))).status;
o.tooOld = (await receiver.unprotect(frames[4], text("m"))).status;
o.malformed = await statuses(receiver, [new Uint8Array(0), frames[6].subarray(0, 3), "not bytes"]);

// unknown KID: pending, released by addRecvKey in arrival order
const late = new S.SFrameContext(suite);
o.pending = await statuses(late, frames.slice(0, 3), text("m"));
o.pendingCount = late.pendingCount;
o.releasedLate = (await late.addRecvKey(KID, alice)).map(brief);
o.afterRelease = late.pendingCount;
const bounded = new S.SFrameContext(suite, {pendingLimit: 2});
await statuses(bounded, frames.slice(0, 3), text("m"));
o.bounded = (await bounded.addRecvKey(KID, alice)).map((r) => brief(r).plaintext);

// expiry (fake clock in ms) and buffering turned off
let now = 1000;
const expiring = new S.SFrameContext(suite, {pendingTtlMs: 500, pendingLimit: 2, clock: () => now});
for (const f of frames.slice(0, 3)) await expiring.unprotect(f, text("m"));
o.evicted = expiring.stats.droppedUnknownKid;
now += 600;
o.expiredRelease = (await expiring.addRecvKey(KID, alice)).length;
o.expired = expiring.stats.droppedUnknownKid;
const noBuffer = new S.SFrameContext(suite, {pendingLimit: 0});
o.unknownKid = (await noBuffer.unprotect(frames[0], text("m"))).status;

// key roles (RFC 9605 §4.4.1) and retired send KIDs
o.ownFrame = (await sender.unprotect(frames[0], text("m"))).status;
o.recvProtect = await receiver.protect(KID, text("x"));
o.sameBaseKeyForRecv = await thrown(() => sender.addRecvKey(99, alice));
o.sendKidForRecv = await thrown(() => sender.addRecvKey(KID, bob));
o.recvKidForSend = await thrown(() => receiver.addSendKey(KID, bob));
o.sameBaseKeyForSend = await thrown(() => receiver.addSendKey(99, alice));
o.readdWhileLive = await thrown(() => sender.addSendKey(KID, alice));
sender.removeKey(KID);
o.readdAfterRemove = await thrown(() => sender.addSendKey(KID, bob));
o.removedProtect = await sender.protect(KID, text("x"));
o.badPlaintext = await receiver.addSendKey(7n, bob).then(() => receiver.protect(7n, "not bytes"));
o.afterBad = Number(S.decodeHeader(await receiver.protect(7n, text("x"))).ctr);

// frames from a Python SFrameContext
const fromPython = new S.SFrameContext(suite);
await fromPython.addRecvKey(0x4321, bob);
o.fromPython = [];
for (const f of arg.fromPython) {
  o.fromPython.push(brief(await fromPython.unprotect(unhex(f), text("m"))));
}

o.senderStats = sender.stats;
o.receiverStats = receiver.stats;
return o;
""",
        {
            "suite": suite,
            "alice": alice_key.hex(),
            "bob": bob_key.hex(),
            "fromPython": [f.hex() for f in from_python if f is not None],
        },
    )
    assert result["ctrs"] == list(range(25)), result["ctrs"]
    assert result["nextCtr"] == "25"
    for i, frame in enumerate(result["toPython"]):  # JS context -> Python context
        assert sframe.decrypt(suite, alice_key, b"m", bytes.fromhex(frame)) == (
            0x1234,
            i,
            b"f%d" % i,
        )
    assert result["released"] == 0
    assert result["first"] == {"status": "ok", "ctr": "0", "plaintext": "f0"}
    assert result["replayed"]["status"] == "replay" and result["replayed"]["plaintext"] is None
    assert result["twice"] == ["ok", "replay"]  # concurrent duplicates: one wins
    assert result["wrongMeta"] == "auth_failed"
    assert result["forged"] == "auth_failed"
    assert result["jump"] == "ok"  # CTR 12: the forged CTR 12 did not block it
    assert result["inWindow"] == "ok"  # CTR 5, 7 behind 12 in a window of 8
    assert result["inWindowAgain"] == "replay"  # accepted out of order, then remembered
    assert result["tooOld"] == "too_old"  # CTR 4, 8 behind
    assert result["malformed"] == ["malformed"] * 3
    assert result["pending"] == ["pending"] * 3 and result["pendingCount"] == 3
    assert result["releasedLate"] == [
        {"status": "ok", "ctr": str(i), "plaintext": f"f{i}"} for i in range(3)
    ]
    assert result["afterRelease"] == 0
    assert result["bounded"] == ["f1", "f2"]  # a full buffer drops its oldest frame
    assert (result["evicted"], result["expiredRelease"], result["expired"]) == (1, 0, 3)
    assert result["unknownKid"] == "unknown_kid"
    assert result["ownFrame"] == "wrong_key_usage"
    assert result["recvProtect"] is None
    for name in [
        "sameBaseKeyForRecv",
        "sendKidForRecv",
        "recvKidForSend",
        "sameBaseKeyForSend",
        "readdWhileLive",
        "readdAfterRemove",
    ]:
        assert result[name] == "key_usage", (name, result[name])
    assert result["removedProtect"] is None
    assert result["badPlaintext"] is None and result["afterBad"] == 1  # CTR 0 is gone for good
    assert result["fromPython"] == [
        {"status": "ok", "ctr": str(i), "plaintext": f"py{i}"} for i in range(3)
    ]
    sender_stats, receiver_stats = result["senderStats"], result["receiverStats"]
    assert sender_stats["encrypted"] == 25
    assert sender_stats["encryptFailures"]["unknown_kid"] == 1
    assert sender_stats["decryptFailures"]["wrong_key_usage"] == 1
    assert receiver_stats["encryptFailures"] == {
        "unknown_kid": 0,
        "wrong_key_usage": 1,
        "ctr_exhausted": 0,
        "invalid_input": 1,
    }
    assert receiver_stats["decrypted"] == 4
    failures = receiver_stats["decryptFailures"]
    assert (failures["replay"], failures["auth_failed"], failures["too_old"]) == (3, 2, 1)
    assert failures["malformed"] == 3


async def check_worker(page: Page) -> None:
    """The media path runs in the Worker behind RTCRtpScriptTransform: no DOM there."""
    key = bytes(range(16))
    result = await run_js(
        page,
        """
const source = `
  import * as S from "${location.origin}/web/e2ee/sframe.js";
  const ctx = new S.SFrameContext(S.CipherSuite.AES_256_GCM_SHA512_128);
  await ctx.addSendKey(513, new Uint8Array(${JSON.stringify(Array.from(unhex(arg)))}));
  postMessage(await ctx.protect(513, new TextEncoder().encode("in a worker")));
`;
const url = URL.createObjectURL(new Blob([source], {type: "text/javascript"}));
const worker = new Worker(url, {type: "module"});
const frame = await new Promise((resolve, reject) => {
  worker.onmessage = (e) => resolve(e.data);
  worker.onerror = (e) => reject(new Error(e.message));
});
worker.terminate();
return hex(frame);
""",
        key.hex(),
    )
    assert sframe.decrypt(5, key, b"", bytes.fromhex(result)) == (513, 0, b"in a worker")


# One browser launch costs about a second, so the checks share pages.


async def test_javascript_matches_python(page: Page) -> None:
    await check_random_frames(page)
    await check_header_codec(page)
    await check_broken_frames(page)


async def test_sframe_context_in_chromium(page: Page) -> None:
    await check_context(page)
    await check_worker(page)
