// A minimal browser participant for Conclave (docs/signaling.md): joins with a
// grant, answers the relay's offers, publishes fake camera/microphone on the
// m-lines the offer names, trickles ICE, and exposes figures for the tests.
"use strict";

// The page's `publish` parameter takes kinds (audio, video) or sources; signalling
// speaks sources: the microphone is the audio track, the camera the video track.
const KIND_SOURCES = { audio: "microphone", video: "camera" };

window.conclaveErrors = [];
window.conclaveLog = [];
window.conclaveState = { joined: false, waiting: false, offers: 0, answers: 0 };
window.conclaveSdp = { offers: [], answers: [] };
window.conclaveLayers = []; // the `layers` messages received (dynacast), in order

function log(text) {
  window.conclaveLog.push(`${(performance.now() / 1000).toFixed(3)} ${text}`);
}

function fail(text) {
  window.conclaveErrors.push(String(text));
  log(`ERROR ${text}`);
}

function configFromQuery() {
  const q = new URLSearchParams(location.search);
  if (!q.get("signal_url")) return null;
  return {
    signal_url: q.get("signal_url"),
    grant: q.get("grant"),
    publish: (q.get("publish") || "").split(",").filter((k) => k),  // kinds or sources
    camera: q.get("camera") || "640x360",  // fake camera size, WIDTHxHEIGHT
    e2ee: q.get("e2ee") !== "0",  // end-to-end encryption (docs/e2ee.md), on by default
    codec: (q.get("codec") || "vp8").toLowerCase(),  // video codec to send: vp8 or h264
  };
}

async function start(config) {
  log(`start publish=${config.publish} camera=${config.camera}`);
  const [width, height] = (config.camera || "640x360").split("x").map(Number);
  const publish = [...new Set((config.publish || []).map((k) => KIND_SOURCES[k] || k))];
  let stream = null;
  if (publish.length) {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: publish.includes("microphone"),
      video: publish.includes("camera") ? { width, height, frameRate: 30 } : false,
    });
  }
  const tracks = {}; // source -> track
  if (stream) for (const t of stream.getTracks()) tracks[KIND_SOURCES[t.kind]] = t;

  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", iceServers: [] });
  // End-to-end encryption: one worker runs SFrame on every frame sent and received;
  // the key exchange (web/e2ee/group.js) runs here and hands it the keys.
  const e2ee = config.e2ee !== false;
  const worker = e2ee ? new Worker("/web/e2ee/worker.js", { type: "module" }) : null;
  const transformed = new WeakSet();
  let keys = null;
  let keysReady = null;
  window.conclaveE2ee = async () => {
    if (!worker) return { enabled: false };
    await keysReady;
    const stats = await new Promise((resolve) => {
      worker.addEventListener("message", (event) => resolve(event.data.stats), { once: true });
      worker.postMessage({ type: "stats" });
    });
    const decryptFailures = {}; // per publisher, as conclave join --json reports them
    for (const [mid, count] of Object.entries(stats.failures)) {
      const pid = streams[mid] ? streams[mid].participant_id : `mid ${mid}`;
      decryptFailures[pid] = (decryptFailures[pid] || 0) + count;
    }
    return {
      enabled: true, securityCode: keys && keys.securityCode, members: keys ? keys.members : [],
      epoch: keys ? Number(keys.epoch) : 0, refused: keys ? keys.refused : {}, stats,
      decryptFailures,
    };
  };

  function encryptMedia() {
    if (!worker) return;
    for (const t of pc.getTransceivers()) {
      if (t.mid === null) continue;
      const kind = t.receiver.track.kind;
      if (!transformed.has(t.receiver)) {
        t.receiver.transform = new RTCRtpScriptTransform(worker, { side: "recv", kind, mid: t.mid });
        transformed.add(t.receiver);
      }
      // every m-line we publish on (microphone, camera, screen) is encrypted
      if (Object.values(publishMids).includes(t.mid) && !transformed.has(t.sender)) {
        t.sender.transform = new RTCRtpScriptTransform(worker, { side: "send", kind });
        transformed.add(t.sender);
      }
    }
  }
  window.conclavePc = pc;
  let streams = {}; // mid -> {participant_id, track_id, kind}
  let publishMids = {}; // source -> mid of the m-line this page sends on
  window.conclaveStreams = () => streams;

  pc.oniceconnectionstatechange = () => log(`ice ${pc.iceConnectionState}`);
  pc.onconnectionstatechange = () => log(`connection ${pc.connectionState}`);
  pc.ontrack = (event) => {
    const el = document.createElement(event.track.kind);
    el.autoplay = true;
    el.muted = true;
    el.srcObject = new MediaStream([event.track]);
    document.getElementById("videos").appendChild(el);
  };

  const ws = new WebSocket(config.signal_url);
  window.conclaveWs = ws;
  const send = (message) => ws.send(JSON.stringify(message));
  pc.onicecandidate = (event) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    send({ type: "ice", candidate: event.candidate ? event.candidate.toJSON() : null });
  };

  let chain = Promise.resolve();
  async function onOffer(message) {
    window.conclaveState.offers += 1;
    const sdp = message.sdp;
    window.conclaveSdp.offers.push(sdp);
    streams = {};
    for (const s of message.streams) streams[s.mid] = s;
    publishMids = message.publish || {};
    await pc.setRemoteDescription({ type: "offer", sdp });
    encryptMedia();
    for (const [source, mid] of Object.entries(publishMids)) {
      const transceiver = pc.getTransceivers().find((t) => t.mid === mid);
      if (!transceiver) {
        fail(`no transceiver for publish ${source} mid ${mid}`);
        continue;
      }
      if (!tracks[source]) {
        fail(`offer asks for ${source} which this page does not publish`);
        continue;
      }
      if (transceiver.sender.track !== tracks[source]) {
        await transceiver.sender.replaceTrack(tracks[source]);
      }
      transceiver.direction = "sendonly";
    }
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    window.conclaveSdp.answers.push(pc.localDescription.sdp);
    send({ type: "answer", sdp: pc.localDescription.sdp });
    // Simulcast (docs/signaling.md): the encodings came from the offer's rid list
    // without scaling, and Chromium's default ladder runs the wrong way round.
    for (const [mid, layers] of Object.entries(message.simulcast || {})) {
      const transceiver = pc.getTransceivers().find((t) => t.mid === mid);
      if (!transceiver) continue;
      const scale = {};
      for (const layer of layers) scale[layer.rid] = layer.scale;
      const parameters = transceiver.sender.getParameters();
      for (const encoding of parameters.encodings) {
        if (encoding.rid in scale) encoding.scaleResolutionDownBy = scale[encoding.rid];
      }
      await transceiver.sender.setParameters(parameters);
    }
    window.conclaveState.answers += 1;
    log(`answered offer ${window.conclaveState.offers}`);
  }

  // Dynacast (docs/signaling.md): send only the layers some subscriber receives.
  async function onLayers(message) {
    window.conclaveLayers.push(message.active);
    const source = message.source;
    const transceiver = pc.getTransceivers().find((t) => t.mid === publishMids[source]);
    if (!transceiver) return;
    const parameters = transceiver.sender.getParameters();
    for (const encoding of parameters.encodings) {
      if (encoding.rid) encoding.active = message.active.includes(encoding.rid);
    }
    await transceiver.sender.setParameters(parameters);
  }

  // The relay offers the asked video codec first; a sender uses the offer's order.
  ws.onopen = () => send({ type: "join", grant: config.grant, publish, video_codec: config.codec || "vp8" });
  ws.onclose = (event) => log(`websocket closed ${event.code}`);
  ws.onerror = () => fail("websocket error");
  ws.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (e) {
      fail(`bad message ${e}`);
      return;
    }
    log(`<- ${message.type}`);
    if (message.type === "waiting") {
      window.conclaveState.waiting = true; // until a host admits this page
    } else if (message.type === "joined") {
      window.conclaveState.joined = true;
      window.conclaveState.waiting = false;
      window.conclaveState.role = message.role;
      window.conclaveState.participant_id = message.participant_id;
      if (worker) {
        keysReady = import("/web/e2ee/group.js").then(async ({ MeetingKeys }) => {
          keys = new MeetingKeys({
            meetingId: message.room_id,
            participantId: message.participant_id,
            send,
            onKeys: (update) => worker.postMessage({ type: "keys", ...update }),
            onEpoch: (k) => log(`e2ee epoch ${k.epoch} code ${k.securityCode}`),
          });
          await keys.init();
          send(keys.bindingMessage());
        }).catch((e) => fail(`e2ee: ${e}`));
      }
    } else if (message.type === "e2ee_members") {
      keysReady.then(() => keys.onMembers(message.members));
    } else if (message.type === "e2ee_key") {
      keysReady.then(() => keys.onKey(message.message));
    } else if (message.type === "offer") {
      chain = chain.then(() => onOffer(message)).catch((e) => fail(`offer: ${e}`));
    } else if (message.type === "layers") {
      chain = chain.then(() => onLayers(message)).catch((e) => fail(`layers: ${e}`));
    } else if (message.type === "error") {
      fail(`relay error ${message.code}: ${message.message}`);
    }
  };
}

