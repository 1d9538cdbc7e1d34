// Cameras: administrators add (MJPEG or RTSP URL; the password goes to the API once and
// is never shown again: the API answers with the URL redacted), move and remove them;
// everyone sees a live grid of the cameras they may view, and one camera alone with
// playback of a chosen time range.

import {call, get, isAdministrator, post, remove, patch} from "./api.js";
import {clear, h, problemBlock} from "./dom.js";
import {playLive, playRecorded, words} from "./video.js";

const SNAPSHOT_INTERVAL = 1000;
const LIVE_RETRY = 2000;
let timers = [];
let objectUrls = [];
let sockets = [];  // live video (live.ws) of the cameras shown
let players = [];  // hls.js players of recordings shown

export function leave() {
  for (const timer of timers) clearInterval(timer);  // clears timeouts too
  timers = [];
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls = [];
  for (const socket of sockets) socket.close();
  sockets = [];
  for (const player of players) player.destroy();
  players = [];
}

const cameraPath = (camera) => `/api/v1/cameras/${encodeURIComponent(camera)}`;

// Whether the page may load from the recording server of `grant` (a stream token's
// answer): over TLS, or from a plain page. A plaintext recording server seen from an HTTPS
// page is mixed content, which a browser blocks.
function reachable(grant) {
  return grant.encryption || location.protocol === "http:";
}

function dataUrl(grant, scheme, path) {
  return `${scheme}://${grant.host}:${grant.port}${path}`;
}

// A stream that ends or fails (a camera its recording server does not have yet, a server
// restarting or failing over, an expired token) is asked for again, with a new token, for
// as long as its view is on the page.
function liveAgain(view, img, camera) {
  const timer = setTimeout(() => {
    timers = timers.filter((t) => t !== timer);
    if (view.isConnected) showLive(view, img, camera).catch((error) => { img.alt = `${camera}: ${error.message}`; });
  }, LIVE_RETRY);
  timers.push(timer);
}

// Live video straight from the recording server, with a stream token, in `view` (which
// holds `img`): over its WebSocket, H.264/H.265 through Media Source Extensions
// (video.js), a Motion JPEG camera as its MJPEG stream in `img`. Where the page may not
// load from it, the latest picture through the management server, once a second.
async function showLive(view, img, camera) {
  const grant = await post(`${cameraPath(camera)}/stream-token`);
  if (!view.isConnected) return grant;  // the view changed meanwhile
  if (reachable(grant)) {
    const scheme = grant.encryption ? "wss" : "ws";
    const url = dataUrl(grant, scheme, `${cameraPath(camera)}/live.ws?token=${encodeURIComponent(grant.token)}`);
    sockets = sockets.filter((socket) => socket.readyState !== WebSocket.CLOSED);
    sockets.push(playLive(view, url, camera, {
      onMotionJpeg: () => {
        const http = grant.encryption ? "https" : "http";
        img.onerror = () => {
          img.onerror = null;
          liveAgain(view, img, camera);
        };
        img.src = dataUrl(grant, http, `${cameraPath(camera)}/live.mjpeg?token=${encodeURIComponent(grant.token)}`);
        img.dataset.source = "live";
        view.replaceChildren(img);
      },
      onEnd: () => liveAgain(view, img, camera),
    }));
    return grant;
  }
  img.dataset.source = "snapshot";
  const refresh = async () => {
    try {
      const picture = await call("GET", `${cameraPath(camera)}/snapshot.jpg`);
      const url = URL.createObjectURL(picture);
      objectUrls.push(url);
      const old = img.src;
      img.src = url;
      if (old.startsWith("blob:")) {
        URL.revokeObjectURL(old);
        objectUrls = objectUrls.filter((u) => u !== old);
      }
    } catch (error) {
      if (error.status === 415) {  // H.264/H.265: no pictures to fetch one by one
        clearInterval(timer);
        view.replaceChildren(words(`${camera} sends H.264/H.265 video, which this encrypted page can ` +
          `play only from an encrypted recording server: turn on the encryption of ${grant.recording_server}.`));
        return;
      }
      img.alt = `no picture from ${camera}: ${error.message}`;
    }
  };
  const timer = setInterval(refresh, SNAPSHOT_INTERVAL);
  timers.push(timer);
  await refresh();
  return grant;
}

