// Video of H.264/H.265 cameras in a browser, shared by the mobile server's web client and
// the management client: live through Media Source Extensions, fed by a recording
// server's live.ws (a text message announces each stream and its codec, then its init
// segment, then one fMP4 fragment per picture), and recordings over HLS with hls.js
// (vendored: /vendor/hls.light.min.js, loaded when first needed).

export const CODEC_NAMES = {H264: "H.264", H265: "H.265"};
const HLS_SCRIPT = "/vendor/hls.light.min.js";
const KEEP_SECONDS = 30;  // how much played video the page keeps
const LIVE_EDGE_SECONDS = 3;  // further behind the newest picture than this, jump ahead

export function words(text) {
  const p = document.createElement("p");
  p.className = "words";
  p.textContent = text;
  return p;
}

function join(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) { out.set(part, at); at += part.length; }
  return out;
}

// Plays the live stream of `camera` from the WebSocket at `url` in a <video> that takes
// the place of what `view` holds. A Motion JPEG camera (its messages begin "WK") is not
// for Media Source Extensions: the socket is closed and `onMotionJpeg()` shows it the
// caller's way. A codec this browser cannot play is said in words. The codec goes to
// `view.dataset.codec` ("H264", "H265", or "JPEG"). `onEnd()`, if given, is called when
// the stream ends otherwise (refused, cut, closed by the caller). Returns the socket.
export function playLive(view, url, camera, {onMotionJpeg, onEnd = () => {}}) {
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  let handedOver = false;  // closed here: the camera is for the caller, or not for this browser
  socket.addEventListener("close", () => { if (!handedOver) onEnd(); });
  let video = null, buffer = null, queue = [];

  function pump() {
    if (buffer === null || buffer.updating || queue.length === 0) return;
    const ranges = video.buffered;
    if (ranges.length > 0 && video.currentTime - ranges.start(0) > KEEP_SECONDS) {
      buffer.remove(ranges.start(0), video.currentTime - 10);  // keep the page's memory small
      return;
    }
    buffer.appendBuffer(queue.length === 1 ? queue[0] : join(queue));
    queue = [];
  }

  function followLiveEdge() {
    const ranges = video.buffered;
    if (ranges.length === 0) return;
    const start = ranges.start(ranges.length - 1), end = ranges.end(ranges.length - 1);
    // A new viewer, or one that skipped to a keyframe: go to the newest pictures.
    if (video.currentTime < start || end - video.currentTime > LIVE_EDGE_SECONDS) {
      video.currentTime = Math.max(start, end - 0.3);
    }
    if (video.paused) video.play().catch(() => {});
  }

  socket.addEventListener("message", (event) => {
    if (typeof event.data === "string") {
      const stream = JSON.parse(event.data);
      if (stream.type !== "stream") return;
      view.dataset.codec = stream.codec;
      if (!("MediaSource" in window) || !MediaSource.isTypeSupported(stream.mime)) {
        handedOver = true;
        socket.close();
        view.replaceChildren(words(`This browser cannot play ${CODEC_NAMES[stream.codec] || stream.codec} ` +
          `video (${stream.mime}), which this camera sends. Watch it in a browser that can, or export ` +
          "its recordings with watchkeep export."));
        return;
      }
      video = document.createElement("video");
      video.muted = true;
      video.autoplay = true;
      video.playsInline = true;
      video.dataset.camera = camera;
      video.dataset.codec = stream.codec;
      video.dataset.mime = stream.mime;
      video.setAttribute("aria-label", `live view of ${camera}`);
      const source = new MediaSource();
      buffer = null;
      queue = [];
      source.addEventListener("sourceopen", () => {
        URL.revokeObjectURL(video.src);
        buffer = source.addSourceBuffer(stream.mime);
        buffer.addEventListener("updateend", () => { followLiveEdge(); pump(); });
        pump();
      }, {once: true});
      video.src = URL.createObjectURL(source);
      view.replaceChildren(video);
      return;
    }
    const data = new Uint8Array(event.data);
    if (data[0] === 0x57 && data[1] === 0x4b) {  // "WK": a Motion JPEG camera
      handedOver = true;
      socket.close();
      view.dataset.codec = "JPEG";
      onMotionJpeg();
      return;
    }
    if (video === null) return;
    queue.push(data);
    pump();
  });
  return socket;
}

let hlsLoaded = null;

// hls.js, loaded once, the first time a recording is played.
function loadHls() {
  if (hlsLoaded === null) {
    hlsLoaded = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = HLS_SCRIPT;
      script.addEventListener("load", () => resolve(window.Hls));
      script.addEventListener("error", () => { hlsLoaded = null; reject(new Error(`${HLS_SCRIPT} did not load`)); });
      document.head.append(script);
    });
  }
  return hlsLoaded;
}

// Plays the HLS playlist at `url` (a recording of `camera`) in a <video> with controls
// that takes the place of what `view` holds, every request carrying `token` as
// "Authorization: Bearer". Returns the hls.js player (null where none can play).
export async function playRecorded(view, url, camera, token) {
  let Hls;
  try {
    Hls = await loadHls();
  } catch (error) {
    view.replaceChildren(words(`Recordings cannot be played here: ${error.message}.`));
    return null;
  }
  if (!Hls.isSupported()) {
    view.replaceChildren(words("This browser cannot play recordings here (no Media Source Extensions)."));
    return null;
  }
  const video = document.createElement("video");
  video.muted = true;
  video.controls = true;
  video.playsInline = true;
  video.dataset.playback = camera;
  video.setAttribute("aria-label", `recording of ${camera}`);
  // No worker: it would be made from a blob: URL, which the pages' policies do not allow.
  const player = new Hls({enableWorker: false, xhrSetup: (xhr) => xhr.setRequestHeader("Authorization", `Bearer ${token}`)});
  player.on(Hls.Events.ERROR, (_event, data) => {
    if (!data.fatal) return;
    const status = data.response && data.response.code;
    player.destroy();
    view.replaceChildren(words(status === 404 ? `No H.264/H.265 recording of ${camera} at that time.` :
      `The recording cannot be played: ${data.details || data.type}.`));
  });
  player.loadSource(url);
  player.attachMedia(video);
  player.on(Hls.Events.MANIFEST_PARSED, () => video.play().catch(() => {}));
  view.replaceChildren(video);
  return player;
}
