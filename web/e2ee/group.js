// Group keys for end-to-end encryption in the browser: the same protocol, wire
// formats and checks as the Python client (client/e2ee/identity.py, roster.py,
// epoch.py, group.py, security_code.py, exchange.py; docs/e2ee.md), so browsers and
// Python clients in one meeting key each other. WebCrypto only: Ed25519 identity,
// X25519 per meeting, HKDF-SHA256, AES-256-GCM key wrapping, SHA-256 roster chain.
//
// Nothing here touches media: the SFrame keys it derives go to the frame worker
// (web/e2ee/worker.js) through `onKeys`.
import { concat, constantTimeEqual } from "./sframe.js";

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

export const SUITE = 4; // AES_128_GCM_SHA256_128, as client/e2ee/exchange.py
const PUBLIC_KEY_SIZE = 32;
const SIGNATURE_SIZE = 64;
const HASH_SIZE = 32;
const SECRET_SIZE = 32;
const WRAPPED_SIZE = PUBLIC_KEY_SIZE + SECRET_SIZE + 16;
const MAX_ID_BYTES = 255;
const MAX_ROSTER = 256;
const EPOCH_BITS = 16;
const SENDER_BITS = 8;
const MAX_EPOCH = (1 << EPOCH_BITS) - 1;
const REKEY_WINDOW_MS = 1000;
const RETIRE_AFTER_MS = 2000;

const BINDING_LABEL = enc.encode("conclave-e2ee-v1 binding");
const KEY_MESSAGE_LABEL = enc.encode("conclave-e2ee-v1 key-message");
const GENESIS_LABEL = enc.encode("conclave-e2ee-v1 roster-genesis");
const ROSTER_LABEL = enc.encode("conclave-e2ee-v1 roster");
const WRAP_LABEL = enc.encode("conclave-e2ee-v1 wrap");
const SENDER_LABEL = enc.encode("conclave-e2ee-v1 sender");
const CODE_LABEL = enc.encode("conclave-e2ee-v1 security-code");
const BINDING_MAGIC = enc.encode("CEB1");
const KEY_MESSAGE_MAGIC = enc.encode("CEK1");

/** A key message or binding that is refused; `reason` matches Python's RefusalReason. */
export class Refusal extends Error {
  constructor(reason, detail = "") {
    super(`${reason}${detail ? ": " + detail : ""}`);
    this.reason = reason;
  }
}

// --- bytes ---------------------------------------------------------------------

function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    if (a[i] !== b[i]) return a[i] - b[i];
  }
  return a.length - b.length;
}

export function toBase64(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

export function fromBase64(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) {
    throw new Refusal("malformed", "not base64");
  }
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/** Big-endian fields, u16-prefixed ids, u32-prefixed blobs (client/e2ee/wire.py). */
class Writer {
  constructor() {
    this.parts = [];
  }
  u16(v) {
    this.parts.push(new Uint8Array([(v >> 8) & 255, v & 255]));
    return this;
  }
  u64(v) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v));
    this.parts.push(b);
    return this;
  }
  fixed(bytes, size) {
    if (bytes.length !== size) throw new Error(`field must be ${size} bytes`);
    this.parts.push(bytes);
    return this;
  }
  blob(bytes) {
    const n = new Uint8Array(4);
    new DataView(n.buffer).setUint32(0, bytes.length);
    this.parts.push(n, bytes);
    return this;
  }
  text(value) {
    const raw = enc.encode(value);
    if (!raw.length || raw.length > MAX_ID_BYTES) throw new Error("id must be 1..255 bytes");
    return this.u16(raw.length).fixed(raw, raw.length);
  }
  finish() {
    return concat(...this.parts);
  }
}

