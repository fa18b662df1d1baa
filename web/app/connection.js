// One signalling session with a relay (docs/signaling.md) and its peer connection:
// answers the relay's offers, sends the local tracks on the m-lines it names,
// encrypts and decrypts every frame (web/e2ee/worker.js) with keys agreed through
// web/e2ee/group.js, and passes everything about the meeting itself (roster,
// policy, moderation) to its owner. A reconnect makes a new Connection.
import { MeetingKeys } from "../e2ee/group.js";

const WORKER_URL = new URL("../e2ee/worker.js", import.meta.url);
// ICE that has not connected this long after an answer will not: start over.
const CONNECT_TIMEOUT_MS = 15000;
const MAX_VIDEO_SIZE = 16384;

export class Connection {
  /**
   * join: the join API's reply (signal_url, grant); publish: sources to send;
   * media: LocalMedia; handlers: {message(m), error(m), remote(), security(keys),
   * lost({code, reason, error})}.
   */
  constructor({ join, publish, media, handlers }) {
    this.join = join;
    this.publish = publish;
    this.media = media;
    this.handlers = handlers;
    this.joined = false;
    this.streams = new Map(); // mid -> {mid, participant_id, track_id, kind, source, track, receiver}
    this.publishMids = {}; // source -> mid this page sends on (latest offer)
    this.transformed = new WeakSet(); // senders/receivers that already encrypt
    this.sentSizes = new Map(); // track_id -> "WxH" last asked for
    this.chain = Promise.resolve(); // offers and layer changes, one at a time
    this.keys = null;
    this.keysReady = null;
    this.closedReason = null; // from room_closed, just before the relay closes
    this.lastError = null; // the last error code (it explains a close code 4004)
    this.done = false;
  }