function addForm(servers, context) {
  const result = h("div", {id: "camera-add-result"});
  const field = (id, label, input) => h("p", {}, h("label", {for: id}, label), input);
  const form = h("form", {id: "camera-add", "aria-labelledby": "camera-add-title"},
    h("h3", {id: "camera-add-title"}, "Add a camera"),
    field("camera-name", "Name", h("input", {id: "camera-name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]*"})),
    field("camera-kind", "Kind", h("select", {id: "camera-kind"},
      h("option", {value: "rtsp"}, "RTSP (rtsp:// or rtsps://)"),
      h("option", {value: "mjpeg"}, "MJPEG over HTTP(S)"))),
    field("camera-url", "URL (without user and password)", h("input", {id: "camera-url", type: "url", required: true, placeholder: "rtsp://camera.example:554/stream"})),
    field("camera-user", "Camera user (optional)", h("input", {id: "camera-user", autocomplete: "off"})),
    field("camera-password", "Camera password (optional; never shown again)", h("input", {id: "camera-password", type: "password", autocomplete: "new-password"})),
    field("camera-server", "Recording server", h("select", {id: "camera-server"},
      servers.map((s) => h("option", {value: s.name}, s.name)))),
    h("p", {}, h("button", {type: "submit"}, "Add camera")),
    result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = (id) => form.querySelector(`#${id}`).value;
    const password = value("camera-password");
    form.querySelector("#camera-password").value = "";
    let url;
    try {
      url = new URL(value("camera-url"));
    } catch {
      result.replaceChildren(h("p", {class: "problem", role: "alert"}, "The URL is not a URL."));
      return;
    }
    if (value("camera-user")) url.username = encodeURIComponent(value("camera-user"));
    if (password) url.password = encodeURIComponent(password);
    try {
      await post("/api/v1/cameras", {
        name: value("camera-name"),
        recording_server: value("camera-server"),
        source: {kind: value("camera-kind"), url: url.href},
      });
    } catch (error) {
      result.replaceChildren(problemBlock(error));
      return;
    }
    await context.show("cameras");
  });
  return form;
}

function cameraControls(camera, servers, context) {
  const select = h("select", {id: `move-${camera.name}`, "aria-label": `Recording server of ${camera.name}`},
    servers.map((s) => h("option", {value: s.name, selected: s.name === camera.assigned_server}, s.name)));
  const result = h("span", {});
  return h("p", {class: "controls"},
    select, " ",
    h("button", {type: "button", onclick: async () => {
      try {
        await patch(`/api/v1/cameras/${encodeURIComponent(camera.name)}`, {recording_server: select.value});
      } catch (error) {
        result.replaceChildren(problemBlock(error));
        return;
      }
      await context.show("cameras");
    }}, `Assign ${camera.name}`), " ",
    h("button", {type: "button", class: "danger", "data-remove": camera.name, onclick: async () => {
      if (!window.confirm(`Remove camera ${camera.name}? Its recordings stay on its recording server.`)) return;
      try {
        await remove(`/api/v1/cameras/${encodeURIComponent(camera.name)}`);
      } catch (error) {
        result.replaceChildren(problemBlock(error));
        return;
      }
      await context.show("cameras");
    }}, `Remove ${camera.name}`),
    result);
}

// Whether the stream at url ends before its first byte (a playback of a range with nothing
// recorded); false when that cannot be told (the picture itself then shows what comes).
async function endsAtOnce(url) {
  const controller = new AbortController();
  try {
    const response = await fetch(url, {signal: controller.signal, cache: "no-store"});
    if (response.status === 404) {
      // The recording server's answer for a range it recorded nothing of.
      const problem = await response.json().catch(() => ({}));
      return problem.title === "no recording";
    }
    if (!response.ok || response.body === null) return false;
    const {done} = await response.body.getReader().read();
    return done;
  } catch {
    return false;
  } finally {
    controller.abort();
  }
}