/** Strict reader: truncation, oversize ids, bad UTF-8 and trailing bytes refuse. */
class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.at = 0;
  }
  take(n, what) {
    if (this.at + n > this.bytes.length) throw new Refusal("malformed", `truncated in ${what}`);
    const out = this.bytes.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }
  u16(what) {
    const b = this.take(2, what);
    return (b[0] << 8) | b[1];
  }
  u64(what) {
    const b = this.take(8, what);
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0);
  }
  fixed(n, what) {
    return this.take(n, what).slice();
  }
  text(what) {
    const n = this.u16(what);
    if (!n || n > MAX_ID_BYTES) throw new Refusal("malformed", `${what} length`);
    try {
      return dec.decode(this.take(n, what));
    } catch {
      throw new Refusal("malformed", `${what} is not UTF-8`);
    }
  }
  expect(magic, what) {
    if (!constantTimeEqual(this.take(magic.length, what), magic)) throw new Refusal("malformed", `not a ${what}`);
  }
  finish() {
    if (this.at !== this.bytes.length) throw new Refusal("malformed", "trailing bytes");
  }
}

// --- crypto --------------------------------------------------------------------

const subtle = crypto.subtle;

async function sha256(bytes) {
  return new Uint8Array(await subtle.digest("SHA-256", bytes));
}

async function hkdf(ikm, salt, info, length) {
  const key = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  const bits = await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, key, length * 8);
  return new Uint8Array(bits);
}

function labelled(label, payload) {
  return concat(new Uint8Array([label.length >> 8, label.length & 255]), label, payload);
}

async function verifySignature(publicKey, label, payload, signature) {
  try {
    const key = await subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    return await subtle.verify({ name: "Ed25519" }, key, signature, labelled(label, payload));
  } catch {
    return false;
  }
}

async function x25519(privateKey, peerPublic) {
  const peer = await subtle.importKey("raw", peerPublic, { name: "X25519" }, false, []);
  return new Uint8Array(await subtle.deriveBits({ name: "X25519", public: peer }, privateKey, 256));
}

async function generatePair(algorithm, usages) {
  const pair = await subtle.generateKey({ name: algorithm }, true, usages);
  const raw = new Uint8Array(await subtle.exportKey("raw", pair.publicKey));
  return { privateKey: pair.privateKey, publicBytes: raw };
}

async function aesGcm(keyBytes, nonce, data, aad, decrypt) {
  const key = await subtle.importKey("raw", keyBytes, "AES-GCM", false, [decrypt ? "decrypt" : "encrypt"]);
  const params = { name: "AES-GCM", iv: nonce, additionalData: aad };
  const out = decrypt ? await subtle.decrypt(params, key, data) : await subtle.encrypt(params, key, data);
  return new Uint8Array(out);
}

// --- bindings, roster, key messages --------------------------------------------

function bindingPayload(meetingId, participantId, identityPublic, meetingPublic) {
  return new Writer()
    .text(meetingId)
    .text(participantId)
    .fixed(identityPublic, PUBLIC_KEY_SIZE)
    .fixed(meetingPublic, PUBLIC_KEY_SIZE)
    .finish();
}

function encodeBinding(b) {
  return new Writer()
    .fixed(BINDING_MAGIC, 4)
    .text(b.meetingId)
    .text(b.participantId)
    .fixed(b.identityPublic, PUBLIC_KEY_SIZE)
    .fixed(b.meetingPublic, PUBLIC_KEY_SIZE)
    .fixed(b.signature, SIGNATURE_SIZE)
    .finish();
}

function decodeBinding(bytes) {
  const r = new Reader(bytes);
  r.expect(BINDING_MAGIC, "binding");
  const b = {
    meetingId: r.text("meeting id"),
    participantId: r.text("participant id"),
    identityPublic: r.fixed(PUBLIC_KEY_SIZE, "identity key"),
    meetingPublic: r.fixed(PUBLIC_KEY_SIZE, "meeting key"),
    signature: r.fixed(SIGNATURE_SIZE, "signature"),
  };
  r.finish();
  return b;
}

async function bindingVerifies(b, meetingId, expectedIdentity = null) {
  if (b.meetingId !== meetingId) return false;
  if (expectedIdentity && !constantTimeEqual(expectedIdentity, b.identityPublic)) return false;
  const payload = bindingPayload(b.meetingId, b.participantId, b.identityPublic, b.meetingPublic);
  return verifySignature(b.identityPublic, BINDING_LABEL, payload, b.signature);
}

