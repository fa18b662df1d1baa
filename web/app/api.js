// The control plane's HTTP API (served by control_plane/gateway.py next to this page).

/** A refused API call: `status` is the HTTP status, `code` the gateway's error code. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

async function post(path, body) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "unavailable", "Cannot reach the server");
  }
  let data = {};
  try {
    data = await response.json();
  } catch {
    // an empty or non-JSON body (a proxy's error page): the status says enough
  }
  if (!response.ok) {
    const retry = Number(response.headers.get("Retry-After")) || null;
    throw new ApiError(response.status, data.error || "unavailable", data.message, retry);
  }
  return data;
}

/** {name, passcode?, waiting_room, screen_share} -> {room_id, link, passcode, host_key, ...} */
export function createMeeting(options) {
  return post("/api/rooms", options);
}

/** {display_name, passcode?, host_key?, publish} -> {participant_id, signal_url, grant, role, ...} */
export function joinMeeting(roomId, request) {
  return post(`/api/rooms/${encodeURIComponent(roomId)}/join`, request);
}

export function endMeeting(roomId, hostKey) {
  return post(`/api/rooms/${encodeURIComponent(roomId)}/end`, { host_key: hostKey });
}

// The host key stays in this tab's sessionStorage, never in a URL (links get shared).
const HOST_KEY_PREFIX = "conclave.hostKey.";

export function saveHostKey(roomId, hostKey) {
  sessionStorage.setItem(HOST_KEY_PREFIX + roomId, hostKey);
}

export function hostKeyFor(roomId) {
  return sessionStorage.getItem(HOST_KEY_PREFIX + roomId) || "";
}
