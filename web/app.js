// Conclave's meeting client: routes between the views and exposes the test hooks.
//   /            home: create a meeting, or open one by link
//   /m/{room}    pre-join, then waiting room or meeting, then the ended page
// Test hooks, on window.conclave: state ("home", "prejoin", "waiting", "meeting",
// "reconnecting", "ended"), participantId, nodeId (its relay), role, securityCode, reason (why it
// ended), errors (list of strings), stats() (per remote participant figures),
// videoReceivers() (participant id -> the RTCRtpReceiver its camera tile shows).
import { ApiError } from "./app/api.js";
import { byId, showView } from "./app/dom.js";
import { showHome } from "./app/home.js";
import { Meeting } from "./app/meeting.js";
import { MeetingView } from "./app/meeting-view.js";
import { showPrejoin } from "./app/prejoin.js";

const hooks = (window.conclave = {
  state: "home",
  participantId: null,
  nodeId: null,
  role: null,
  securityCode: null,
  reason: null,
  errors: [],
  stats: () => Promise.resolve({}),
  videoReceivers: () => ({}),
});

window.addEventListener("error", (event) => hooks.errors.push(`page: ${event.message}`));
window.addEventListener("unhandledrejection", (event) => hooks.errors.push(`page: ${event.reason}`));

const ENDED = {
  removed: ["You were removed from this meeting", "A host removed you. You cannot join it again."],
  denied: ["The host did not let you in", "Ask the host for another invitation if this was a mistake."],
  room_ended: ["The meeting has ended", "The host ended it for everyone, or it expired."],
  locked: ["The meeting is locked", "Nobody new can join right now. Ask the host to unlock it."],
  room_full: ["The meeting is full", "Try again when somebody has left."],
  left: ["You left the meeting", ""],
  connection_lost: ["Lost the connection to the meeting", "Check your network connection and rejoin."],
  refused: ["The meeting refused this connection", "Try joining again."],
};
const REJOINABLE = new Set(["left", "connection_lost", "refused", "room_full"]);

function setState(state) {
  hooks.state = state;
  document.body.dataset.state = state;
}

function showEnded(reason) {
  const [title, detail] = ENDED[reason] || ["You are no longer in the meeting", ""];
  hooks.reason = reason;
  byId("ended-reason").textContent = title;
  byId("ended-detail").textContent = detail;
  byId("rejoin-button").hidden = !REJOINABLE.has(reason);
  byId("rejoin-button").onclick = () => location.reload();
  setState("ended");
  showView("ended-view");
}

/** Join from the pre-join page; an ApiError that ends it here shows the ended page. */
async function join(roomId, { name, passcode, hostKey, media }) {
  let view = null;
  const meeting = new Meeting({
    roomId, name, passcode, hostKey, media,
    listeners: {
      change: () => {
        hooks.participantId = meeting.self.participantId;
        hooks.nodeId = meeting.nodeId;
        hooks.role = meeting.self.role;
        hooks.securityCode = meeting.securityCode;
        if (view) view.render();
      },
      state: (state) => onMeetingState(meeting, view, state),
      notice: (text, options) => view && view.notice(text, options),
      error: (text) => hooks.errors.push(text),
    },
  });
  let grant;
  try {
    grant = await meeting.requestGrant();
  } catch (e) {
    const final = e instanceof ApiError && { 403: "removed", 423: "locked" }[e.status];
    if (!final) throw e; // shown on the pre-join form
    media.stop();
    showEnded(final);
    return;
  }
  view = new MeetingView(meeting); // binds the meeting's controls: once per page
  hooks.stats = () => meeting.stats();
  hooks.videoReceivers = () => meeting.videoReceivers();
  meeting.open(grant);
}

function onMeetingState(meeting, view, state) {
  if (state === "ended") {
    view.destroy();
    showEnded(meeting.reason);
    return;
  }
  setState(state);
  if (state === "waiting") showView("waiting-view");
  else showView("meeting-view"); // "meeting", and "reconnecting" over the same view
  view.render();
  view.resume();
  byId("waiting-leave").onclick = () => meeting.leave();
}

function route() {
  const match = location.pathname.match(/^\/m\/([^/]+)\/?$/);
  if (match) {
    const roomId = decodeURIComponent(match[1]);
    setState("prejoin");
    showView("prejoin-view");
    showPrejoin(roomId, (choice) => join(roomId, choice));
  } else {
    setState("home");
    showView("home-view");
    showHome();
  }
}

route();