/** Canonical order: by the UTF-8 bytes of the id; one roster has one order. */
function canonical(entries) {
  const ordered = [...entries].sort((a, b) => compareBytes(enc.encode(a.participantId), enc.encode(b.participantId)));
  if (!ordered.length || ordered.length > MAX_ROSTER) throw new Refusal("malformed", "roster size");
  for (let i = 1; i < ordered.length; i++) {
    if (ordered[i].participantId === ordered[i - 1].participantId) throw new Refusal("malformed", "duplicate id");
  }
  return ordered;
}

async function genesisHash(meetingId) {
  return sha256(concat(labelled(GENESIS_LABEL, new Uint8Array()), enc.encode(meetingId)));
}

async function rosterHash(prevHash, epoch, entries) {
  const w = new Writer().fixed(prevHash, HASH_SIZE).u64(epoch).u16(entries.length);
  for (const e of entries) {
    w.text(e.participantId).fixed(e.identityPublic, PUBLIC_KEY_SIZE).fixed(e.meetingPublic, PUBLIC_KEY_SIZE);
  }
  return sha256(concat(labelled(ROSTER_LABEL, new Uint8Array()), w.finish()));
}

function writeEntries(w, entries) {
  w.u16(entries.length);
  for (const e of entries) {
    w.text(e.participantId)
      .fixed(e.identityPublic, PUBLIC_KEY_SIZE)
      .fixed(e.meetingPublic, PUBLIC_KEY_SIZE)
      .fixed(e.signature, SIGNATURE_SIZE);
  }
}

function keyMessagePayload(m, currentHash) {
  return new Writer()
    .text(m.meetingId)
    .u64(m.epoch)
    .text(m.leaderId)
    .fixed(m.leaderIdentity, PUBLIC_KEY_SIZE)
    .fixed(m.prevHash, HASH_SIZE)
    .fixed(currentHash, HASH_SIZE)
    .text(m.recipientId)
    .fixed(m.wrapped, WRAPPED_SIZE)
    .finish();
}

function encodeKeyMessage(m) {
  const w = new Writer()
    .fixed(KEY_MESSAGE_MAGIC, 4)
    .text(m.meetingId)
    .u64(m.epoch)
    .text(m.leaderId)
    .fixed(m.leaderIdentity, PUBLIC_KEY_SIZE)
    .fixed(m.prevHash, HASH_SIZE);
  writeEntries(w, m.entries);
  return w.text(m.recipientId).fixed(m.wrapped, WRAPPED_SIZE).fixed(m.signature, SIGNATURE_SIZE).finish();
}

function decodeKeyMessage(bytes) {
  const r = new Reader(bytes);
  r.expect(KEY_MESSAGE_MAGIC, "key message");
  const m = {
    meetingId: r.text("meeting id"),
    epoch: r.u64("epoch"),
    leaderId: r.text("leader id"),
    leaderIdentity: r.fixed(PUBLIC_KEY_SIZE, "leader identity"),
    prevHash: r.fixed(HASH_SIZE, "previous roster hash"),
  };
  const count = r.u16("roster size");
  if (!count || count > MAX_ROSTER) throw new Refusal("malformed", "roster size");
  m.entries = [];
  for (let i = 0; i < count; i++) {
    m.entries.push({
      participantId: r.text("participant id"),
      identityPublic: r.fixed(PUBLIC_KEY_SIZE, "identity key"),
      meetingPublic: r.fixed(PUBLIC_KEY_SIZE, "meeting key"),
      signature: r.fixed(SIGNATURE_SIZE, "binding signature"),
    });
  }
  const ordered = canonical(m.entries);
  if (ordered.some((e, i) => e !== m.entries[i])) throw new Refusal("malformed", "roster not canonical");
  m.recipientId = r.text("recipient id");
  m.wrapped = r.fixed(WRAPPED_SIZE, "wrapped secret");
  m.signature = r.fixed(SIGNATURE_SIZE, "signature");
  r.finish();
  return m;
}

