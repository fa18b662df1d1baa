// A minimal browser participant for Conclave (docs/signaling.md): joins with a
// grant, answers the relay's offers, publishes fake camera/microphone on the
// m-lines the offer names, trickles ICE, and exposes figures for the tests.
"use strict";

window.conclaveErrors = [];
window.conclaveLog = [];
window.conclaveState = { joined: false, offers: 0, answers: 0 };
window.conclaveSdp = { offers: [], answers: [] };

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
    publish: (q.get("publish") || "").split(",").filter((k) => k),
    simulcast: q.get("simulcast") || "",  // "", "pre" or "offer"
  };
}

// Simulcast research (docs/simulcast.md): make the publish video m-line of the
// relay's offer ask for three rid layers, as an SFU offering to receive simulcast
// would. The relay itself does not do this.
function mungeSimulcast(sdp, videoMid) {
  const used = new Set();
  for (const m of sdp.matchAll(/a=extmap:(\d+)/g)) used.add(Number(m[1]));
  const free = [];
  for (let id = 1; id <= 14 && free.length < 2; id++) if (!used.has(id)) free.push(id);
  const extra = [
    `a=extmap:${free[0]} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id`,
    `a=extmap:${free[1]} urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id`,
    "a=rid:h recv", "a=rid:m recv", "a=rid:l recv", "a=simulcast:recv h;m;l",
  ];
  const lines = sdp.split("\r\n").filter((l) => l);
  const out = [];
  let target = false;
  for (const line of lines) {
    if (line.startsWith("m=")) {
      if (target) out.push(...extra);
      target = false;
    }
    if (line === `a=mid:${videoMid}`) target = true;
    out.push(line);
  }
  if (target) out.push(...extra);
  return out.join("\r\n") + "\r\n";
}

async function start(config) {
  log(`start publish=${config.publish} simulcast=${config.simulcast || "no"}`);
  const publish = config.publish || [];
  let stream = null;
  if (publish.length) {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: publish.includes("audio"),
      video: publish.includes("video")
        ? config.simulcast
          ? { width: 1280, height: 720, frameRate: 30 }
          : { width: 640, height: 360, frameRate: 30 }
        : false,
    });
  }
  const tracks = {};
  if (stream) for (const t of stream.getTracks()) tracks[t.kind] = t;

  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", iceServers: [] });
  window.conclavePc = pc;
  let simulcastTransceiver = null;
  if (config.simulcast === "pre" && tracks.video) {
    // Created before the offer arrives; setRemoteDescription may pair it with
    // the relay's publish video m-line (or create a new one: see the research).
    simulcastTransceiver = pc.addTransceiver(tracks.video, {
      direction: "sendonly",
      sendEncodings: [
        { rid: "h" },
        { rid: "m", scaleResolutionDownBy: 2 },
        { rid: "l", scaleResolutionDownBy: 4 },
      ],
    });
    window.conclaveSimulcastTransceiver = simulcastTransceiver;
  }
  let streams = {}; // mid -> {participant_id, track_id, kind}
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
    let sdp = message.sdp;
    if (config.simulcast && message.publish.video !== undefined) {
      sdp = mungeSimulcast(sdp, message.publish.video);
    }
    window.conclaveSdp.offers.push(sdp);
    streams = {};
    for (const s of message.streams) streams[s.mid] = s;
    await pc.setRemoteDescription({ type: "offer", sdp });
    for (const [kind, mid] of Object.entries(message.publish)) {
      const transceiver = pc.getTransceivers().find((t) => t.mid === mid);
      if (!transceiver) {
        fail(`no transceiver for publish ${kind} mid ${mid}`);
        continue;
      }
      if (!tracks[kind]) {
        fail(`offer asks for ${kind} which this page does not publish`);
        continue;
      }
      if (transceiver.sender.track !== tracks[kind]) {
        await transceiver.sender.replaceTrack(tracks[kind]);
      }
      transceiver.direction = "sendonly";
      if (kind === "video" && config.simulcast === "offer") {
        // The encodings came from the offer's rid list; give them the usual
        // resolution ladder (h full, m half, l quarter).
        const scale = { h: 1, m: 2, l: 4 };
        const parameters = transceiver.sender.getParameters();
        for (const encoding of parameters.encodings) {
          if (encoding.rid in scale) encoding.scaleResolutionDownBy = scale[encoding.rid];
        }
        await transceiver.sender.setParameters(parameters);
      }
    }
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    window.conclaveSdp.answers.push(pc.localDescription.sdp);
    send({ type: "answer", sdp: pc.localDescription.sdp });
    window.conclaveState.answers += 1;
    log(`answered offer ${window.conclaveState.offers}`);
  }

  ws.onopen = () => send({ type: "join", grant: config.grant, publish });
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
    if (message.type === "joined") {
      window.conclaveState.joined = true;
      window.conclaveState.participant_id = message.participant_id;
    } else if (message.type === "offer") {
      chain = chain.then(() => onOffer(message)).catch((e) => fail(`offer: ${e}`));
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
      videoPacketsReceived: 0, nackCount: 0, framesDropped: 0,
    });
    if (s.kind === "video") {
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
  (await pc.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp") {
      out.push({
        kind: s.kind, mid: s.mid, ssrc: s.ssrc, rid: s.rid, packetsSent: s.packetsSent,
        framesEncoded: s.framesEncoded, frameWidth: s.frameWidth, frameHeight: s.frameHeight,
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
