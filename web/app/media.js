// The participant's own camera, microphone and screen. The tracks live as long as
// the page is in the meeting: a reconnect attaches the same tracks to a new peer
// connection instead of asking the browser (and the person) for them again.

const CAMERA = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };

export class LocalMedia {
  constructor() {
    this.tracks = {}; // source ("microphone", "camera", "screen") -> MediaStreamTrack
    this.problem = ""; // why a device is missing, for the pre-join view
  }

  /** Ask for camera and microphone; take whichever the browser gives. */
  async start() {
    try {
      this.adopt(await navigator.mediaDevices.getUserMedia({ audio: true, video: CAMERA }));
      return;
    } catch (e) {
      this.problem = describe(e);
    }
    // One of them may still work on its own (no camera, or a camera in use).
    for (const constraints of [{ audio: true }, { video: CAMERA }]) {
      try {
        this.adopt(await navigator.mediaDevices.getUserMedia(constraints));
      } catch {
        // reported above
      }
    }
  }

  adopt(stream) {
    for (const track of stream.getTracks()) {
      this.tracks[track.kind === "audio" ? "microphone" : "camera"] = track;
    }
  }

  /** Sources a join publishes: the devices we have (the screen comes later). */
  get devices() {
    return ["microphone", "camera"].filter((s) => this.tracks[s]);
  }

  track(source) {
    return this.tracks[source] || null;
  }

  enabled(source) {
    const track = this.tracks[source];
    return Boolean(track && track.enabled);
  }

  /** A disabled track sends silence (audio) or black frames (video). */
  setEnabled(source, on) {
    const track = this.tracks[source];
    if (track) track.enabled = on;
  }

  async startScreen() {
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
    const track = stream.getVideoTracks()[0];
    track.contentHint = "detail"; // text stays sharp; frame rate may drop instead
    this.tracks.screen = track;
    return track;
  }

  stopScreen() {
    if (this.tracks.screen) this.tracks.screen.stop();
    delete this.tracks.screen;
  }

  stop() {
    for (const track of Object.values(this.tracks)) track.stop();
    this.tracks = {};
  }
}

function describe(error) {
  if (error && error.name === "NotAllowedError") return "Camera and microphone access was refused.";
  if (error && error.name === "NotFoundError") return "No camera or microphone was found.";
  return "Camera or microphone unavailable.";
}

/**
 * Drive a <meter> from a microphone track (pre-join check that the mic works).
 * Returns a function that stops it.
 */
export function micLevel(track, meter) {
  if (!track || !window.AudioContext) return () => {};
  const audio = new AudioContext();
  const analyser = audio.createAnalyser();
  analyser.fftSize = 512;
  audio.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  let frame = 0;
  const draw = () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    // RMS on a rough log scale, so speech moves the bar visibly
    const rms = Math.sqrt(sum / samples.length);
    meter.value = track.enabled ? Math.min(1, Math.max(0, 1 + Math.log10(rms + 1e-4) / 3)) : 0;
    frame = requestAnimationFrame(draw);
  };
  draw();
  return () => {
    cancelAnimationFrame(frame);
    audio.close();
  };
}
