// A participant's meeting: joins through the control plane, keeps one Connection
// to the relay, holds what the page shows (roster, policy, waiting list, speakers,
// security code), and reconnects by itself when the relay goes away.
import * as api from "./api.js";
import { Connection } from "./connection.js";

// Close codes and room_closed reasons that end the meeting for this page
// (docs/signaling.md): asking the control plane again would not help.
const FINAL_REASONS = new Set(["room_ended", "removed", "denied"]);
const FINAL_CODES = { 4005: "locked", 4006: "removed", 4007: "denied", 4003: "refused" };
const FINAL_4004 = { room_not_found: "room_ended", room_full: "room_full" };
// API refusals that end it as well, when they come while reconnecting.
const FINAL_API = { 404: "room_ended", 403: "removed", 423: "locked" };

// Reconnect back-off: quick at first, then every second while the cluster moves
// the meeting off a dead relay (about 3 s), slower after FAST_FOR_MS, given up
// after GIVE_UP_MS.
const FIRST_DELAY_MS = 250;
const FAST_DELAY_MS = 1000;
const FAST_FOR_MS = 15000;
const MAX_DELAY_MS = 5000;
const GIVE_UP_MS = 60000;

// Errors that are races, not faults: a size for a track that just went away, a mute
// of a source the relay stopped a moment ago.
const BENIGN_ERRORS = new Set(["unknown_track", "not_published"]);

export class Meeting {
  /**
   * roomId, name, passcode, hostKey: what the join API needs (kept for reconnects);
   * media: LocalMedia; listeners: {change(), state(state), notice(text), error(text)}.
   */
  constructor({ roomId, name, passcode, hostKey, media, listeners }) {
    Object.assign(this, { roomId, name, passcode, hostKey, media, listeners });
    this.state = "joining";
    this.reason = null;
    this.conn = null;
    this.self = { participantId: null, role: null, rights: [] };
    this.room = {};
    this.participants = new Map(); // the others: id -> {participant_id, name, role, tracks: Map}
    this.waiting = []; // {participant_id, name}, for moderators
    this.speakers = []; // participant ids, dominant first
    this.securityCode = null;
    this.pendingPublish = null; // a source we asked to publish, until offered or refused
  }

  get moderator() {
    return this.self.role === "host" || this.self.role === "cohost";
  }

  /** A grant from the control plane (an ApiError when it refuses). */
  requestGrant() {
    return api.joinMeeting(this.roomId, {
      display_name: this.name,
      passcode: this.hostKey ? "" : this.passcode,
      host_key: this.hostKey,
      // After a lost connection: who we were, and the relay's proof that we were
      // inside (past the waiting room, before a lock); see conclave/rejoin.py.
      rejoin_participant_id: this.rejoinProof ? this.rejoinProof.participantId : "",
      rejoin_token: this.rejoinProof ? this.rejoinProof.token : "",
      // The relay that vanished without a word, if it did: the control plane asks
      // it, and moves the meeting at once if it does not answer (docs/architecture.md).
      unreachable_node_id: this.unreachableNode || "",
      // The relay that turned us away as full: another relay of the meeting takes
      // us (docs/cascading.md). And where we are, when the page was given it.
      full_node_id: this.fullNode || "",
      region: new URLSearchParams(location.search).get("region") || "",
      // Ask for publish rights even without a camera or microphone: the screen
      // may still be shared (what is sent is decided at `join`, not here).
      publish: true,
    });
  }

  open(join) {
    this.nodeId = join.node_id; // the relay this connection goes to
    const conn = new Connection({
      join,
      publish: this.media.devices,
      media: this.media,
      handlers: {
        message: (m) => conn === this.conn && this.onMessage(m),
        error: (m) => conn === this.conn && this.onRelayError(m),
        remote: () => conn === this.conn && this.onRemote(),
        security: (keys) => conn === this.conn && this.onSecurity(keys),
        lost: (info) => conn === this.conn && this.onLost(info),
      },
    });
    this.conn = conn;
    this.changed(); // the page's hooks name the new relay before the old connection closes
    conn.open();
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.listeners.state(state);
  }

  changed() {
    this.listeners.change();
  }

  // --- leaving and reconnecting ---

  onLost({ code, reason, error }) {
    this.conn = null;
    const final = FINAL_REASONS.has(reason) ? reason
      : FINAL_CODES[code] || (code === 4004 && FINAL_4004[error]) || null;
    if (final) return this.finish(final);
    // No room_closed and no refusal: the relay itself is gone (or unreachable).
    if (!reason && !error && this.state === "meeting") this.unreachableNode = this.nodeId;
    if (error === "node_full") this.fullNode = this.nodeId;
    if (this.state !== "reconnecting") {
      this.reconnectStarted = performance.now();
      this.attempt = 0;
      this.clearRemote();
      this.setState("reconnecting");
    }
    this.scheduleRetry();
  }

