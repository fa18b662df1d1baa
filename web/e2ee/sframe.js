/**
 * SFrame (RFC 9605) for the browser: header codec, key schedule, the five cipher
 * suites, the stateless frame functions and the stateful context for the media path.
 *
 * This is the JavaScript twin of client/e2ee/{errors,suites,sframe,context}.py and
 * must stay byte-identical with it: a browser and a Python client in one meeting
 * decrypt each other's frames. tests/e2e/test_browser_sframe.py holds the two
 * together (RFC 9605 Appendix C vectors, both interop directions, error codes).
 *
 * WebCrypto only and no DOM, so the same module runs in a window and in the Worker
 * behind RTCRtpScriptTransform. KID and CTR are 64-bit on the wire, beyond what a
 * Number holds exactly, so they come back as BigInt (Number is accepted on input).
 *
 * @module sframe
 */

// --- Errors (client/e2ee/errors.py) ----------------------------------------------

/**
 * Every SFrame failure. Python has one class per kind; here a `code` names the kind
 * so that a Worker can pass it on in a message, where class identity is lost:
 * "suite" (unregistered cipher suite), "format" (truncated or too long), "header"
 * (header truncated, non-minimal or out of range), "auth" (tag did not verify),
 * "key_usage" (a key used against its role), "ctr_exhausted" (no CTR left).
 */
export class SFrameError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = "SFrameError";
    this.code = code;
  }
}

// --- Cipher suites (client/e2ee/suites.py) ---------------------------------------

/** IANA "SFrame Cipher Suites" values (RFC 9605 §8.1). */
export const CipherSuite = Object.freeze({
  AES_128_CTR_HMAC_SHA256_80: 1,
  AES_128_CTR_HMAC_SHA256_64: 2,
  AES_128_CTR_HMAC_SHA256_32: 3,
  AES_128_GCM_SHA256_128: 4,
  AES_256_GCM_SHA512_128: 5,
});

/**
 * @typedef {object} SuiteParams  Sizes in bytes from RFC 9605 §4.5 Table 1.
 * @property {number} suite
 * @property {string} hash  WebCrypto name of the suite's hash (HKDF and, for CTR, HMAC)
 * @property {number} nh
 * @property {number|null} nka  null for the plain GCM suites
 * @property {number} nk
 * @property {number} nn
 * @property {number} nt
 */

/** @type {Map<number, SuiteParams>} */
const PARAMS = new Map(
  [
    [CipherSuite.AES_128_CTR_HMAC_SHA256_80, 32, 16, 48, 12, 10],
    [CipherSuite.AES_128_CTR_HMAC_SHA256_64, 32, 16, 48, 12, 8],
    [CipherSuite.AES_128_CTR_HMAC_SHA256_32, 32, 16, 48, 12, 4],
    [CipherSuite.AES_128_GCM_SHA256_128, 32, null, 16, 12, 16],
    [CipherSuite.AES_256_GCM_SHA512_128, 64, null, 32, 12, 16],
  ].map(([suite, nh, nka, nk, nn, nt]) => [
    suite,
    Object.freeze({ suite, hash: nh === 64 ? "SHA-512" : "SHA-256", nh, nka, nk, nn, nt }),
  ]),
);

/**
 * Look a suite up by its IANA value; anything unregistered is refused, not guessed.
 * @param {number} suite
 * @returns {SuiteParams}
 */
export function suiteParams(suite) {
  const params = PARAMS.get(typeof suite === "bigint" ? Number(suite) : suite);
  if (params === undefined) {
    const shown = typeof suite === "number" ? `0x${suite.toString(16).padStart(4, "0")}` : suite;
    throw new SFrameError("suite", `unsupported SFrame cipher suite ${shown}`);
  }
  return params;
}

// AES-CTR counts in the last 4 bytes of the block (RFC 9605 §4.5.1: nonce ||
// 0x00000000); past 2**32 blocks the count would carry into the nonce bytes.
const MAX_CTR_HMAC_PLAINTEXT = 2 ** 32 * 16;

const subtle = globalThis.crypto.subtle;

/**
 * Split the AEAD key into [encKey, authKey] (RFC 9605 §4.5.1 derive_subkeys).
 * @param {number} suite
 * @param {Uint8Array} key
 * @returns {[Uint8Array, Uint8Array]}
 */
export function deriveSubkeys(suite, key) {
  const params = suiteParams(suite);
  if (params.nka === null) {
    throw new SFrameError("suite", `cipher suite ${params.suite} has no CTR/HMAC subkeys`);
  }
  const raw = asBytes(key, "key");
  if (raw.length !== params.nk) {
    throw new RangeError(`cipher suite ${params.suite} needs a ${params.nk}-byte key`);
  }
  return [raw.slice(0, params.nka), raw.slice(params.nka)];
}

/**
 * Same result as comparing with ===, but the time does not depend on where the
 * first difference is, so a forger learns nothing from how fast a tag is refused.
 * @param {Uint8Array} a
 * @param {Uint8Array} b
 */