function wrapInfo(meetingId, epoch, senderId, recipientId) {
  return new Writer().blob(WRAP_LABEL).text(meetingId).u64(epoch).text(senderId).text(recipientId).finish();
}

async function wrapSecret(secret, recipientPublic, meetingId, epoch, senderId, recipientId, hash) {
  const eph = await generatePair("X25519", ["deriveBits"]);
  const dh = await x25519(eph.privateKey, recipientPublic);
  const info = wrapInfo(meetingId, epoch, senderId, recipientId);
  const okm = await hkdf(dh, concat(eph.publicBytes, recipientPublic), info, 44);
  const sealed = await aesGcm(okm.subarray(0, 32), okm.subarray(32), secret, concat(info, hash), false);
  return concat(eph.publicBytes, sealed);
}

async function unwrapSecret(meetingKey, wrapped, meetingId, epoch, senderId, recipientId, hash) {
  const ephPublic = wrapped.subarray(0, PUBLIC_KEY_SIZE);
  const info = wrapInfo(meetingId, epoch, senderId, recipientId);
  const dh = await x25519(meetingKey.privateKey, ephPublic);
  const okm = await hkdf(dh, concat(ephPublic, meetingKey.publicBytes), info, 44);
  return aesGcm(okm.subarray(0, 32), okm.subarray(32), wrapped.subarray(PUBLIC_KEY_SIZE), concat(info, hash), true);
}

async function senderBaseKey(secret, meetingId, epoch, hash, senderIndex) {
  const info = new Writer().blob(SENDER_LABEL).text(meetingId).u64(epoch).u16(senderIndex).u16(SUITE).finish();
  return hkdf(secret, hash, info, 32);
}

export function makeKid(epoch, senderIndex) {
  return ((Number(epoch) % (1 << EPOCH_BITS)) << SENDER_BITS) | senderIndex;
}

export async function securityCode(meetingId, leaderIdentity, hash) {
  const digest = await sha256(
    new Writer().blob(CODE_LABEL).text(meetingId).fixed(leaderIdentity, PUBLIC_KEY_SIZE).fixed(hash, HASH_SIZE).finish(),
  );
  let n = 0n;
  for (const b of digest) n = (n << 8n) | BigInt(b);
  const digits = (n % 10n ** 25n).toString().padStart(25, "0");
  return digits.match(/.{5}/g).join(" ");
}

// --- the session ------------------------------------------------------------------

/**
 * One participant's end of the key exchange, carried by the relay's signalling:
 * post the binding, let the elected leader (first in join order) key the members,
 * install what arrives. `send(message)` sends a signalling message; `onKeys(update)`
 * hands SFrame keys to the frame worker: {send: {kid, key}, recv: [{kid, key}],
 * remove: [kid]}.
 */
export class MeetingKeys {
  constructor({ meetingId, participantId, send, onKeys, onEpoch = () => {} }) {
    this.meetingId = meetingId;
    this.participantId = participantId;
    this.send = send;
    this.onKeys = onKeys;
    this.onEpoch = onEpoch;
    this.epoch = 0n;
    this.roster = null; // canonical entries of the current epoch
    this.hash = null;
    this.leaderId = null;
    this.leaderIdentity = null;
    this.securityCode = null;
    this.refused = {};
    this.sendKid = null;
    this.recvKids = new Map(); // epoch (string) -> [kid]
    this.pending = null; // entries the leader has yet to key
    this.pendingSince = null;
    this.keyed = false;
    this.timer = null;
    this.queue = Promise.resolve(); // one step at a time, in arrival order
  }

  async init() {
    this.identity = await generatePair("Ed25519", ["sign", "verify"]);
    this.meetingKey = await generatePair("X25519", ["deriveBits"]);
    this.hash = await genesisHash(this.meetingId);
    const payload = bindingPayload(this.meetingId, this.participantId, this.identity.publicBytes, this.meetingKey.publicBytes);
    const signature = new Uint8Array(await subtle.sign({ name: "Ed25519" }, this.identity.privateKey, labelled(BINDING_LABEL, payload)));
    this.binding = {
      meetingId: this.meetingId,
      participantId: this.participantId,
      identityPublic: this.identity.publicBytes,
      meetingPublic: this.meetingKey.publicBytes,
      signature,
    };
  }