  scheduleRetry() {
    const elapsed = performance.now() - this.reconnectStarted;
    if (elapsed > GIVE_UP_MS) return this.finish("connection_lost");
    const cap = elapsed < FAST_FOR_MS ? FAST_DELAY_MS : MAX_DELAY_MS;
    const delay = Math.min(FIRST_DELAY_MS * 2 ** this.attempt++, cap);
    this.retryTimer = setTimeout(() => this.rejoin(), delay);
  }

  /** Ask the control plane again: it places the meeting on a live relay. */
  async rejoin() {
    let join;
    try {
      join = await this.requestGrant();
    } catch (e) {
      if (this.state === "ended") return;
      if (FINAL_API[e.status]) return this.finish(FINAL_API[e.status]);
      return this.scheduleRetry();
    }
    if (this.state === "reconnecting") this.open(join);
  }

  /**
   * The relay is draining (`reconnect`, docs/signaling.md): a grant for the
   * meeting's next relay first, then the switch, so that media stops only for the
   * switch itself. If the grant does not come, the relay closes us after its grace
   * period and the lost-connection path takes over.
   */
  async move() {
    if (this.moving || this.state !== "meeting") return;
    this.moving = true;
    try {
      const join = await this.requestGrant();
      if (this.state !== "meeting" || !this.conn) return;
      const old = this.conn;
      this.clearRemote();
      this.open(join);
      old.close(); // no `leave`: the old rejoin token stays good until the new join
    } catch (e) {
      // refused or unreachable: wait for the relay's room_closed, then rejoin
    } finally {
      this.moving = false;
    }
  }

  leave() {
    this.finish("left", { leave: true });
  }

  async endForAll() {
    await api.endMeeting(this.roomId, this.hostKey);
    // the relay now closes every connection with room_closed "room_ended"
  }

  finish(reason, { leave = false } = {}) {
    if (this.state === "ended") return;
    clearTimeout(this.retryTimer);
    if (this.conn) this.conn.close({ leave });
    this.conn = null;
    this.media.stop();
    this.reason = reason;
    this.clearRemote();
    this.setState("ended");
  }

  clearRemote() {
    this.participants.clear();
    this.waiting = [];
    this.speakers = [];
    this.securityCode = null;
    this.changed();
  }

  // --- what the relay tells us ---

  onMessage(m) {
    const handler = this.messageHandlers[m.type];
    if (handler) {
      handler.call(this, m);
      this.changed();
    }
  }

  onRelayError(m) {
    if (m.code === "not_allowed" && this.pendingPublish) {
      this.publishRefused(this.pendingPublish);
      return;
    }
    if (!BENIGN_ERRORS.has(m.code)) this.listeners.error(`${m.code}: ${m.message}`);
  }

  onRemote() {
    if (this.pendingPublish && this.pendingPublish in this.conn.publishMids) this.pendingPublish = null;
    this.changed();
  }

  onSecurity(keys) {
    this.securityCode = keys.securityCode;
    this.changed();
  }

  publishRefused(source) {
    this.pendingPublish = null;
    if (source === "screen") this.media.stopScreen();
    else this.media.setEnabled(source, false);
    this.listeners.notice(source === "screen" ? "You may not share your screen now." : `You may not turn on your ${source} now.`);
    this.changed();
  }

  participant(id) {
    return this.participants.get(id);
  }

  addParticipant(p) {
    const tracks = new Map((p.tracks || []).map((t) => [t.track_id, t]));
    this.participants.set(p.participant_id, { ...p, tracks });
  }

  /** Tell the relay what the person chose while we were not connected. */
  restoreLocalState() {
    for (const source of this.media.devices) {
      if (!this.media.enabled(source)) this.conn.send({ type: "mute", source, muted: true });
    }
    if (this.media.track("screen")) {
      if (this.self.rights.includes("screen")) this.requestPublish("screen");
      else this.media.stopScreen();
    }
  }

  // --- what the person does ---

  toggle(source) {
    this.setMuted(source, this.media.enabled(source));
  }

  /** Mute or unmute the microphone or camera: track.enabled plus a `mute` message. */
  setMuted(source, muted) {
    if (!this.media.track(source)) return;
    this.media.setEnabled(source, !muted);
    const conn = this.conn;
    if (conn && conn.joined) {
      if (source in conn.publishMids) conn.send({ type: "mute", source, muted });
      else if (!muted) this.requestPublish(source); // the relay stopped it (suspension, rights)
    }
    this.changed();
  }

