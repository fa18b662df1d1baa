// The pre-join page: name, passcode (not for the host), camera and microphone check.
import { hostKeyFor } from "./api.js";
import { byId, setToggle } from "./dom.js";
import { LocalMedia, micLevel } from "./media.js";

const NAME_KEY = "conclave.displayName"; // this tab only, like the host key

const JOIN_ERRORS = {
  not_found: "No meeting matches this link and passcode. Check both and try again.",
  invalid_argument: "Check your name and passcode.",
  unavailable: "The meeting service is not available right now. Try again in a moment.",
};

/**
 * Show the page and call `join({name, passcode, hostKey, media})` when the person
 * clicks Join; an ApiError it throws is shown on the form.
 */
export function showPrejoin(roomId, join) {
  const hostKey = hostKeyFor(roomId);
  byId("host-note").hidden = !hostKey;
  byId("passcode-row").hidden = Boolean(hostKey);
  const name = byId("display-name");
  name.value = sessionStorage.getItem(NAME_KEY) || "";

  const media = new LocalMedia();
  const ready = media.start().then(() => preview(media));
  let stopMeter = () => {};
  ready.then(() => (stopMeter = micLevel(media.track("microphone"), byId("mic-level"))));

  const toggles = { microphone: byId("prejoin-mic"), camera: byId("prejoin-camera") };
  for (const [source, button] of Object.entries(toggles)) {
    button.addEventListener("click", () => {
      media.setEnabled(source, !media.enabled(source));
      preview(media);
    });
  }

  const error = byId("prejoin-error");
  if (!window.RTCRtpScriptTransform) {
    error.textContent = "This browser cannot encrypt calls end to end. Use a current Chrome, Edge, Firefox or Safari.";
    byId("join-button").disabled = true;
  }

  byId("prejoin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    if (!name.value.trim()) {
      error.textContent = "Enter your name.";
      name.setAttribute("aria-invalid", "true");
      name.focus();
      return;
    }
    name.removeAttribute("aria-invalid");
    sessionStorage.setItem(NAME_KEY, name.value.trim());
    const button = byId("join-button");
    button.disabled = true;
    button.textContent = "Joining…";
    try {
      await ready;
      await join({ name: name.value.trim(), passcode: byId("passcode").value.trim(), hostKey, media });
      stopMeter();
    } catch (e) {
      error.textContent = joinError(e);
      button.disabled = false;
      button.textContent = "Join";
    }
  });
  if (!name.value) name.focus();
}

function joinError(e) {
  if (e.code === "too_many_attempts") {
    return `Too many attempts. Try again in ${e.retryAfter || 60} seconds.`;
  }
  return JOIN_ERRORS[e.code] || "Could not join the meeting. Try again.";
}

/** Show the camera (or "Camera off") and the toggles' state. */
function preview(media) {
  const video = byId("preview");
  const camera = media.track("camera");
  if (camera && (!video.srcObject || video.srcObject.getVideoTracks()[0] !== camera)) {
    video.srcObject = new MediaStream([camera]);
  }
  byId("preview-off").hidden = media.enabled("camera");
  video.hidden = !media.enabled("camera");
  const mic = byId("prejoin-mic");
  const cam = byId("prejoin-camera");
  mic.hidden = !media.track("microphone");
  cam.hidden = !camera;
  setToggle(mic, !media.enabled("microphone"));
  setToggle(cam, !media.enabled("camera"));
  mic.querySelector("use").setAttribute("href", media.enabled("microphone") ? "#icon-mic" : "#icon-mic-off");
  cam.querySelector("use").setAttribute("href", media.enabled("camera") ? "#icon-cam" : "#icon-cam-off");
  let problem = "";
  if (!media.devices.length) problem = `${media.problem} You can still join to watch and listen.`;
  else if (media.devices.length < 2) problem = media.problem;
  byId("device-problem").textContent = problem;
}