  open() {
    this.pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", iceServers: [] });
    this.worker = new Worker(WORKER_URL, { type: "module" });
    this.pc.onicecandidate = (event) =>
      this.send({ type: "ice", candidate: event.candidate ? event.candidate.toJSON() : null });
    this.pc.onconnectionstatechange = () => {
      if (this.pc.connectionState === "failed") this.end({ reason: "peer_failed" });
    };
    this.ws = new WebSocket(this.join.signal_url);
    // The relay offers the asked video codec first; VP8 suits every browser.
    this.ws.onopen = () =>
      this.send({ type: "join", grant: this.join.grant, publish: this.publish, video_codec: "vp8" });
    this.ws.onmessage = (event) => this.receive(event.data);
    this.ws.onclose = (event) =>
      this.end({ code: event.code, reason: this.closedReason, error: this.lastError });
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  /** Leave on purpose (or drop a connection the owner gave up on). */
  close({ leave = false } = {}) {
    if (leave) this.send({ type: "leave" });
    this.done = true;
    this.cleanup();
  }

  /** The connection ended by itself: tell the owner once. */
  end(info) {
    if (this.done) return;
    this.done = true;
    this.cleanup();
    this.handlers.lost({ code: 0, reason: null, error: null, ...info });
  }

  cleanup() {
    clearTimeout(this.connectTimer);
    if (this.keys) this.keys.close();
    if (this.ws) {
      this.ws.onclose = null;
      if (this.ws.readyState <= WebSocket.OPEN) this.ws.close();
    }
    if (this.pc) this.pc.close();
    if (this.worker) this.worker.terminate();
  }

  receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      this.handlers.error({ code: "bad_message", message: "the relay sent something that is not JSON" });
      return;
    }
    switch (message.type) {
      case "joined":
        this.joined = true;
        this.startKeys(message);
        this.handlers.message(message);
        break;
      case "offer":
        this.serially(() => this.onOffer(message), "offer");
        break;
      case "layers":
        this.serially(() => this.onLayers(message), "layers");
        break;
      case "e2ee_members":
        if (this.keysReady) this.keysReady.then((keys) => keys && keys.onMembers(message.members));
        break;
      case "e2ee_key":
        if (this.keysReady) this.keysReady.then((keys) => keys && keys.onKey(message.message));
        break;
      case "room_closed":
        this.closedReason = message.reason;
        break;
      case "error":
        this.lastError = message.code;
        this.handlers.error(message);
        break;
      default:
        this.handlers.message(message);
    }
  }

  serially(step, what) {
    this.chain = this.chain
      .then(() => (this.done ? null : step()))
      .catch((e) => this.done || this.handlers.error({ code: what, message: String(e) }));
  }

  // --- end-to-end encryption ---

  /** Post our key binding; the first member of e2ee_members keys everyone (docs/e2ee.md). */
  startKeys(joined) {
    this.keysReady = (async () => {
      const keys = new MeetingKeys({
        meetingId: joined.room_id,
        participantId: joined.participant_id,
        send: (message) => this.send(message),
        onKeys: (update) => this.worker.postMessage({ type: "keys", ...update }),
        onEpoch: (k) => this.done || this.handlers.security(k),
      });
      await keys.init();
      this.keys = keys;
      this.send(keys.bindingMessage());
      return keys;
    })().catch((e) => {
      this.handlers.error({ code: "e2ee", message: String(e) });
      return null;
    });
  }

  /** Every frame sent on our publish m-lines is sealed; every frame received is opened. */
  encryptMedia() {
    const sending = new Set(Object.values(this.publishMids));
    for (const t of this.pc.getTransceivers()) {
      if (t.mid === null) continue;
      const kind = t.receiver.track.kind;
      if (!this.transformed.has(t.receiver)) {
        t.receiver.transform = new RTCRtpScriptTransform(this.worker, { side: "recv", kind, mid: t.mid });
        this.transformed.add(t.receiver);
      }
      if (sending.has(t.mid) && !this.transformed.has(t.sender)) {
        t.sender.transform = new RTCRtpScriptTransform(this.worker, { side: "send", kind });
        this.transformed.add(t.sender);
      }
    }
  }

  // --- negotiation (the relay always offers) ---

  transceiver(mid) {
    return mid === undefined ? null : this.pc.getTransceivers().find((t) => t.mid === mid) || null;
  }

  async onOffer(message) {
    try {
      await this.negotiate(message);
    } catch (e) {
      // The relay waits for this answer before any other offer: without it the
      // session is stuck, so start over on a new connection.
      this.handlers.error({ code: "negotiation", message: String(e) });
      this.end({ reason: "negotiation_failed" });
    }
  }

  async negotiate(message) {
    await this.pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
    this.publishMids = message.publish || {};
    this.encryptMedia();
    for (const [source, mid] of Object.entries(this.publishMids)) {
      const t = this.transceiver(mid);
      if (!t) continue;
      const track = this.media.track(source);
      if (t.sender.track !== track) await t.sender.replaceTrack(track);
      t.direction = "sendonly";
    }
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    this.send({ type: "answer", sdp: this.pc.localDescription.sdp });
    await this.applySimulcast(message.simulcast || {});
    this.streams = new Map();
    for (const s of message.streams || []) {
      const t = this.transceiver(s.mid);
      if (t) this.streams.set(s.mid, { ...s, track: t.receiver.track, receiver: t.receiver });
    }
    this.watchConnect();
    this.handlers.remote();
  }

  /**
   * The offer's encodings come without scaling, and Chromium's default ladder runs
   * the other way round: set each layer's scale as the relay asks (docs/simulcast.md).
   */
  async applySimulcast(simulcast) {
    for (const [mid, layers] of Object.entries(simulcast)) {
      const t = this.transceiver(mid);
      if (!t) continue;
      const scale = Object.fromEntries(layers.map((l) => [l.rid, l.scale]));
      const parameters = t.sender.getParameters();
      for (const encoding of parameters.encodings || []) {
        if (encoding.rid in scale) encoding.scaleResolutionDownBy = scale[encoding.rid];
      }
      await t.sender.setParameters(parameters);
    }
  }

  /** Dynacast: send only the layers some subscriber receives. */
  async onLayers(message) {
    const t = this.transceiver(this.publishMids[message.source]);
    if (!t) return;
    const parameters = t.sender.getParameters();
    for (const encoding of parameters.encodings || []) {
      if (encoding.rid) encoding.active = message.active.includes(encoding.rid);
    }
    await t.sender.setParameters(parameters);
  }

  watchConnect() {
    if (this.connectTimer || this.streams.size + Object.keys(this.publishMids).length === 0) return;
    this.connectTimer = setTimeout(() => {
      if (this.pc.connectionState !== "connected") this.end({ reason: "peer_timeout" });
    }, CONNECT_TIMEOUT_MS);
  }

  // --- what the page shows ---

  /** Ask the relay for no larger a layer than the tile shows (simulcast). */
  setVideoSize(trackId, width, height) {
    if (![...this.streams.values()].some((s) => s.track_id === trackId)) return;
    const w = Math.min(MAX_VIDEO_SIZE, Math.max(1, Math.round(width)));
    const h = Math.min(MAX_VIDEO_SIZE, Math.max(1, Math.round(height)));
    if (this.sentSizes.get(trackId) === `${w}x${h}`) return;
    this.sentSizes.set(trackId, `${w}x${h}`);
    this.send({ type: "video_size", track_id: trackId, width: w, height: h });
  }

  /** inbound-rtp figures per remote participant, and frames that did not decrypt. */
  async stats() {
    const result = {};
    if (this.done) return result;
    const report = await this.pc.getStats();
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      const info = this.streams.get(s.mid);
      if (!info) return;
      const entry = (result[info.participant_id] ||= {
        framesDecoded: 0, frameWidth: 0, frameHeight: 0, videoPacketsReceived: 0,
        audioPacketsReceived: 0, decryptFailures: 0,
      });
      if (s.kind === "video") {
        entry.framesDecoded += s.framesDecoded || 0;
        entry.frameWidth = Math.max(entry.frameWidth, s.frameWidth || 0);
        entry.frameHeight = Math.max(entry.frameHeight, s.frameHeight || 0);
        entry.videoPacketsReceived += s.packetsReceived || 0;
      } else {
        entry.audioPacketsReceived += s.packetsReceived || 0;
      }
    });
    const failures = await this.workerStats().then((w) => (w ? w.failures : {}));
    for (const [mid, count] of Object.entries(failures)) {
      const info = this.streams.get(mid);
      if (info && result[info.participant_id]) result[info.participant_id].decryptFailures += count;
    }
    return result;
  }

  workerStats() {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(null), 1000);
      this.worker.addEventListener("message", (event) => {
        clearTimeout(timer);
        resolve(event.data.stats);
      }, { once: true });
      this.worker.postMessage({ type: "stats" });
    });
  }
}