// Per remote participant: inbound-rtp figures attributed with the latest offer's
// `streams` mapping (mid -> participant).
window.conclaveStats = async function () {
  const pc = window.conclavePc;
  const result = {};
  if (!pc) return result;
  const streams = window.conclaveStreams();
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type !== "inbound-rtp") return;
    const info = streams[s.mid];
    if (!info) return;
    const entry = (result[info.participant_id] ||= {
      framesDecoded: 0, keyFramesDecoded: 0, audioPacketsReceived: 0,
      videoPacketsReceived: 0, nackCount: 0, framesDropped: 0, frameWidth: 0, frameHeight: 0,
    });
    if (s.kind === "video") {
      entry.frameWidth = s.frameWidth || 0;
      entry.frameHeight = s.frameHeight || 0;
      entry.framesDecoded += s.framesDecoded || 0;
      entry.keyFramesDecoded += s.keyFramesDecoded || 0;
      entry.videoPacketsReceived += s.packetsReceived || 0;
      entry.nackCount += s.nackCount || 0;
      entry.framesDropped += s.framesDropped || 0;
    } else {
      entry.audioPacketsReceived += s.packetsReceived || 0;
    }
  });
  return result;
};

// Everything getStats says about what this page sends (simulcast research).
window.conclaveOutbound = async function () {
  const pc = window.conclavePc;
  if (!pc) return [];
  const out = [];
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type === "outbound-rtp") {
      out.push({
        kind: s.kind, mid: s.mid, ssrc: s.ssrc, rid: s.rid, packetsSent: s.packetsSent,
        framesEncoded: s.framesEncoded, frameWidth: s.frameWidth, frameHeight: s.frameHeight,
        codec: s.codecId && report.get(s.codecId) ? report.get(s.codecId).mimeType : null,
        active: s.active, encoderImplementation: s.encoderImplementation,
        qualityLimitationReason: s.qualityLimitationReason,
      });
    }
  });
  return out;
};

window.conclaveStart = (config) =>
  start(config).catch((e) => fail(`start: ${e}`));

{
  const config = window.conclaveConfig || configFromQuery();
  if (config) window.conclaveStart(config);
}
