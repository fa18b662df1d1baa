// SFrame for H.264 in the browser: one SFrame per NAL unit, as the Python client
// does it (client/e2ee/h264.py, docs/e2ee.md). Chromium's encoded H.264 frames are
// Annex B; its packetizer finds NAL units by their start codes and reads each NAL
// header, and its depacketizer reads parameter sets and the start of slice headers.
// So the NAL header, SPS and PPS, and a slice's first bytes stay in clear (as SFrame
// metadata); the rest is encrypted, given emulation prevention so that no start
// code appears inside, and ends with 0x80 so that no zero byte is swallowed by the
// next start code.
import { concat } from "./sframe.js";

const CLEAR_TYPES = new Set([7, 8]); // SPS, PPS
const SLICE_TYPES = new Set([1, 5]);
const SLICE_CLEAR = 2;
const TRAILER = 0x80;
const START_CODE = new Uint8Array([0, 0, 0, 1]);

export function escape(data) {
  const out = [];
  let zeros = 0;
  for (const byte of data) {
    if (zeros >= 2 && byte <= 3) {
      out.push(3);
      zeros = 0;
    }
    out.push(byte);
    zeros = byte === 0 ? zeros + 1 : 0;
  }
  return Uint8Array.from(out);
}

export function unescape(data) {
  const out = [];
  let zeros = 0;
  for (const byte of data) {
    if (zeros >= 2 && byte === 3) {
      zeros = 0;
      continue;
    }
    out.push(byte);
    zeros = byte === 0 ? zeros + 1 : 0;
  }
  return Uint8Array.from(out);
}

function findStart(data, from) {
  for (let i = from; i + 2 < data.length; i++) {
    if (data[i] === 0 && data[i + 1] === 0 && data[i + 2] === 1) return i;
  }
  return -1;
}

/** The NAL units of an Annex B frame (3- or 4-byte start codes). */
export function splitAnnexB(frame) {
  const nals = [];
  let start = findStart(frame, 0);
  while (start !== -1) {
    const begin = start + 3;
    const end = findStart(frame, begin);
    if (end === -1) {
      nals.push(frame.subarray(begin));
      break;
    }
    nals.push(frame.subarray(begin, frame[end - 1] === 0 ? end - 1 : end));
    start = end;
  }
  return nals;
}

function clearLength(nal) {
  return 1 + (SLICE_TYPES.has(nal[0] & 0x1f) ? SLICE_CLEAR : 0);
}

/** An Annex B frame with every NAL unit sealed, or null without a key. */
export async function sealFrame(context, kid, frame) {
  const parts = [];
  for (const nal of splitAnnexB(frame)) {
    if (!nal.length || CLEAR_TYPES.has(nal[0] & 0x1f)) {
      parts.push(START_CODE, nal);
      continue;
    }
    const clear = Math.min(clearLength(nal), nal.length);
    const sealed = await context.protect(kid, nal.subarray(clear), nal.subarray(0, clear));
    if (sealed === null) return null;
    parts.push(START_CODE, nal.subarray(0, 1), escape(concat(nal.subarray(1, clear), sealed)), new Uint8Array([TRAILER]));
  }
  return parts.length ? concat(...parts) : null;
}

/** {status, kid, data}: the frame in clear (data) when every NAL unit opened. */
export async function openFrame(context, frame) {
  const parts = [];
  let kid = null;
  for (const nal of splitAnnexB(frame)) {
    if (!nal.length || CLEAR_TYPES.has(nal[0] & 0x1f)) {
      parts.push(START_CODE, nal);
      continue;
    }
    if (nal.length < 2 || nal[nal.length - 1] !== TRAILER) return { status: "malformed", kid, data: null };
    const body = unescape(nal.subarray(1, nal.length - 1));
    const clear = Math.min(clearLength(nal) - 1, body.length);
    const result = await context.unprotect(body.subarray(clear), concat(nal.subarray(0, 1), body.subarray(0, clear)));
    if (kid === null) kid = result.kid;
    if (result.status !== "ok") return { status: result.status, kid, data: null };
    parts.push(START_CODE, nal.subarray(0, 1), body.subarray(0, clear), result.plaintext);
  }
  if (!parts.length) return { status: "malformed", kid, data: null };
  return { status: "ok", kid, data: concat(...parts) };
}