  bindingMessage() {
    return { type: "e2ee_binding", binding: toBase64(encodeBinding(this.binding)) };
  }

  get members() {
    return this.roster ? this.roster.map((e) => e.participantId) : [];
  }

  onMembers(members) {
    return this.serially(() => this.membersChanged(members));
  }

  onKey(messageText) {
    return this.serially(() => this.receive(messageText));
  }

  serially(step) {
    this.queue = this.queue.then(step).catch((e) => console.error("e2ee:", e));
    return this.queue;
  }

  // --- leader ---

  async membersChanged(members) {
    const order = (Array.isArray(members) ? members : []).map((m) => String(m.participant_id));
    if (!order.includes(this.participantId) || order[0] !== this.participantId) return;
    const known = new Map((this.roster || []).map((e) => [e.participantId, e.identityPublic]));
    const accepted = new Map([[this.participantId, this.binding]]);
    const duplicated = new Set();
    for (const m of members) {
      let b;
      try {
        b = decodeBinding(fromBase64(m.binding));
      } catch {
        continue;
      }
      if (b.participantId === this.participantId) continue;
      if (!(await bindingVerifies(b, this.meetingId, known.get(b.participantId)))) continue;
      if (accepted.has(b.participantId) || duplicated.has(b.participantId)) {
        accepted.delete(b.participantId);
        duplicated.add(b.participantId);
        continue;
      }
      accepted.set(b.participantId, b);
    }
    const entries = canonical(accepted.values());
    if (this.roster) this.keyed = true; // taking over: wait the window like any change
    const same = this.roster && entries.length === this.roster.length &&
      entries.every((e, i) => constantTimeEqual(encodeBinding({ ...e, meetingId: this.meetingId }), encodeBinding({ ...this.roster[i], meetingId: this.meetingId })));
    if (!same || this.pending) {
      this.pending = entries;
      if (this.pendingSince === null) this.pendingSince = performance.now();
    }
    await this.tick();
  }