export function constantTimeEqual(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/**
 * The GCM suites' tag is the full 16 bytes (Nt = 16, RFC 9605 §4.5.2), appended to
 * the ciphertext as WebCrypto and Python's AESGCM both do.
 * @param {Uint8Array} nonce
 * @param {Uint8Array} aad
 */
function gcmParams(nonce, aad) {
  return { name: "AES-GCM", iv: nonce, additionalData: aad, tagLength: 128 };
}

/**
 * One suite's AEAD with its key imported once as non-extractable CryptoKeys, so
 * per-frame work is only the cipher. Build it with `await Aead.create(suite, key)`
 * (importing is asynchronous in WebCrypto).
 */
export class Aead {
  /**
   * @param {SuiteParams} params
   * @param {CryptoKey|null} gcmKey
   * @param {CryptoKey|null} encKey
   * @param {CryptoKey|null} authKey
   */
  constructor(params, gcmKey, encKey, authKey) {
    this.params = params;
    this._gcmKey = gcmKey;
    this._encKey = encKey;
    this._authKey = authKey;
  }

  /**
   * @param {number} suite
   * @param {Uint8Array} key  Nk bytes
   * @returns {Promise<Aead>}
   */
  static async create(suite, key) {
    const params = suiteParams(suite);
    const raw = asBytes(key, "key");
    if (raw.length !== params.nk) {
      throw new RangeError(`cipher suite ${params.suite} needs a ${params.nk}-byte key`);
    }
    if (params.nka === null) {
      const gcmKey = await subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
      return new Aead(params, gcmKey, null, null);
    }
    const [enc, auth] = deriveSubkeys(suite, raw);
    // AES-CTR "encrypt" is also its decryption: the keystream is XORed either way.
    const encKey = await subtle.importKey("raw", enc, "AES-CTR", false, ["encrypt"]);
    const authKey = await subtle.importKey(
      "raw",
      auth,
      { name: "HMAC", hash: params.hash },
      false,
      ["sign"],
    );
    return new Aead(params, null, encKey, authKey);
  }

  /** @param {Uint8Array} nonce */
  _checkNonce(nonce) {
    if (nonce.length !== this.params.nn) {
      throw new RangeError(`nonce must be ${this.params.nn} bytes`);
    }
  }

  /**
   * AEAD.Encrypt: ciphertext with the tag appended (RFC 5116 convention, §4.4).
   * @param {Uint8Array} nonce
   * @param {Uint8Array} aad
   * @param {Uint8Array} pt
   * @returns {Promise<Uint8Array>}
   */
  async encrypt(nonce, aad, pt) {
    this._checkNonce(nonce);
    if (this._gcmKey !== null) {
      return new Uint8Array(await subtle.encrypt(gcmParams(nonce, aad), this._gcmKey, pt));
    }
    const ct = await this._aesCtr(nonce, pt);
    const tag = await this._computeTag(nonce, aad, ct);
    const out = new Uint8Array(ct.length + tag.length);
    out.set(ct);
    out.set(tag, ct.length);
    return out;
  }

  /**
   * AEAD.Decrypt: the tag is verified before any plaintext is produced (§4.5.1).
   * @param {Uint8Array} nonce
   * @param {Uint8Array} aad
   * @param {Uint8Array} ct  ciphertext || tag
   * @returns {Promise<Uint8Array>}
   */
  async decrypt(nonce, aad, ct) {
    this._checkNonce(nonce);
    const nt = this.params.nt;
    if (ct.length < nt) {
      throw new SFrameError("format", "ciphertext shorter than the authentication tag");
    }
    if (this._gcmKey !== null) {
      try {
        return new Uint8Array(await subtle.decrypt(gcmParams(nonce, aad), this._gcmKey, ct));
      } catch {
        throw new SFrameError("auth", "SFrame authentication failed");
      }
    }
    // Copied now, not viewed: the caller's buffer may change while we await.
    const inner = ct.slice(0, ct.length - nt);
    const tag = ct.slice(ct.length - nt);
    const candidate = await this._computeTag(nonce, aad, inner);
    if (!constantTimeEqual(tag, candidate)) {
      throw new SFrameError("auth", "SFrame authentication failed");
    }
    return this._aesCtr(nonce, inner);
  }

  /**
   * HMAC over the three lengths, nonce, AAD and ciphertext, truncated to Nt
   * (RFC 9605 §4.5.1 compute_tag). The lengths come first so that moving bytes
   * between AAD and ciphertext changes the tag.
   * @param {Uint8Array} nonce
   * @param {Uint8Array} aad
   * @param {Uint8Array} ct
   */
  async _computeTag(nonce, aad, ct) {
    const data = new Uint8Array(24 + nonce.length + aad.length + ct.length);
    const view = new DataView(data.buffer);
    view.setBigUint64(0, BigInt(aad.length));
    view.setBigUint64(8, BigInt(ct.length));
    view.setBigUint64(16, BigInt(this.params.nt));
    data.set(nonce, 24);
    data.set(aad, 24 + nonce.length);
    data.set(ct, 24 + nonce.length + aad.length);
    const mac = new Uint8Array(await subtle.sign("HMAC", this._authKey, data));
    return mac.slice(0, this.params.nt);
  }

  /**
   * AES-CTR whose initial counter block is nonce || 0x00000000 with a 32-bit block
   * counter (RFC 9605 §4.5.1); WebCrypto's `length: 32` is exactly that counter.
   * @param {Uint8Array} nonce
   * @param {Uint8Array} data
   */
  async _aesCtr(nonce, data) {
    if (data.length > MAX_CTR_HMAC_PLAINTEXT) {
      throw new SFrameError("format", "frame too long for the 32-bit AES-CTR block counter");
    }
    const counter = new Uint8Array(16);
    counter.set(nonce);
    const params = { name: "AES-CTR", counter, length: 32 };
    return new Uint8Array(await subtle.encrypt(params, this._encKey, data));
  }
}

// --- Bytes and 64-bit values --------------------------------------------------------

const EMPTY = new Uint8Array(0);

/**
 * Byte arguments as a Uint8Array view. ArrayBuffer and other views are accepted too,
 * because RTCEncodedVideoFrame.data is an ArrayBuffer; anything else is a caller bug.
 * @param {unknown} value
 * @param {string} name
 * @returns {Uint8Array}
 */
function asBytes(value, name) {
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) {
    return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  throw new TypeError(`${name} must be a Uint8Array`);
}

/** @param {...Uint8Array} parts */
export function concat(...parts) {
  let size = 0;
  for (const p of parts) size += p.length;
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** KID and CTR are at most 8 bytes on the wire (3-bit length field, RFC 9605 §4.3). */
export const MAX_KID = (1n << 64n) - 1n;
export const MAX_CTR = (1n << 64n) - 1n;

/**
 * A KID or CTR as BigInt. A Number must be an exact integer: above 2**53 a Number
 * has already lost bits, and silently encrypting under a neighbouring KID or CTR
 * would be worse than refusing.
 * @param {string} name
 * @param {number|bigint} value
 * @returns {bigint}
 */
function toU64(name, value) {
  let big;
  if (typeof value === "bigint") big = value;
  else if (typeof value === "number" && Number.isSafeInteger(value)) big = BigInt(value);
  else throw new SFrameError("header", `${name} ${String(value)} is not an exact integer`);
  if (big < 0n || big > MAX_KID) {
    throw new SFrameError("header", `${name} ${big} does not fit in 64 bits`);
  }
  return big;
}

/**
 * Bytes needed for `value` in big-endian, at least 1 (RFC 9605 §4.3: minimal).
 * @param {bigint} value
 */
function minLen(value) {
  let n = 1;
  while (value > 0xffn) {
    value >>= 8n;
    n++;
  }
  return n;
}

/**
 * @param {Uint8Array} out
 * @param {number} offset
 * @param {bigint} value
 * @param {number} length
 */
function writeBigEndian(out, offset, value, length) {
  for (let i = length - 1; i >= 0; i--) {
    out[offset + i] = Number(value & 0xffn);
    value >>= 8n;
  }
}

// --- Header (RFC 9605 §4.3) ---------------------------------------------------------

/**
 * Config byte |X|K|Y|C| then KID then CTR, minimal big-endian (RFC 9605 §4.3).
 * @param {number|bigint} kid
 * @param {number|bigint} ctr
 * @returns {Uint8Array}
 */
export function encodeHeader(kid, ctr) {
  const k = toU64("KID", kid);
  const c = toU64("CTR", ctr);
  const klen = k < 8n ? 0 : minLen(k);
  const clen = c < 8n ? 0 : minLen(c);
  const out = new Uint8Array(1 + klen + clen);
  let config = 0;
  if (klen === 0) {
    config |= Number(k) << 4;
  } else {
    config |= 0x80 | ((klen - 1) << 4);
    writeBigEndian(out, 1, k, klen);
  }
  if (clen === 0) {
    config |= Number(c);
  } else {
    config |= 0x08 | (clen - 1);
    writeBigEndian(out, 1 + klen, c, clen);
  }
  out[0] = config;
  return out;
}

/**
 * Read one extended KID/CTR field, refusing truncation and non-minimal encodings:
 * values 0-7 live in the config byte and longer ones MUST use the minimum length
 * (§4.3), so any other spelling is malformed (one (KID, CTR), one header).
 * @param {Uint8Array} data
 * @param {number} offset
 * @param {number} length
 * @param {string} name
 */
function readField(data, offset, length, name) {
  if (offset + length > data.length) {
    throw new SFrameError("header", `SFrame header truncated in ${name}`);
  }
  let value = 0n;
  for (let i = 0; i < length; i++) value = (value << 8n) | BigInt(data[offset + i]);
  if (value < 8n || minLen(value) !== length) {
    throw new SFrameError("header", `SFrame header ${name} is not minimally encoded`);
  }
  return value;
}

/**
 * Parse the header at the start of `data`; the rest is the AEAD ciphertext.
 * `length` is kept because the header bytes are the AAD prefix (§4.4.3).
 * @param {Uint8Array} data
 * @returns {{kid: bigint, ctr: bigint, length: number}}
 */
export function decodeHeader(data) {
  const bytes = asBytes(data, "data");
  if (bytes.length === 0) throw new SFrameError("header", "empty SFrame ciphertext");
  const config = bytes[0];
  let offset = 1;
  let kid;
  if (config & 0x80) {
    const klen = ((config >> 4) & 0x07) + 1;
    kid = readField(bytes, offset, klen, "KID");
    offset += klen;
  } else {
    kid = BigInt((config >> 4) & 0x07);
  }
  let ctr;
  if (config & 0x08) {
    const clen = (config & 0x07) + 1;
    ctr = readField(bytes, offset, clen, "CTR");
    offset += clen;
  } else {
    ctr = BigInt(config & 0x07);
  }
  return { kid, ctr, length: offset };
}

// --- Key schedule (RFC 9605 §4.4.2) -------------------------------------------------

const KEY_LABEL = new TextEncoder().encode("SFrame 1.0 Secret key ");
const SALT_LABEL = new TextEncoder().encode("SFrame 1.0 Secret salt ");

/**
 * @param {Uint8Array} prefix
 * @param {number} suite
 * @param {number|bigint} kid
 */
function label(prefix, suite, kid) {
  const k = toU64("KID", kid);
  const params = suiteParams(suite);
  const out = new Uint8Array(prefix.length + 10);
  out.set(prefix);
  const view = new DataView(out.buffer);
  view.setBigUint64(prefix.length, k);
  view.setUint16(prefix.length + 8, params.suite);
  return out;
}

/**
 * "SFrame 1.0 Secret key " + KID (8-byte BE) + cipher_suite (2-byte BE), §4.4.2.
 * @param {number} suite
 * @param {number|bigint} kid
 */
export function keyLabel(suite, kid) {
  return label(KEY_LABEL, suite, kid);
}

/**
 * "SFrame 1.0 Secret salt " + KID (8-byte BE) + cipher_suite (2-byte BE), §4.4.2.
 * @param {number} suite
 * @param {number|bigint} kid
 */
export function saltLabel(suite, kid) {
  return label(SALT_LABEL, suite, kid);
}

/**
 * sframe_secret = HKDF-Extract("", base_key) with the suite's hash (§4.4.2).
 * Extract is HMAC(salt, IKM) (RFC 5869 §2.2). WebCrypto refuses an empty HMAC key,
 * but HMAC pads its key with zeros to the block size (RFC 2104), so Nh zero bytes
 * is the same key. `deriveKeySalt` gets there through WebCrypto's HKDF instead;
 * this one exists so the vectors can check the intermediate value.
 * @param {number} suite
 * @param {Uint8Array} baseKey
 * @returns {Promise<Uint8Array>}
 */
export async function extractSecret(suite, baseKey) {
  const params = suiteParams(suite);
  const salt = await subtle.importKey(
    "raw",
    new Uint8Array(params.nh),
    { name: "HMAC", hash: params.hash },
    false,
    ["sign"],
  );
  return new Uint8Array(await subtle.sign("HMAC", salt, asBytes(baseKey, "baseKey")));
}

/**
 * (sframe_key, sframe_salt) for one KID: Nk and Nn bytes (RFC 9605 §4.4.2).
 * WebCrypto's HKDF with an empty salt is exactly Extract("", base_key) + Expand.
 * @param {number} suite
 * @param {number|bigint} kid
 * @param {Uint8Array} baseKey
 * @returns {Promise<{key: Uint8Array, salt: Uint8Array}>}
 */
export async function deriveKeySalt(suite, kid, baseKey) {
  const params = suiteParams(suite);
  const keyInfo = keyLabel(suite, kid);
  const saltInfo = saltLabel(suite, kid);
  const raw = asBytes(baseKey, "baseKey");
  const ikm = await subtle.importKey("raw", raw, "HKDF", false, ["deriveBits"]);
  const expand = async (info, size) => {
    const hkdf = { name: "HKDF", hash: params.hash, salt: EMPTY, info };
    return new Uint8Array(await subtle.deriveBits(hkdf, ikm, size * 8));
  };
  return { key: await expand(keyInfo, params.nk), salt: await expand(saltInfo, params.nn) };
}

/**
 * nonce = sframe_salt XOR CTR as a big-endian Nn-byte integer (RFC 9605 §4.4.3).
 * @param {Uint8Array} salt
 * @param {number|bigint} ctr
 * @returns {Uint8Array}
 */
export function makeNonce(salt, ctr) {
  let c = toU64("CTR", ctr);
  const nonce = asBytes(salt, "salt").slice();
  for (let i = nonce.length - 1; i >= 0 && c > 0n; i--) {
    nonce[i] ^= Number(c & 0xffn);
    c >>= 8n;
  }
  if (c > 0n) throw new RangeError("CTR does not fit in the salt");
  return nonce;
}

// --- Frames (RFC 9605 §4.4.3, §4.4.4) -----------------------------------------------

/**
 * The derived salt and imported AEAD for one (suite, KID, base key). Deriving once
 * per key rather than once per frame keeps HKDF and key imports off the media path.
 */
export class KeyContext {
  /**
   * @param {number} suite
   * @param {bigint} kid
   * @param {Uint8Array} salt
   * @param {Aead} aead
   */
  constructor(suite, kid, salt, aead) {
    this.suite = suite;
    this.kid = kid;
    this._salt = salt;
    this._aead = aead;
  }

  /**
   * @param {number} suite
   * @param {number|bigint} kid
   * @param {Uint8Array} baseKey
   * @returns {Promise<KeyContext>}
   */
  static async create(suite, kid, baseKey) {
    const params = suiteParams(suite);
    const k = toU64("KID", kid);
    const { key, salt } = await deriveKeySalt(params.suite, k, baseKey);
    return new KeyContext(params.suite, k, salt, await Aead.create(params.suite, key));
  }

  /**
   * header || AEAD.Encrypt(key, nonce, header || metadata, pt) (RFC 9605 §4.4.3).
   * @param {number|bigint} ctr
   * @param {Uint8Array} metadata
   * @param {Uint8Array} plaintext
   * @returns {Promise<Uint8Array>}
   */
  async seal(ctr, metadata, plaintext) {
    const header = encodeHeader(this.kid, ctr);
    const nonce = makeNonce(this._salt, ctr);
    const aad = concat(header, asBytes(metadata, "metadata"));
    const body = await this._aead.encrypt(nonce, aad, asBytes(plaintext, "plaintext"));
    return concat(header, body);
  }

  /**
   * Authenticate and decrypt the bytes after the header (RFC 9605 §4.4.4).
   * @param {{kid: bigint, ctr: bigint, length: number}} header  decodeHeader(ciphertext)
   * @param {Uint8Array} metadata
   * @param {Uint8Array} ciphertext  the whole frame, header included
   * @returns {Promise<Uint8Array>}
   */
  async open(header, metadata, ciphertext) {
    if (header.kid !== this.kid) {
      throw new SFrameError("auth", "frame KID does not match this key");
    }
    const data = asBytes(ciphertext, "ciphertext");
    const nonce = makeNonce(this._salt, header.ctr);
    const aad = concat(data.subarray(0, header.length), asBytes(metadata, "metadata"));
    return this._aead.decrypt(nonce, aad, data.subarray(header.length));
  }
}

/**
 * One SFrame ciphertext. Stateless: the caller owns CTR uniqueness (RFC 9605 §9.1);
 * the media path should use SFrameContext, which does.
 * @param {number} suite
 * @param {Uint8Array} baseKey
 * @param {number|bigint} kid
 * @param {number|bigint} ctr
 * @param {Uint8Array} metadata
 * @param {Uint8Array} plaintext
 * @returns {Promise<Uint8Array>}
 */
export async function encrypt(suite, baseKey, kid, ctr, metadata, plaintext) {
  const key = await KeyContext.create(suite, kid, baseKey);
  return key.seal(ctr, metadata, plaintext);
}

/**
 * {kid, ctr, plaintext} of an SFrame ciphertext; throws SFrameError on any failure.
 * The key is derived for the KID named in the header, as if `baseKey` were stored
 * under that KID (RFC 9605 Appendix C.3 drives it this way).
 * @param {number} suite
 * @param {Uint8Array} baseKey
 * @param {Uint8Array} metadata
 * @param {Uint8Array} ciphertext
 * @returns {Promise<{kid: bigint, ctr: bigint, plaintext: Uint8Array}>}
 */
export async function decrypt(suite, baseKey, metadata, ciphertext) {
  const data = asBytes(ciphertext, "ciphertext");
  const header = decodeHeader(data);
  if (data.length - header.length < suiteParams(suite).nt) {
    throw new SFrameError("format", "SFrame ciphertext shorter than its authentication tag");
  }
  const key = await KeyContext.create(suite, header.kid, baseKey);
  const plaintext = await key.open(header, metadata, data);
  return { kid: header.kid, ctr: header.ctr, plaintext };
}

// --- Context (client/e2ee/context.py) -------------------------------------------------

/** Why `unprotect` did or did not yield a plaintext (Python's DecryptStatus values). */
export const DecryptStatus = Object.freeze({
  OK: "ok",
  PENDING: "pending", // unknown KID: buffered until its key arrives or it expires
  MALFORMED: "malformed", // header or length invalid
  UNKNOWN_KID: "unknown_kid", // unknown KID and buffering is off
  WRONG_KEY_USAGE: "wrong_key_usage", // the KID is one of our sending keys
  AUTH_FAILED: "auth_failed", // tag did not verify
  REPLAY: "replay", // CTR already accepted for this KID
  TOO_OLD: "too_old", // CTR behind the replay window
});

/** Why `protect` returned null (Python's EncryptFailure values). */
export const EncryptFailure = Object.freeze({
  UNKNOWN_KID: "unknown_kid",
  WRONG_KEY_USAGE: "wrong_key_usage",
  CTR_EXHAUSTED: "ctr_exhausted",
  INVALID_INPUT: "invalid_input",
});

export const DEFAULT_REPLAY_WINDOW = 1024; // CTRs; about 30 s of 30 fps video per KID
export const DEFAULT_PENDING_LIMIT = 64; // frames held for unknown KIDs, across all KIDs
export const DEFAULT_PENDING_TTL_MS = 500; // long enough for a key to arrive with the first frames

/**
 * Sliding bitmap of accepted CTRs for one receiving KID (RFC 3711 §3.3.2 style).
 * `check` is cheap and runs before decryption; `commit` runs only after the tag
 * verified, so forged frames cannot move the window.
 */
export class ReplayWindow {
  /** @param {number} size */
  constructor(size = DEFAULT_REPLAY_WINDOW) {
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new RangeError("replay window must hold at least one CTR");
    }
    this.size = size;
    this._mask = (1n << BigInt(size)) - 1n;
    this._highest = -1n;
    this._bits = 0n; // bit i set: CTR (highest - i) was accepted
  }

  /**
   * null if `ctr` may be accepted, else "replay" or "too_old".
   * @param {bigint} ctr
   * @returns {string|null}
   */
  check(ctr) {
    if (ctr > this._highest) return null;
    const diff = this._highest - ctr;
    if (diff >= BigInt(this.size)) return DecryptStatus.TOO_OLD;
    if ((this._bits >> diff) & 1n) return DecryptStatus.REPLAY;
    return null;
  }

  /**
   * Record an authenticated CTR.
   * @param {bigint} ctr
   */
  commit(ctr) {
    if (ctr > this._highest) {
      const shift = ctr - this._highest;
      // cap the shift: a CTR jump of up to 2**64 must not build a huge BigInt
      this._bits = shift >= BigInt(this.size) ? 1n : ((this._bits << shift) | 1n) & this._mask;
      this._highest = ctr;
    } else {
      this._bits |= 1n << (this._highest - ctr);
    }
  }
}

/**
 * @typedef {object} UnprotectResult  `plaintext` is set only when status is "ok".
 * @property {string} status  a DecryptStatus value
 * @property {bigint|null} kid
 * @property {bigint|null} ctr
 * @property {Uint8Array|null} plaintext
 */

/**
 * @param {string} status
 * @param {bigint|null} [kid]
 * @param {bigint|null} [ctr]
 * @param {Uint8Array|null} [plaintext]
 * @returns {UnprotectResult}
 */
function result(status, kid = null, ctr = null, plaintext = null) {
  return { status, kid, ctr, plaintext };
}

const NOT_FAILURES = new Set([DecryptStatus.OK, DecryptStatus.PENDING]);

/**
 * Counters that start at 0 for every name, so a consumer sees every kind of failure
 * (and its absence) without knowing the names.
 * @param {string[]} names
 */
function counters(names) {
  return Object.fromEntries(names.map((name) => [name, 0]));
}

/** @param {Uint8Array} bytes */
function hexOf(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Send and receive keys for one cipher suite, with CTR, role and replay state
 * (RFC 9605 §4.4.1, §9, Appendix A). It keeps the guarantees the stateless
 * functions leave to the application:
 *
 * - a sending key's CTR only moves forward, so no (key, nonce) pair repeats (§9.1);
 * - a base key is for encryption or for decryption, never both (§4.4.1);
 * - a per-KID sliding window rejects repeated and too-old CTRs (§9.3);
 * - frames for a KID not yet known are buffered briefly, then dropped (§4.4.4).
 *
 * `protect` and `unprotect` never throw: one forged packet must not tear down a
 * track, so failures come back as null or a status and are counted in `stats`.
 * Key management calls do throw (SFrameError with code "key_usage", RangeError).
 *
 * Unlike Python, every call here is asynchronous, so calls interleave. State that
 * decides safety (the next CTR, the replay window) is read and written without an
 * await in between, so concurrent calls cannot reuse a CTR or accept a replay.
 */
export class SFrameContext {
  /**
   * @param {number} suite
   * @param {{replayWindow?: number, pendingLimit?: number, pendingTtlMs?: number,
   *          clock?: () => number}} [options]  `clock` returns milliseconds
   *          (performance.now by default); tests pass their own.
   */
  constructor(
    suite,
    {
      replayWindow = DEFAULT_REPLAY_WINDOW,
      pendingLimit = DEFAULT_PENDING_LIMIT,
      pendingTtlMs = DEFAULT_PENDING_TTL_MS,
      clock = () => performance.now(),
    } = {},
  ) {
    this.suite = suiteParams(suite).suite;
    if (!Number.isSafeInteger(replayWindow) || replayWindow < 1) {
      throw new RangeError("replayWindow must be at least 1");
    }
    if (!(pendingLimit >= 0) || !(pendingTtlMs >= 0)) {
      throw new RangeError("pendingLimit and pendingTtlMs must not be negative");
    }
    this._replayWindow = replayWindow;
    this._pendingLimit = pendingLimit;
    this._pendingTtlMs = pendingTtlMs;
    this._clock = clock;
    /** @type {Map<bigint, {key: KeyContext, nextCtr: bigint}>} */
    this._send = new Map();
    /** @type {Map<bigint, {key: KeyContext, window: ReplayWindow}>} */
    this._recv = new Map();
    /** KIDs that were used for sending: never again, or their CTRs would restart. */
    this._retiredSend = new Set();
    /** Send KIDs whose keys are still being derived, claimed so no second add races in. */
    this._addingSend = new Set();
    /**
     * Role of every base key ever added, by keyed fingerprint: the secret itself is
     * not kept, and a per-context random HMAC key makes the fingerprints useless
     * anywhere else.
     * @type {Map<string, string>}
     */
    this._roles = new Map();
    this._fpKey = null;
    /** @type {{kid: bigint, metadata: Uint8Array, ciphertext: Uint8Array, expires: number}[]} */
    this._pending = [];
    this.stats = {
      encrypted: 0,
      decrypted: 0,
      encryptFailures: counters(Object.values(EncryptFailure)),
      // "ok" and "pending" are not failures; Python's Counter never holds them either
      decryptFailures: counters(Object.values(DecryptStatus).filter((s) => !NOT_FAILURES.has(s))),
      buffered: 0, // frames ever put in the unknown-KID buffer
      droppedUnknownKid: 0, // buffered frames expired or evicted without a key
    };
  }

  // --- key management (may throw) ---------------------------------------------------

  /** @param {Uint8Array} baseKey */
  async _fingerprint(baseKey) {
    this._fpKey ??= subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    return hexOf(new Uint8Array(await subtle.sign("HMAC", await this._fpKey, baseKey)));
  }

  /**
   * RFC 9605 §4.4.1: each base key is for encryption or decryption, never both.
   * Synchronous, so it must run after the last await of the caller.
   * @param {string} fp
   * @param {string} usage  "encrypt" or "decrypt"
   */
  _claimRole(fp, usage) {
    const role = this._roles.get(fp);
    if (role !== undefined && role !== usage) {
      throw new SFrameError("key_usage", `base key is already registered for ${role}`);
    }
    this._roles.set(fp, usage);
  }

  /**
   * Whether `kid` is, was or is becoming a sending KID: such a KID is never
   * accepted for decryption (§4.4.1), and never added again for sending (§9.1).
   * @param {bigint} kid
   */
  _isSendKid(kid) {
    return this._send.has(kid) || this._retiredSend.has(kid) || this._addingSend.has(kid);
  }

  /**
   * @param {bigint} kid
   * @param {boolean} adding  whether the caller itself has claimed this KID in _addingSend
   */
  _checkSendKid(kid, adding) {
    const claimedByOther = !adding && this._addingSend.has(kid);
    if (this._send.has(kid) || this._retiredSend.has(kid) || claimedByOther) {
      throw new SFrameError("key_usage", `KID ${kid} was already used for sending`);
    }
    if (this._recv.has(kid)) {
      throw new SFrameError("key_usage", `KID ${kid} is registered for decryption`);
    }
  }

  /**
   * Register an encryption-only key. Its CTR starts at 0 (a KID is never re-added, so
   * there is nothing to resume).
   * @param {number|bigint} kid
   * @param {Uint8Array} baseKey
   * @returns {Promise<void>}
   */
  async addSendKey(kid, baseKey) {
    const k = toU64("KID", kid);
    const raw = asBytes(baseKey, "baseKey");
    this._checkSendKid(k, false);
    this._addingSend.add(k);
    try {
      const fp = await this._fingerprint(raw);
      const key = await KeyContext.create(this.suite, k, raw);
      // Checked again: a removeKey or addRecvKey may have run while we awaited.
      this._checkSendKid(k, true);
      this._claimRole(fp, "encrypt");
      this._send.set(k, { key, nextCtr: 0n });
    } finally {
      this._addingSend.delete(k);
    }
  }

  /**
   * Register a decryption-only key; resolves to the results of frames buffered for
   * it, in arrival order. Replacing a receive key for the same KID starts a fresh
   * replay window.
   * @param {number|bigint} kid
   * @param {Uint8Array} baseKey
   * @returns {Promise<UnprotectResult[]>}
   */
  async addRecvKey(kid, baseKey) {
    const k = toU64("KID", kid);
    const raw = asBytes(baseKey, "baseKey");
    const checkKid = () => {
      if (this._isSendKid(k)) {
        throw new SFrameError("key_usage", `KID ${k} is registered for encryption`);
      }
    };
    checkKid();
    const fp = await this._fingerprint(raw);
    const key = await KeyContext.create(this.suite, k, raw);
    checkKid();
    this._claimRole(fp, "decrypt");
    const entry = { key, window: new ReplayWindow(this._replayWindow) };
    this._recv.set(k, entry);
    return this._releasePending(k, entry);
  }

  /**
   * Whether frames under this KID can be decrypted now.
   * @param {number|bigint} kid
   */
  hasRecvKey(kid) {
    return this._recv.has(toU64("KID", kid));
  }

  /**
   * Forget a key. A removed sending KID can never be added again for sending.
   * @param {number|bigint} kid
   */
  removeKey(kid) {
    const k = toU64("KID", kid);
    if (this._send.has(k) || this._addingSend.has(k)) {
      this._send.delete(k);
      this._retiredSend.add(k);
    }
    this._recv.delete(k);
  }

  /**
   * The CTR the next `protect` with `kid` will use.
   * @param {number|bigint} kid
   * @returns {bigint}
   */
  nextCtr(kid) {
    const entry = this._send.get(toU64("KID", kid));
    if (entry === undefined) throw new SFrameError("key_usage", `KID ${kid} is not a sending key`);
    if (entry.nextCtr > MAX_CTR) {
      throw new SFrameError("ctr_exhausted", `KID ${kid} has no CTR values left`);
    }
    return entry.nextCtr;
  }

  /** Frames waiting for the key of their KID. */
  get pendingCount() {
    return this._pending.length;
  }

  // --- media path (never throws) ------------------------------------------------------

  /**
   * Encrypt with the sending key `kid`; null (counted in stats) if that is not possible.
   * @param {number|bigint} kid
   * @param {Uint8Array} plaintext
   * @param {Uint8Array} [metadata]
   * @returns {Promise<Uint8Array|null>}
   */
  async protect(kid, plaintext, metadata = EMPTY) {
    let k;
    try {
      k = toU64("KID", kid);
    } catch {
      return this._encryptFailed(EncryptFailure.UNKNOWN_KID);
    }
    const entry = this._send.get(k);
    if (entry === undefined) {
      return this._encryptFailed(
        this._recv.has(k) ? EncryptFailure.WRONG_KEY_USAGE : EncryptFailure.UNKNOWN_KID,
      );
    }
    const ctr = entry.nextCtr;
    if (ctr > MAX_CTR) return this._encryptFailed(EncryptFailure.CTR_EXHAUSTED);
    // Advanced before sealing, and before any await: concurrent calls get distinct
    // CTRs, and even if sealing fails this CTR is never offered again.
    entry.nextCtr = ctr + 1n;
    let out;
    try {
      out = await entry.key.seal(ctr, metadata, plaintext);
    } catch {
      return this._encryptFailed(EncryptFailure.INVALID_INPUT);
    }
    this.stats.encrypted++;
    return out;
  }

  /**
   * Decrypt one SFrame ciphertext; failures come back as a status, never thrown.
   * @param {Uint8Array} ciphertext
   * @param {Uint8Array} [metadata]
   * @returns {Promise<UnprotectResult>}
   */
  async unprotect(ciphertext, metadata = EMPTY) {
    this._expirePending();
    let data;
    let meta;
    let header;
    try {
      data = asBytes(ciphertext, "ciphertext");
      meta = asBytes(metadata, "metadata");
      header = decodeHeader(data);
    } catch {
      return this._decryptFailed(DecryptStatus.MALFORMED);
    }
    const entry = this._recv.get(header.kid);
    if (entry === undefined) {
      if (this._isSendKid(header.kid)) {
        return this._decryptFailed(DecryptStatus.WRONG_KEY_USAGE, header.kid, header.ctr);
      }
      return this._buffer(header, meta, data);
    }
    return this._open(entry, header, data, meta);
  }

  // --- internals ------------------------------------------------------------------------

  /**
   * @param {{key: KeyContext, window: ReplayWindow}} entry
   * @param {{kid: bigint, ctr: bigint, length: number}} header
   * @param {Uint8Array} data
   * @param {Uint8Array} metadata
   */
  async _open(entry, header, data, metadata) {
    const early = entry.window.check(header.ctr);
    if (early !== null) return this._decryptFailed(early, header.kid, header.ctr);
    let plaintext;
    try {
      plaintext = await entry.key.open(header, metadata, data);
    } catch (error) {
      const forged = error instanceof SFrameError && error.code === "auth";
      const status = forged ? DecryptStatus.AUTH_FAILED : DecryptStatus.MALFORMED;
      return this._decryptFailed(status, header.kid, header.ctr);
    }
    // Checked again: the same frame may have been accepted while this one decrypted.
    const late = entry.window.check(header.ctr);
    if (late !== null) return this._decryptFailed(late, header.kid, header.ctr);
    entry.window.commit(header.ctr);
    this.stats.decrypted++;
    return result(DecryptStatus.OK, header.kid, header.ctr, plaintext);
  }

  /**
   * RFC 9605 §4.4.4: MAY buffer a frame whose KID has no key yet, briefly. The bytes
   * are copied: the caller owns its buffer again as soon as we return.
   * @param {{kid: bigint, ctr: bigint}} header
   * @param {Uint8Array} metadata
   * @param {Uint8Array} data
   */
  _buffer(header, metadata, data) {
    if (this._pendingLimit === 0 || this._pendingTtlMs === 0) {
      return this._decryptFailed(DecryptStatus.UNKNOWN_KID, header.kid, header.ctr);
    }
    if (this._pending.length >= this._pendingLimit) {
      this._pending.shift(); // the oldest is the least useful to a decoder
      this.stats.droppedUnknownKid++;
    }
    this._pending.push({
      kid: header.kid,
      metadata: metadata.slice(),
      ciphertext: data.slice(),
      expires: this._clock() + this._pendingTtlMs,
    });
    this.stats.buffered++;
    return result(DecryptStatus.PENDING, header.kid, header.ctr);
  }

  _expirePending() {
    const now = this._clock();
    let expired = 0;
    while (expired < this._pending.length && this._pending[expired].expires <= now) expired++;
    if (expired > 0) {
      this._pending.splice(0, expired);
      this.stats.droppedUnknownKid += expired;
    }
  }

  /**
   * @param {bigint} kid
   * @param {{key: KeyContext, window: ReplayWindow}} entry
   */
  async _releasePending(kid, entry) {
    this._expirePending();
    const ready = this._pending.filter((p) => p.kid === kid);
    if (ready.length === 0) return [];
    this._pending = this._pending.filter((p) => p.kid !== kid);
    const results = [];
    for (const p of ready) {
      results.push(await this._open(entry, decodeHeader(p.ciphertext), p.ciphertext, p.metadata));
    }
    return results;
  }

  /** @param {string} reason */
  _encryptFailed(reason) {
    this.stats.encryptFailures[reason]++;
    return null;
  }

  /**
   * @param {string} status
   * @param {bigint|null} [kid]
   * @param {bigint|null} [ctr]
   */
  _decryptFailed(status, kid = null, ctr = null) {
    this.stats.decryptFailures[status]++;
    return result(status, kid, ctr);
  }
}
