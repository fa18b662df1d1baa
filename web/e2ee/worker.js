// The frame worker: SFrame on every encoded frame a page sends or receives
// (RTCRtpScriptTransform), with the same frame layout as the Python client
// (client/e2ee/media.py, docs/e2ee.md). A VP8 frame keeps its first 3 bytes (10 of a
// key frame: frame tag, start code, width, height) in clear as authenticated
// metadata, because relays and the receiving browser's depacketizer read them; Opus
// frames are encrypted whole. No key, no frame: nothing is ever sent in clear, and a
// frame that does not decrypt never reaches the decoder.
//
// Messages from the page: {type: "keys", send: {kid, key} | null, recv: [{kid, key}],
// remove: [kid]} and {type: "stats"} (answered with the counters per receiving mid).
import { SFrameContext, concat } from "./sframe.js";
import * as h264 from "./h264.js";

const SUITE = 4; // AES_128_GCM_SHA256_128, as web/e2ee/group.js
// A frame under a KID not known yet waits this long for its key message before it
// counts as a decrypt failure (a join races the first frames; a sender without
// keys, or without encryption, never gets there): a joiner's first key comes after
// the leader's rekey window (1 s) and the key message's way through the relay.
const PENDING_GRACE_MS = 3000;
const pendingFrames = []; // {at, kid, mid}, oldest first
const context = new SFrameContext(SUITE);
let sendKid = null;
const stats = { encrypted: 0, unsent: 0, failures: {}, pending: {}, decrypted: {} };
let keysApplied = Promise.resolve();

function clearLength(kind, frame) {
  if (kind !== "video" || !frame.length) return 0;
  return Math.min(frame[0] & 0x01 ? 3 : 10, frame.length);
}

async function applyKeys({ send, recv, remove }) {
  for (const kid of remove || []) context.removeKey(kid);
  for (const { kid, key } of recv || []) await context.addRecvKey(kid, key);
  if (send) {
    await context.addSendKey(send.kid, send.key);
    sendKid = send.kid;
  }
}

self.onmessage = (event) => {
  const message = event.data;
  if (message.type === "keys") {
    keysApplied = keysApplied.then(() => applyKeys(message)).catch((e) => console.error("e2ee keys:", e));
  } else if (message.type === "stats") {
    settlePending(performance.now());
    self.postMessage({ type: "stats", stats });
  }
};

/** The frame's codec, lower case ("video/vp8", "video/h264", "audio/opus"). */
function codecOf(kind, frame) {
  const mime = frame.getMetadata().mimeType;
  return mime ? mime.toLowerCase() : kind === "video" ? "video/vp8" : "audio/opus";
}

function sealer(kind) {
  return async (frame, controller) => {
    await keysApplied;
    const data = new Uint8Array(frame.data);
    if (codecOf(kind, frame) === "video/h264") {
      const sealed = sendKid === null ? null : await h264.sealFrame(context, sendKid, data);
      if (sealed === null) {
        stats.unsent += 1;
        return;
      }
      frame.data = sealed.buffer;
      stats.encrypted += 1;
      controller.enqueue(frame);
      return;
    }
    const clear = clearLength(kind, data);
    const sealed = sendKid === null ? null : await context.protect(sendKid, data.subarray(clear), data.subarray(0, clear));
    if (sealed === null) {
      stats.unsent += 1;
      return;
    }
    frame.data = concat(data.subarray(0, clear), sealed).buffer;
    stats.encrypted += 1;
    controller.enqueue(frame);
  };
}

/**
 * Whether a frame that did not decrypt should have: its key is not held, and it is
 * not from an epoch before ours (a joiner is never keyed for those, by design).
 * KID = epoch << 8 | sender index (web/e2ee/group.js).
 */
function missed(kid) {
  if (context.hasRecvKey(kid)) return false;
  if (kid >= 1n << 24n) return true;
  const epoch = sendKid === null ? 0n : BigInt(sendKid) >> 8n;
  return kid >> 8n >= epoch;
}

function settlePending(now) {
  while (pendingFrames.length && now - pendingFrames[0].at >= PENDING_GRACE_MS) {
    const { kid, mid } = pendingFrames.shift();
    if (missed(BigInt(kid))) stats.failures[mid] = (stats.failures[mid] || 0) + 1;
  }
}

function opener(kind, mid) {
  return async (frame, controller) => {
    await keysApplied;
    const now = performance.now();
    settlePending(now);
    const data = new Uint8Array(frame.data);
    let result;
    let opened;
    if (codecOf(kind, frame) === "video/h264") {
      result = await h264.openFrame(context, data);
      opened = result.data;
    } else {
      const clear = clearLength(kind, data);
      result = await context.unprotect(data.subarray(clear), data.subarray(0, clear));
      opened = result.status === "ok" ? concat(data.subarray(0, clear), result.plaintext) : null;
    }
    if (result.status !== "ok") {
      if (result.status === "pending" && result.kid !== null && result.kid !== undefined) {
        stats.pending[mid] = (stats.pending[mid] || 0) + 1;
        pendingFrames.push({ at: now, kid: result.kid, mid });
      } else {
        stats.failures[mid] = (stats.failures[mid] || 0) + 1;
      }
      return;
    }
    frame.data = opened.buffer;
    stats.decrypted[mid] = (stats.decrypted[mid] || 0) + 1;
    controller.enqueue(frame);
  };
}

self.onrtctransform = (event) => {
  const transformer = event.transformer;
  const { side, kind, mid } = transformer.options;
  const transform = side === "send" ? sealer(kind) : opener(kind, mid);
  transformer.readable.pipeThrough(new TransformStream({ transform })).pipeTo(transformer.writable);
};