function single(container, camera, context) {
  leave();
  clear(container);
  const img = h("img", {alt: `live view of ${camera.name}`, "data-camera": camera.name, class: "single"});
  const live = h("div", {class: "live single", id: "live"}, img);
  const now = new Date();
  const local = (d) => new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
  const from = h("input", {id: "playback-from", type: "datetime-local", step: 1, value: local(new Date(now - 60000))});
  const to = h("input", {id: "playback-to", type: "datetime-local", step: 1, value: local(now)});
  const playback = h("img", {alt: `playback of ${camera.name}`, id: "playback", hidden: true});
  const recorded = h("div", {id: "playback-video", class: "live single"});
  const result = h("div", {});
  // Until the user picks a range, Play plays the minute before it is pressed.
  let picked = false;
  for (const input of [from, to]) input.addEventListener("input", () => { picked = true; });
  const form = h("form", {id: "playback-form", "aria-labelledby": "playback-title"},
    h("h3", {id: "playback-title"}, "Playback"),
    h("p", {}, h("label", {for: "playback-from"}, "From (local time)"), from),
    h("p", {}, h("label", {for: "playback-to"}, "To (local time)"), to),
    h("p", {}, h("button", {type: "submit"}, "Play")),
    result, playback, recorded);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    result.replaceChildren();
    for (const player of players) player.destroy();
    players = [];
    recorded.replaceChildren();
    playback.hidden = true;
    if (!picked) {
      const now = new Date();
      from.value = local(new Date(now - 60000));
      to.value = local(new Date(now.getTime() + 1000));  // the second under way included
    }
    const start = new Date(from.value), end = new Date(to.value);
    try {
      const grant = await post(`${cameraPath(camera.name)}/stream-token`);
      const scheme = grant.encryption ? "https" : "http";
      if (["H264", "H265"].includes(live.dataset.codec)) {
        // Recorded H.264/H.265 over HLS, the stream token in each request's header.
        if (!reachable(grant)) {
          recorded.replaceChildren(words(`Recordings of ${camera.name} play here only from an encrypted ` +
            `recording server: turn on the encryption of ${grant.recording_server}.`));
          return;
        }
        const range = `from=${encodeURIComponent(start.toISOString())}&to=${encodeURIComponent(end.toISOString())}`;
        const player = await playRecorded(recorded, dataUrl(grant, scheme, `${cameraPath(camera.name)}/playback.m3u8?${range}`), camera.name, grant.token);
        if (player !== null) players.push(player);
        return;
      }
      const url = dataUrl(grant, scheme, `${cameraPath(camera.name)}/playback.mjpeg?from=${start / 1000}&to=${end / 1000}&token=${encodeURIComponent(grant.token)}`);
      if (await endsAtOnce(url)) {
        // (an image whose stream ends before its first picture shows nothing, and says nothing)
        result.replaceChildren(words(`Nothing of ${camera.name} was recorded from ` +
          `${from.value.replace("T", " ")} to ${to.value.replace("T", " ")} (local time).`));
        return;
      }
      playback.src = url;
      playback.hidden = false;
    } catch (error) {
      result.replaceChildren(problemBlock(error));
    }
  });
  const heading = h("h2", {tabindex: "-1", id: "view-title"}, `Camera ${camera.name}`);
  container.append(...[heading,
    h("p", {}, h("button", {type: "button", id: "back", onclick: () => context.show("cameras")}, "Back to all cameras")),
    h("figure", {}, live, h("figcaption", {}, `${camera.name} (${camera.recording_server})`)),
    camera.problem ? h("p", {class: "problem", role: "alert"}, `${camera.name} sends no pictures: ${camera.problem}`) : null,
    form,
  ].filter((part) => part !== null));
  heading.focus();
  showLive(live, img, camera.name).catch((error) => container.append(problemBlock(error)));
}

export async function render(container, context) {
  const status = await get("/api/v1/site/status");
  const admin = isAdministrator();
  const recorders = status.servers.filter((s) => s.role === "recording");
  const grid = h("ul", {class: "grid", id: "camera-grid"});
  for (const camera of status.cameras) {
    const img = h("img", {alt: `live view of ${camera.name}`, "data-camera": camera.name});
    const live = h("div", {class: "live"}, img);
    grid.append(h("li", {"data-camera": camera.name},
      h("figure", {}, live,
        h("figcaption", {},
          h("a", {href: `#cameras/${camera.name}`, onclick: (event) => { event.preventDefault(); single(container, camera, context); }},
            camera.name),
          ` (${camera.recording_server})`,
          admin && camera.source ? h("span", {class: "source"}, ` ${camera.source.url || camera.source.kind}`) : null)),
      camera.problem ? h("p", {class: "problem", role: "alert"}, `Sends no pictures: ${camera.problem}`) : null,
      admin ? cameraControls(camera, recorders, context) : null));
    showLive(live, img, camera.name).catch((error) => { img.alt = `${camera.name}: ${error.message}`; });
  }
  container.append(status.cameras.length ? grid : h("p", {}, "No camera you may view."));
  if (admin) container.append(addForm(recorders, context));
}
