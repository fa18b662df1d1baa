// The meeting view: the video grid, the control bar, the header with the E2EE
// indicator and security code, and the participants panel with the moderators'
// controls. It reads a Meeting (web/app/meeting.js) and calls its actions; it holds
// no meeting state of its own besides DOM elements.
import { byId, h, icon, initials, setToggle } from "./dom.js";

const ROLE_NAMES = { host: "Host", cohost: "Co-host" };
const NOTICE_MS = 6000;

export class MeetingView {
  constructor(meeting) {
    this.meeting = meeting;
    this.tiles = new Map(); // key ("<participant>:<source>" or "self:<source>") -> tile element
    this.audio = new Map(); // mid -> <audio>
    this.sizes = new ResizeObserver((entries) => {
      for (const entry of entries) this.reportSize(entry.target.closest(".tile"));
    });
    this.bind();
  }

  // --- controls ---

  bind() {
    const m = this.meeting;
    const on = (id, handler) => byId(id).addEventListener("click", handler);
    on("mic-button", () => m.toggle("microphone"));
    on("camera-button", () => m.toggle("camera"));
    on("screen-button", () => m.toggleScreen());
    on("participants-button", () => this.togglePanel());
    on("panel-close", () => this.togglePanel(false));
    on("waiting-banner-show", () => this.togglePanel(true));
    on("leave-button", () => m.leave());
    on("admit-all", () => m.moderate({ type: "admit", all: true }));
    on("lock-button", () => m.moderate({ type: "update_room", locked: !m.room.locked }));
    on("suspend-button", () => m.moderate({ type: "update_room", suspended: !m.room.suspended }));
    on("waiting-room-button", () => m.moderate({ type: "update_room", waiting_room: !m.room.waiting_room }));
    on("screen-share-button", () =>
      m.moderate({ type: "update_room", screen_share: m.room.screen_share === "everyone" ? "hosts" : "everyone" }));
    on("end-button", () => m.endForAll().catch(() => this.notice("Could not end the meeting. Try again.")));
    byId("participants-panel").addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.togglePanel(false);
    });
  }

  togglePanel(open = byId("participants-panel").hidden, { focus = true } = {}) {
    byId("participants-panel").hidden = !open;
    byId("participants-button").setAttribute("aria-expanded", String(open));
    if (open && focus) byId("panel-title").focus();
    else if (byId("participants-panel").contains(document.activeElement)) byId("participants-button").focus();
  }

  notice(text, { waiting = false } = {}) {
    const element = byId("notice");
    element.textContent = text;
    clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => (element.textContent = ""), NOTICE_MS);
    // Somebody knocks: show the queue to whoever can let them in.
    // (Without taking the keyboard focus from whatever the host is doing.)
    if (waiting && this.meeting.moderator && byId("participants-panel").hidden) this.togglePanel(true, { focus: false });
  }

  render() {
    this.renderHeader();
    this.renderControls();
    this.renderTiles();
    this.renderAudio();
    this.renderPanel();
    byId("reconnecting").hidden = this.meeting.state !== "reconnecting";
  }

  renderHeader() {
    const m = this.meeting;
    const code = m.securityCode;
    byId("e2ee-indicator").hidden = !code;
    byId("e2ee-pending").hidden = Boolean(code) || m.state !== "meeting";
    byId("security-code").textContent = code || "";
    byId("security-code").parentElement.hidden = !code;
    const flags = [];
    if (m.room.locked) flags.push("Locked");
    if (m.room.suspended) flags.push("Participant activities suspended");
    if (m.room.waiting_room) flags.push("Waiting room on");
    byId("room-flags").replaceChildren(...flags.map((f) => h("span", { class: "flag" }, f)));
  }

  renderControls() {
    const m = this.meeting;
    const media = m.media;
    const mic = byId("mic-button");
    mic.hidden = !media.track("microphone");
    setToggle(mic, !media.enabled("microphone"));
    mic.querySelector("use").setAttribute("href", media.enabled("microphone") ? "#icon-mic" : "#icon-mic-off");
    const camera = byId("camera-button");
    camera.hidden = !media.track("camera");
    setToggle(camera, !media.enabled("camera"));
    camera.querySelector("use").setAttribute("href", media.enabled("camera") ? "#icon-cam" : "#icon-cam-off");
    // Screen sharing needs the right (hosts, or everyone when the meeting allows it).
    const sharing = Boolean(media.track("screen"));
    const screen = byId("screen-button");
    screen.hidden = !sharing && (!m.self.rights.includes("screen") || !navigator.mediaDevices.getDisplayMedia);
    setToggle(screen, sharing, sharing ? "Stop sharing" : "Share screen");
    screen.disabled = m.state !== "meeting";
    byId("participant-count").textContent = String(m.participants.size + 1);
  }

  // --- the grid ---

  /** The tiles to show, in order: screens first, then ourselves, then the others. */
  wantedTiles() {
    const m = this.meeting;
    const media = m.media;
    const video = new Map(); // "<participant>:<source>" -> stream
    for (const s of m.streams.values()) if (s.kind === "video") video.set(`${s.participant_id}:${s.source || "camera"}`, s);
    const screens = [];
    const people = [];
    const selfId = m.self.participantId || "";
    if (media.track("screen")) {
      screens.push({ key: "self:screen", pid: selfId, source: "screen", self: true, name: "Your screen", track: media.track("screen") });
    }
    people.push({
      key: "self:camera", pid: selfId, source: "camera", self: true, name: `${m.name} (you)`, role: m.self.role,
      track: media.track("camera"), videoOff: !media.enabled("camera"), micOff: !media.enabled("microphone"),
    });
    for (const p of m.participants.values()) {
      const screen = video.get(`${p.participant_id}:screen`);
      if (screen) screens.push({ key: `${p.participant_id}:screen`, pid: p.participant_id, source: "screen", name: `${p.name}'s screen`, stream: screen });
      const camera = video.get(`${p.participant_id}:camera`);
      const tracks = [...p.tracks.values()];
      const cameraTrack = tracks.find((t) => t.source === "camera");
      const micTrack = tracks.find((t) => t.source === "microphone");
      people.push({
        key: `${p.participant_id}:camera`, pid: p.participant_id, source: "camera", name: p.name, role: p.role,
        stream: camera, videoOff: !camera || !cameraTrack || cameraTrack.muted, micOff: !micTrack || micTrack.muted,
      });
    }
    return [...screens, ...people];
  }

  renderTiles() {
    const grid = byId("grid");
    const wanted = this.wantedTiles();
    const keys = new Set(wanted.map((t) => t.key));
    for (const [key, tile] of this.tiles) {
      if (!keys.has(key)) {
        this.sizes.unobserve(tile.video);
        tile.remove();
        this.tiles.delete(key);
      }
    }
    wanted.forEach((want, index) => {
      let tile = this.tiles.get(want.key);
      if (!tile) {
        tile = this.makeTile(want);
        this.tiles.set(want.key, tile);
      }
      this.updateTile(tile, want);
      if (grid.children[index] !== tile) {
        grid.insertBefore(tile, grid.children[index] || null);
        tile.video.play().catch(() => {}); // moving a <video> pauses it
      }
    });
    grid.dataset.count = String(Math.min(wanted.length, 9));
  }

  makeTile(want) {
    const video = h("video", { autoplay: true, playsinline: true, class: want.self && want.source === "camera" ? "mirror" : "" });
    video.muted = true; // sound goes through the <audio> elements
    const tile = h("figure", { class: `tile ${want.source}${want.self ? " self" : ""}`, "data-source": want.source },
      video,
      h("div", { class: "avatar", "aria-hidden": "true" }),
      h("figcaption", { class: "caption" },
        h("span", { class: "name" }),
        h("span", { class: "role" }),
        icon("#icon-mic-off", "microphone muted", "mic-off")));
    tile.video = video;
    if (!want.self) this.sizes.observe(video);
    return tile;
  }

  updateTile(tile, want) {
    const m = this.meeting;
    tile.dataset.participantId = want.pid;
    tile.video.dataset.participantId = want.pid;
    tile.classList.toggle("speaking", Boolean(want.pid) && m.speakers.includes(want.pid));
    tile.classList.toggle("video-off", Boolean(want.videoOff));
    tile.querySelector(".name").textContent = want.name;
    tile.querySelector(".role").textContent = ROLE_NAMES[want.role] || "";
    tile.querySelector(".avatar").textContent = initials(want.self ? m.name : want.name);
    tile.querySelector(".mic-off").style.display = want.micOff ? "" : "none";
    const track = want.stream ? want.stream.track : want.track || null;
    if (tile.track !== track) {
      tile.track = track;
      tile.video.srcObject = track ? new MediaStream([track]) : null;
    }
    const trackId = want.stream ? want.stream.track_id : null;
    if (tile.trackId !== trackId) {
      tile.trackId = trackId;
      this.reportSize(tile);
    }
  }

  /** Tell the relay how large we show a remote video (it picks the simulcast layer). */
  reportSize(tile) {
    if (!tile || !tile.trackId) return;
    const box = tile.video.getBoundingClientRect();
    if (box.width < 1 || box.height < 1) return;
    const scale = window.devicePixelRatio || 1;
    this.meeting.setVideoSize(tile.trackId, box.width * scale, box.height * scale);
  }

  /** One <audio> per remote audio stream; the browser mixes them. */
  renderAudio() {
    const streams = this.meeting.streams;
    for (const [mid, element] of this.audio) {
      const s = streams.get(mid);
      if (!s || s.track !== element.track) {
        element.remove();
        this.audio.delete(mid);
      }
    }
    for (const [mid, s] of streams) {
      if (s.kind !== "audio" || this.audio.has(mid)) continue;
      const element = h("audio", { autoplay: true });
      element.track = s.track;
      element.srcObject = new MediaStream([s.track]);
      byId("audio").append(element);
      this.audio.set(mid, element);
    }
  }

  // --- the participants panel ---

  renderPanel() {
    const m = this.meeting;
    const focus = this.rememberFocus();
    byId("participant-list").replaceChildren(this.selfItem(), ...[...m.participants.values()].map((p) => this.personItem(p)));
    const waiting = m.moderator ? m.waiting : [];
    byId("waiting-section").hidden = waiting.length === 0;
    byId("waiting-list").replaceChildren(...waiting.map((w) => this.waitingItem(w)));
    byId("waiting-banner").hidden = waiting.length === 0;
    byId("waiting-banner-text").textContent =
      waiting.length === 1 ? `${waiting[0].name} is waiting to join` : `${waiting.length} people are waiting to join`;
    byId("host-controls").hidden = !m.moderator;
    setToggle(byId("lock-button"), Boolean(m.room.locked));
    setToggle(byId("suspend-button"), Boolean(m.room.suspended));
    setToggle(byId("waiting-room-button"), Boolean(m.room.waiting_room));
    setToggle(byId("screen-share-button"), m.room.screen_share === "everyone");
    byId("end-button").hidden = !(m.self.role === "host" && m.hostKey);
    this.restoreFocus(focus);
  }

  selfItem() {
    const m = this.meeting;
    return h("li", { "data-member-id": m.self.participantId || "" },
      h("span", { class: "who" }, `${m.name} (you)`, roleTag(m.self.role)),
      stateIcons(!m.media.enabled("microphone"), !m.media.enabled("camera")));
  }

  personItem(p) {
    const m = this.meeting;
    const tracks = [...p.tracks.values()];
    const mic = tracks.find((t) => t.source === "microphone");
    const camera = tracks.find((t) => t.source === "camera");
    const actions = [];
    const act = (action, label, message, extra = {}) =>
      actions.push(h("button", { type: "button", "data-action": action, "data-member-id": p.participant_id,
        "aria-label": `${label} ${p.name}`, onclick: () => m.moderate(message), ...extra }, label));
    if (m.moderator && p.role !== "host") {
      if (mic && !mic.muted) act("mute", "Mute", { type: "mute_participant", participant_id: p.participant_id, source: "microphone" });
      if (m.self.role === "host") {
        const cohost = p.role === "cohost";
        act("cohost", cohost ? "Remove co-host" : "Make co-host",
          { type: "set_role", participant_id: p.participant_id, role: cohost ? "participant" : "cohost" });
      }
      act("remove", "Remove", { type: "remove", participant_id: p.participant_id }, { class: "danger" });
    }
    return h("li", { "data-member-id": p.participant_id },
      h("span", { class: "who" }, p.name, roleTag(p.role)),
      stateIcons(!mic || mic.muted, !camera || camera.muted),
      actions.length ? h("span", { class: "actions" }, actions) : null);
  }

  waitingItem(w) {
    const m = this.meeting;
    const button = (action, label, message, extra = {}) =>
      h("button", { type: "button", "data-action": action, "data-waiting-id": w.participant_id,
        "aria-label": `${label} ${w.name}`, onclick: () => m.moderate(message), ...extra }, label);
    return h("li", { "data-waiting-id": w.participant_id },
      h("span", { class: "who" }, w.name),
      h("span", { class: "actions" },
        button("admit", "Admit", { type: "admit", participant_ids: [w.participant_id] }, { class: "primary" }),
        button("deny", "Deny", { type: "deny", participant_ids: [w.participant_id] })));
  }

  // Lists are rebuilt on every change: keep keyboard focus on the same control.
  rememberFocus() {
    const active = document.activeElement;
    if (!active || !active.dataset || !active.dataset.action) return null;
    return { action: active.dataset.action, id: active.dataset.memberId || active.dataset.waitingId };
  }

  restoreFocus(focus) {
    if (!focus) return;
    const target = [...byId("participants-panel").querySelectorAll("button[data-action]")].find(
      (b) => b.dataset.action === focus.action && (b.dataset.memberId || b.dataset.waitingId) === focus.id);
    (target || byId("panel-title")).focus();
  }

  /** Videos pause when their view leaves the document: start them again. */
  resume() {
    for (const tile of this.tiles.values()) tile.video.play().catch(() => {});
  }

  destroy() {
    this.sizes.disconnect();
    for (const tile of this.tiles.values()) tile.remove();
    for (const element of this.audio.values()) element.remove();
    this.tiles.clear();
    this.audio.clear();
  }
}

function roleTag(role) {
  return ROLE_NAMES[role] ? h("span", { class: "role" }, ROLE_NAMES[role]) : null;
}

function stateIcons(micOff, cameraOff) {
  const icons = [];
  if (micOff) icons.push(icon("#icon-mic-off", "microphone off"));
  if (cameraOff) icons.push(icon("#icon-cam-off", "camera off"));
  return h("span", { class: "state" }, icons);
}