  async tick() {
    if (!this.pending) return;
    const due = this.keyed ? this.pendingSince + REKEY_WINDOW_MS : this.pendingSince;
    const wait = due - performance.now();
    if (wait > 0) {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.serially(() => this.tick()), wait);
      return;
    }
    await this.issue(this.pending);
  }

  async issue(entries) {
    const epoch = this.epoch + 1n;
    if (epoch > BigInt(MAX_EPOCH)) throw new Error("no epochs left: restart the meeting");
    const hash = await rosterHash(this.hash, epoch, entries);
    const secret = crypto.getRandomValues(new Uint8Array(SECRET_SIZE));
    const prevHash = this.hash;
    for (const e of entries) {
      if (e.participantId === this.participantId) continue;
      const wrapped = await wrapSecret(secret, e.meetingPublic, this.meetingId, epoch, this.participantId, e.participantId, hash);
      const m = {
        meetingId: this.meetingId,
        epoch,
        leaderId: this.participantId,
        leaderIdentity: this.identity.publicBytes,
        prevHash,
        entries,
        recipientId: e.participantId,
        wrapped,
      };
      const sig = await subtle.sign({ name: "Ed25519" }, this.identity.privateKey, labelled(KEY_MESSAGE_LABEL, keyMessagePayload(m, hash)));
      m.signature = new Uint8Array(sig);
      this.send({ type: "e2ee_key", to: e.participantId, message: toBase64(encodeKeyMessage(m)) });
    }
    this.pending = null;
    this.pendingSince = null;
    this.keyed = true;
    await this.install(epoch, entries, hash, secret, this.participantId, this.identity.publicBytes);
  }

  // --- member ---

  refuse(reason) {
    this.refused[reason] = (this.refused[reason] || 0) + 1;
    console.warn(`e2ee: key message refused: ${reason}`);
  }

  async receive(messageText) {
    let m;
    try {
      m = decodeKeyMessage(fromBase64(messageText));
    } catch (e) {
      return this.refuse(e instanceof Refusal ? e.reason : "malformed");
    }
    if (m.meetingId !== this.meetingId) return this.refuse("wrong_meeting");
    if (m.recipientId !== this.participantId) return this.refuse("wrong_recipient");
    if (m.epoch <= this.epoch) return this.refuse("stale_epoch");
    if (m.epoch > BigInt(MAX_EPOCH)) return this.refuse("epoch_exhausted");
    const hash = await rosterHash(m.prevHash, m.epoch, m.entries);
    const leader = m.entries.find((e) => e.participantId === m.leaderId);
    if (!leader || !constantTimeEqual(leader.identityPublic, m.leaderIdentity)) return this.refuse("untrusted_leader");
    const leaderChanged = this.leaderIdentity !== null &&
      (m.leaderId !== this.leaderId || !constantTimeEqual(m.leaderIdentity, this.leaderIdentity));
    if (leaderChanged && this.roster) {
      const known = this.roster.find((e) => e.participantId === m.leaderId);
      if (!known || !constantTimeEqual(known.identityPublic, m.leaderIdentity)) return this.refuse("untrusted_leader");
    }
    if (!(await verifySignature(m.leaderIdentity, KEY_MESSAGE_LABEL, keyMessagePayload(m, hash), m.signature))) {
      return this.refuse("bad_signature");
    }
    if ((this.roster || m.epoch === 1n) && !constantTimeEqual(m.prevHash, this.hash)) return this.refuse("broken_chain");
    const me = m.entries.find((e) => e.participantId === this.participantId);
    if (!me) return this.refuse("not_in_roster");
    if (!constantTimeEqual(me.identityPublic, this.identity.publicBytes) || !constantTimeEqual(me.meetingPublic, this.meetingKey.publicBytes)) {
      return this.refuse("key_mismatch");
    }
    for (const e of m.entries) {
      if (!(await bindingVerifies({ ...e, meetingId: this.meetingId }, this.meetingId))) return this.refuse("bad_binding");
    }
    let secret;
    try {
      secret = await unwrapSecret(this.meetingKey, m.wrapped, this.meetingId, m.epoch, m.leaderId, this.participantId, hash);
    } catch {
      return this.refuse("unwrap_failed");
    }
    await this.install(m.epoch, m.entries, hash, secret, m.leaderId, m.leaderIdentity);
  }

  async install(epoch, entries, hash, secret, leaderId, leaderIdentity) {
    const mine = entries.findIndex((e) => e.participantId === this.participantId);
    const keys = [];
    for (let i = 0; i < entries.length; i++) {
      keys.push({ kid: makeKid(epoch, i), key: await senderBaseKey(secret, this.meetingId, epoch, hash, i) });
    }
    const remove = this.sendKid === null ? [] : [this.sendKid];
    // Keep the previous epoch's receive keys for frames in flight; older ones go.
    for (const [e, kids] of [...this.recvKids]) {
      if (BigInt(e) < epoch - 1n) {
        remove.push(...kids);
        this.recvKids.delete(e);
      }
    }
    const recv = keys.filter((_, i) => i !== mine);
    this.recvKids.set(String(epoch), recv.map((k) => k.kid));
    this.sendKid = keys[mine].kid;
    this.epoch = epoch;
    this.roster = entries;
    this.hash = hash;
    this.leaderId = leaderId;
    this.leaderIdentity = leaderIdentity;
    this.securityCode = await securityCode(this.meetingId, leaderIdentity, hash);
    this.onKeys({ send: keys[mine], recv, remove });
    setTimeout(() => this.serially(() => this.retire()), RETIRE_AFTER_MS);
    this.onEpoch(this);
  }

  retire() {
    const remove = [];
    for (const [e, kids] of [...this.recvKids]) {
      if (BigInt(e) < this.epoch) {
        remove.push(...kids);
        this.recvKids.delete(e);
      }
    }
    if (remove.length) this.onKeys({ send: null, recv: [], remove });
  }

  close() {
    clearTimeout(this.timer);
  }
}
