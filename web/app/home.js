// The start page: create a meeting (and become its host in this tab), or open one
// from a link or id.
import { createMeeting, saveHostKey } from "./api.js";
import { byId } from "./dom.js";

const ROOM_ID = /^[A-Za-z0-9_-]{4,128}$/;

export function meetingPath(roomId) {
  return `/m/${encodeURIComponent(roomId)}`;
}

export function showHome() {
  byId("create-form").addEventListener("submit", onCreate);
  byId("join-form").addEventListener("submit", onJoinLink);
  byId("copy-link").addEventListener("click", copyLink);
}

async function onCreate(event) {
  event.preventDefault();
  const button = byId("create-button");
  const error = byId("create-error");
  error.textContent = "";
  button.disabled = true;
  try {
    const room = await createMeeting({
      name: byId("create-name").value.trim(),
      passcode: byId("create-passcode").value.trim(),
      waiting_room: byId("create-waiting-room").checked,
      screen_share: byId("create-screen-share").checked ? "everyone" : "hosts",
    });
    saveHostKey(room.room_id, room.host_key); // this tab hosts; the link stays key-free
    showCreated(room);
  } catch (e) {
    error.textContent = e.status === 400 ? e.message : "Could not create the meeting. Try again.";
  } finally {
    button.disabled = false;
  }
}

function showCreated(room) {
  byId("create-form").hidden = true;
  byId("created").hidden = false;
  byId("meeting-link").value = room.link || new URL(meetingPath(room.room_id), location.origin).href;
  byId("created-passcode").textContent = room.passcode || "none: guests wait until you let them in";
  byId("join-as-host").onclick = () => location.assign(meetingPath(room.room_id));
  byId("created-title").focus();
}

async function copyLink() {
  const input = byId("meeting-link");
  const status = byId("copy-status");
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    // no clipboard API (plain http on another host): the old way still works
    input.select();
    document.execCommand("copy");
  }
  status.textContent = "Link copied";
}

/** A pasted link (any host, /m/<id>) or a bare id. */
export function roomIdFrom(text) {
  const value = text.trim();
  try {
    const match = new URL(value).pathname.match(/^\/m\/([^/]+)\/?$/);
    if (match) return decodeURIComponent(match[1]);
  } catch {
    // not a URL: maybe the id itself
  }
  return ROOM_ID.test(value) ? value : null;
}

function onJoinLink(event) {
  event.preventDefault();
  const roomId = roomIdFrom(byId("join-link").value);
  if (!roomId) {
    byId("join-error").textContent = "Paste the meeting link or its id.";
    byId("join-link").setAttribute("aria-invalid", "true");
    return;
  }
  location.assign(meetingPath(roomId));
}