  requestPublish(source) {
    this.pendingPublish = source;
    this.conn.send({ type: "publish", source });
  }

  async toggleScreen() {
    if (this.media.track("screen")) return this.stopScreen();
    let track;
    try {
      track = await this.media.startScreen();
    } catch (e) {
      if (e.name !== "NotAllowedError") this.listeners.notice("Screen sharing is not available.");
      return;
    }
    track.addEventListener("ended", () => this.stopScreen()); // the browser's own "Stop sharing"
    if (this.conn && this.conn.joined) this.requestPublish("screen");
    this.changed();
  }

  stopScreen() {
    if (!this.media.track("screen")) return;
    this.media.stopScreen();
    if (this.conn && "screen" in this.conn.publishMids) this.conn.send({ type: "unpublish", source: "screen" });
    this.changed();
  }

  /** Moderator actions (docs/signaling.md); the relay checks the role again. */
  moderate(message) {
    if (this.conn) this.conn.send(message);
  }

  setVideoSize(trackId, width, height) {
    if (this.conn) this.conn.setVideoSize(trackId, width, height);
  }

  /** The remote streams of the current connection (mid -> stream with its track). */
  get streams() {
    return this.conn ? this.conn.streams : new Map();
  }

  /** The receiver of each remote participant's camera (what its tile shows). */
  videoReceivers() {
    const result = {};
    for (const s of this.streams.values()) {
      if (s.kind === "video" && (s.source || "camera") === "camera") result[s.participant_id] = s.receiver;
    }
    return result;
  }

  stats() {
    return this.conn ? this.conn.stats() : Promise.resolve({});
  }
}

Meeting.prototype.messageHandlers = {
  reconnect() {
    this.move();
  },
  joined(m) {
    this.unreachableNode = null;
    this.fullNode = null;
    if (m.rejoin_token) this.rejoinProof = { participantId: m.participant_id, token: m.rejoin_token };
    this.self = { participantId: m.participant_id, role: m.role, rights: m.publish_rights || [] };
    this.room = m.room || {};
    this.participants.clear();
    for (const p of m.roster || []) this.addParticipant(p);
    this.restoreLocalState();
    this.setState("meeting");
  },
  waiting() {
    this.setState("waiting");
  },
  waiting_list(m) {
    const before = new Set(this.waiting.map((w) => w.participant_id));
    this.waiting = m.participants || [];
    const newcomers = this.waiting.filter((w) => !before.has(w.participant_id));
    if (newcomers.length) {
      const names = newcomers.map((w) => w.name).join(", ");
      this.listeners.notice(`${names} ${newcomers.length > 1 ? "are" : "is"} waiting to join.`, { waiting: true });
    }
  },
  room_updated(m) {
    this.room = m.room || {};
  },
  participant_updated(m) {
    const p = m.participant;
    if (p.participant_id === this.self.participantId) {
      if (p.role !== this.self.role) this.listeners.notice(p.role === "cohost" ? "You are now a co-host." : "You are no longer a co-host.");
      this.self.role = p.role;
    } else {
      this.addParticipant(p);
    }
  },
  publish_rights(m) {
    this.self.rights = m.sources || [];
  },
  muted_by_host(m) {
    this.media.setEnabled(m.source, false);
    this.listeners.notice(`A host muted your ${m.source}.`);
  },
  unpublished(m) {
    if (m.source === "screen") this.media.stopScreen();
    else this.media.setEnabled(m.source, false);
    const why = m.reason === "suspended" ? "The host suspended participant activities" : "A host changed what you may share";
    this.listeners.notice(`${why}: your ${m.source} is off.`);
  },
  participant_joined(m) {
    this.addParticipant(m.participant);
  },
  participant_left(m) {
    this.participants.delete(m.participant_id);
    this.speakers = this.speakers.filter((id) => id !== m.participant_id);
  },
  track_published(m) {
    const p = this.participant(m.participant_id);
    if (p) p.tracks.set(m.track.track_id, m.track);
  },
  track_unpublished(m) {
    const p = this.participant(m.participant_id);
    if (p) p.tracks.delete(m.track_id);
  },
  track_muted(m) {
    const p = this.participant(m.participant_id);
    const track = p && p.tracks.get(m.track_id);
    if (track) track.muted = m.muted;
  },
  active_speakers(m) {
    this.speakers = (m.speakers || []).map((s) => s.participant_id);
  },
};
