// The meeting page, /m/<code>: sign in or join as a guest, get ready (name, camera, microphone),
// then the meeting:
// one RTCPeerConnection to the SFU (docs/protocol.md, spoken by signaling.js), one tile per
// participant, screen shares shown large (screens.js), the participant list with the moderators'
// controls (people.js) and the chat (chat.js). For tests and diagnostics, window.confmeet.pc is
// the page's RTCPeerConnection (read getStats() from it) and window.confmeet.signaling its
// signaling session (to send protocol messages such as video_layer), window.confmeet.e2ee the
// frame counters of an end-to-end encrypted meeting, window.confmeet.whiteboard the shared
// whiteboard's pages, items and state vector as this page holds them; nothing else is exposed.
import { actAsGuest, ApiError, call, forgetGuest, guestToken, joinAsGuest, saveTokens, signIn, tokens }
  from "/static/api.js";
import { Chat } from "/static/chat.js";
import { $, el, initials, PopupMenu } from "/static/dom.js";
import { clockTime, errorText, languagePicker, ordinal, t, tn, translatePage } from "/static/i18n.js";
import { handOrder, isModerator, People } from "/static/people.js";
import { Captions } from "/static/captions.js";
import { NoiseControls, NoiseSuppression } from "/static/noise.js";
import { Polls } from "/static/polls.js";
import { Breakouts } from "/static/breakouts.js";
import { Recording } from "/static/recording.js";
import { E2ee, e2eePeerConfig, e2eeSupported } from "/static/e2ee.js";
import { Screens } from "/static/screens.js";
import { Shortcuts } from "/static/shortcuts.js";
import { ConnectionError, Signaling } from "/static/signaling.js";
import { Overflow } from "/static/overflow.js";
import { TilePages } from "/static/pages.js";
import { Views } from "/static/views.js";
import { Whiteboard } from "/static/whiteboard.js";

const code = decodeURIComponent(location.pathname.replace(/^\/m\//, "").replace(/\/+$/, ""));
// The camera is sent as up to three encodings (simulcast), lowest first: the SFU gives each
// subscriber the one its link and its view suit. Chromium sends three only from 960x540 up (it
// drops the last ones listed below that; a smaller camera sends one stream), and stops the upper
// ones while its bandwidth estimate cannot carry them.
const VIDEO = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 24 } };
const CAMERA_LAYERS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

/** The camera's encodings for a picture ``height`` high (a camera that is off: as if 720): three
 * layers from 540 lines up (Chromium sends all three only from 960x540), the top one the whole
 * picture, each layer's bitrate by its own height (180: 150 kbit/s, 360: 500, above: 1500); a
 * smaller camera sends one stream, no simulcast (its two layers would cost the sender a second
 * encoder for a lower layer of at most 240 lines). */
function cameraEncodings(height = 720) {
  const count = height >= 540 ? 3 : 1;
  if (count === 1) return [{ maxBitrate: height <= 200 ? 150_000 : 500_000 }];
  return CAMERA_LAYERS.slice(3 - count).map((layer, i) => {
    const scale = 2 ** (count - 1 - i);
    const layerHeight = height / scale;
    return { ...layer, scaleResolutionDownBy: scale,
             maxBitrate: layerHeight <= 200 ? 150_000 : layerHeight <= 400 ? 500_000 : 1_500_000 };
  });
}
const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const SOURCE = { audio: "microphone", video: "camera" };
// A shared screen is mostly text and still pictures: sharpness before motion.
const SCREEN = { video: { frameRate: { ideal: 15, max: 30 } }, audio: false };
const REACTIONS = [["👍", "thumbs_up"], ["👏", "clap"], ["😂", "laugh"], ["❤️", "heart"], ["🎉", "celebrate"],
                   ["😮", "surprised"]];  // appliance/controls.py REACTIONS; names: reaction.* messages
const REACTION_MS = 3000;
const NOTICE_MS = 5000;

let session = null;       // the meeting we are in, once joined
let devicesReady = null;  // settles once the camera and microphone were asked for
let signaling = null;     // opened on the pre-join screen, so that joining takes one round trip
let certificate = null;   // the DTLS certificate, also made ahead of joining
let meetingInfo = null;   // the meeting as the REST API describes it (locked, ...), from the pre-join screen
let joiningAs = "account";  // or "guest": someone without an account, with a name only

window.confmeet = Object.freeze({
  get pc() { return session?.pc ?? null; },
  get signaling() { return session?.signaling ?? null; },
  get e2ee() { return session?.e2ee ? { ...session.e2ee.counters } : null; },  // frames through e2ee-worker.js
  get whiteboard() { return session?.whiteboard.summary() ?? null; },
});

function show(view) {
  for (const id of ["signin", "prejoin", "message"]) $(`#${id}`).hidden = id !== view;
  $("#stage").hidden = view !== "stage";
  $("#page").hidden = view === "stage";
  $("#topbar").hidden = view === "stage";
}

/** A full-page message (`title` and `text` already in the page's language). */
function showMessage(title, text, { rejoin = false } = {}) {
  $("#message-title").textContent = title;
  $("#message-text").textContent = text;
  $("#rejoin").hidden = !rejoin;
  show("message");
}

// A device toggle: `on` is whether the device is in use; `pressedWhenOn` says what aria-pressed
// means for this button ("Microphone" is pressed when on, "Mute" when off).
// `label`, `onTitle` and `offTitle` are message keys.
function setToggle(button, on, { pressedWhenOn, label, onTitle, offTitle }) {
  button.setAttribute("aria-pressed", String(on === pressedWhenOn));
  button.setAttribute("aria-label", t(label));
  button.dataset.state = on ? "on" : "off";
  button.title = t(on ? onTitle : offTitle);
}

// Point a <video> at a stream; reload it only when the stream or its set of tracks changed (a
// local stream's tracks are swapped by script, which a playing element does not always follow).
function play(video, stream) {
  const tracks = stream.getTracks().map((t) => t.id).join();
  if (video.srcObject === stream && video.dataset.tracks === tracks) return;
  video.srcObject = stream;
  video.dataset.tracks = tracks;
  video.play().catch(() => {});
}

// A valid token for a WebSocket: a guest's own, or an account's access token, refreshed first when
// about to expire (any REST call does that).
async function accessToken() {
  const guest = guestToken();
  if (guest) {
    if (secondsLeft(guest) < 60) throw new ConnectionError("unauthorized", t("error.guest_expired"));
    return guest;
  }
  if (secondsLeft(tokens()?.access_token) < 60) await call("GET", "/api/v1/users/me").catch(() => {});
  const token = tokens()?.access_token;
  if (!token) throw new ConnectionError("unauthorized", t("error.unauthorized"));
  return token;
}

function claims(jwt) {
  try {
    const json = atob(jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(json, (c) => c.charCodeAt(0))));
  } catch {
    return {};
  }
}

function secondsLeft(jwt) {
  return (claims(jwt).exp ?? 0) - Date.now() / 1000;
}

// ----------------------------------------------------------------------------- local media
/** The camera and microphone: one track of each at most, switched on and off, swapped by device. */
class LocalMedia {
  constructor() {
    this.stream = new MediaStream();
    this.microphoneOn = true;
    this.cameraOn = true;
    this.hasMicrophone = false;
    this.hasCamera = false;
    this.microphoneId = "";  // the chosen devices; "" is the browser's default
    this.cameraId = "";
    this.onTrack = () => {};  // (kind, track or null): the track to send changed
  }

  get audio() { return this.stream.getAudioTracks()[0] ?? null; }
  get video() { return this.stream.getVideoTracks()[0] ?? null; }

  /** Ask for both devices; fall back to each alone so a missing one does not block the other. */
  async open() {
    if (!navigator.mediaDevices) return { key: "devices.need_https" };
    const problems = [];
    for (const kinds of [["audio", "video"], ["audio"], ["video"]]) {
      try {
        const got = await navigator.mediaDevices.getUserMedia(this.#constraints(kinds));
        for (const track of got.getTracks()) this.#put(track);
        break;
      } catch (error) {
        problems.push(error);
      }
    }
    this.hasMicrophone = Boolean(this.audio);
    this.hasCamera = Boolean(this.video);
    if (!this.hasMicrophone || !this.hasCamera) {
      const missing = !this.hasCamera && !this.hasMicrophone ? "both" : this.hasCamera ? "microphone" : "camera";
      const denied = problems.some((e) => e.name === "NotAllowedError");
      return { key: `devices.${denied ? "not_allowed" : "missing"}.${missing}` };
    }
    return null;
  }

  /** Use another device of one kind (deviceId from enumerateDevices). */
  async choose(kind, deviceId) {
    this[kind === "audio" ? "microphoneId" : "cameraId"] = deviceId;
    if (kind === "video" && !this.cameraOn) return;
    const got = await navigator.mediaDevices.getUserMedia(this.#constraints([kind]));
    this.#put(got.getTracks()[0]);
  }

  setMicrophone(on) {
    this.microphoneOn = on;
    if (this.audio) this.audio.enabled = on;  // a disabled track sends silence: nothing to renegotiate
  }

  /** Off stops the camera (its light goes out); on opens it again. */
  async setCamera(on) {
    this.cameraOn = on;
    if (!on) {
      const track = this.video;
      if (track) { this.stream.removeTrack(track); track.stop(); }
      this.onTrack("video", null);
      return;
    }
    if (!this.video && this.hasCamera) {
      const got = await navigator.mediaDevices.getUserMedia(this.#constraints(["video"]));
      if (this.cameraOn) this.#put(got.getTracks()[0]);
      else got.getTracks().forEach((t) => t.stop());
    }
  }

  stop() {
    for (const track of this.stream.getTracks()) track.stop();
    noise.close();
  }

  #constraints(kinds) {
    const exact = (id) => (id ? { deviceId: { exact: id } } : {});
    return {
      audio: kinds.includes("audio") ? { ...AUDIO, ...exact(this.microphoneId) } : false,
      video: kinds.includes("video") ? { ...VIDEO, ...exact(this.cameraId) } : false,
    };
  }

  #put(track) {
    const old = track.kind === "audio" ? this.audio : this.video;
    if (old) { this.stream.removeTrack(old); old.stop(); }
    if (track.kind === "audio") track.enabled = this.microphoneOn;
    this.stream.addTrack(track);
    this.onTrack(track.kind, track.kind === "audio" ? noise.use(track) : track);
  }

  /** The microphone's track as it is sent: through noise suppression while that runs. */
  get sent() { return noise.sending(this.audio); }
}

const noise = new NoiseSuppression();
const media = new LocalMedia();
// Noise suppression turned on or off, or started by the first click: the sender gets the other track.
noise.onChange = () => { if (media.audio) media.onTrack("audio", media.sent); if (!$("#prejoin").hidden) meterMicrophone(); };
new NoiseControls(noise);

// ----------------------------------------------------------------------------- sign in
$("#signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  try {
    await signIn(form.email.value, form.password.value);
    $(".error", form).textContent = "";
    await prepare();
  } catch (error) {
    $(".error", form).textContent = error.message;
  }
});

$("#show-signin").addEventListener("click", () => {
  show("signin");
  $("#signin-form").email.focus();
});
$("#guest-instead").addEventListener("click", () => prepareGuest());

// ----------------------------------------------------------------------------- pre-join
async function prepare() {
  if (!tokens() && !actAsGuest(code)) { prepareGuest(); return; }
  joiningAs = guestToken() ? "guest" : "account";
  let meeting, me;
  try {
    [meeting, me] = await Promise.all([
      call("GET", `/api/v1/meetings/by-code/${encodeURIComponent(code)}`),
      joiningAs === "guest" ? { name: claims(guestToken()).name ?? "" } : call("GET", "/api/v1/users/me"),
    ]);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      if (joiningAs === "guest") { forgetGuest(); prepareGuest(); } else show("signin");
      return;
    }
    if (error instanceof ApiError && error.status === 404) {
      showMessage(t("message.not_found"), t("message.not_found_text", { code }));
      return;
    }
    showMessage(t("message.cannot_open"), errorText(error), { rejoin: true });
    return;
  }
  if (meeting.status === "ended") {
    showMessage(t("message.ended"), t("message.ended_text", { title: meeting.title }));
    return;
  }
  meetingInfo = meeting;
  document.title = `${meeting.title} · confmeet`;
  $("#meeting-title").textContent = meeting.title;
  labelPrejoin();
  const form = $("#join-form");
  if (!form.name.value) form.name.value = me.name;
  askPassword(meeting.has_password && meeting.my_role !== "host" ? "required" : "no");
  await getReady();
}

// Someone with neither an account's sign-in nor a guest token for this meeting: a name, and the
// meeting's password if they were given one. Whether the meeting takes guests shows only when they
// join: the server tells strangers nothing about which meetings exist.
async function prepareGuest() {
  joiningAs = "guest";
  meetingInfo = null;
  labelPrejoin();
  askPassword("optional");
  await getReady();
}

/** The meeting password field: "no", "required", or "optional" (for a guest, who is told nothing). */
function askPassword(need) {
  $("#password-field").hidden = need === "no";
  $("#password-hint").hidden = need !== "optional";
  $("#join-form").password.required = need === "required";
}

const joinLabel = () => t(joiningAs === "guest" ? "join.join_as_guest" : "join.join");

// What the script writes on the pre-join screen, in the page's language (again when it changes).
function labelPrejoin() {
  if (!meetingInfo) {
    document.title = `${t("join.page_title")} · confmeet`;
    $("#meeting-title").textContent = t("join.guest_title");
  }
  $("#meeting-code").textContent = t("join.meeting_code", { code: meetingInfo?.code ?? code });
  if (!$("#join").disabled) $("#join").textContent = joinLabel();
  $("#device-notice").textContent = deviceNotice ? t(deviceNotice.key, deviceNotice) : "";
}
let deviceNotice = null;  // what the device notice says: {key, ...params}, or null

/** The pre-join screen: preview, devices, and the signaling connection opened ahead of joining. */
async function getReady() {
  $("#join").textContent = joinLabel();
  $("#account-offer").hidden = joiningAs !== "guest";
  show("prejoin");
  updatePreview();
  if (tokens() || guestToken()) {  // a guest has nothing to connect with before their guest token
    if (signaling?.state !== "idle") signaling = new Signaling(accessToken);
    signaling.connect().catch(() => {});  // joining tries again
  }
  certificate ??= RTCPeerConnection.generateCertificate({ name: "ECDSA", namedCurve: "P-256" }).catch(() => null);
  devicesReady ??= media.open().then(async (notice) => {
    deviceNotice = notice;
    labelPrejoin();
    await listDevices();
  });
  await devicesReady;
  updatePreview();
  meterMicrophone();
}

async function listDevices() {
  const devices = await navigator.mediaDevices?.enumerateDevices().catch(() => []) ?? [];
  const fill = (select, kind, track, none) => {
    const found = devices.filter((d) => d.kind === kind && d.deviceId);
    const current = track?.getSettings().deviceId;
    select.replaceChildren(...found.map((device, i) => {
      const option = new Option(device.label || t(`devices.unnamed_${kind}`, { n: i + 1 }), device.deviceId);
      option.selected = device.deviceId === current;
      return option;
    }));
    if (!found.length) select.append(new Option(t(none), ""));
    select.disabled = !found.length;
  };
  fill($("#camera"), "videoinput", media.video, "devices.no_camera");
  fill($("#microphone"), "audioinput", media.audio, "devices.no_microphone");
}

function updatePreview() {
  const form = $("#join-form");
  play($("#preview"), media.stream);
  const showing = Boolean(media.video) && media.cameraOn;
  $("#preview-off").hidden = showing;
  $("#preview-off-text").textContent = t(!media.hasCamera ? "join.no_camera" : "join.camera_is_off");
  $("#preview-initials").textContent = initials(form.name.value || "?");
  setToggle($("#pre-mic"), media.microphoneOn && media.hasMicrophone,
            { pressedWhenOn: false, label: "controls.mute", onTitle: "controls.mute_title", offTitle: "controls.unmute_title" });
  setToggle($("#pre-cam"), media.cameraOn && media.hasCamera,
            { pressedWhenOn: false, label: "controls.hide_video", onTitle: "controls.camera_off_title", offTitle: "controls.camera_on_title" });
  $("#pre-mic").disabled = !media.hasMicrophone;
  $("#pre-cam").disabled = !media.hasCamera;
}

// A level meter on the preview, so people see their microphone works before joining.
let meter = null;
function meterMicrophone() {
  const track = media.sent;  // what the others will hear
  if (!track || meter?.track === track) return;
  meter?.context.close();
  const context = new AudioContext();
  // Resumed at the first click, unless it was closed meanwhile (a new meter, or the page joined):
  // resuming a closed context rejects, an error on the page.
  if (context.state === "suspended") {
    document.addEventListener("click", () => { if (context.state === "suspended") context.resume().catch(() => {}); },
                              { once: true });
  }
  const analyser = context.createAnalyser();
  analyser.fftSize = 512;
  context.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  meter = { track, context };
  const draw = () => {
    if (meter?.context !== context) return;
    analyser.getFloatTimeDomainData(samples);
    const rms = Math.sqrt(samples.reduce((sum, x) => sum + x * x, 0) / samples.length);
    const db = 20 * Math.log10(rms || 1e-6);
    const level = track.enabled ? Math.min(1, Math.max(0, (db + 60) / 50)) : 0;  // -60..-10 dBFS
    $("#pre-level").style.transform = `scaleX(${level.toFixed(3)})`;
    if (!$("#prejoin").hidden) requestAnimationFrame(draw);
    else { context.close(); meter = null; }
  };
  requestAnimationFrame(draw);
}

$("#pre-mic").addEventListener("click", () => { media.setMicrophone(!media.microphoneOn); updatePreview(); });
$("#pre-cam").addEventListener("click", async () => {
  await media.setCamera(!media.cameraOn).catch((e) => { $("#device-notice").textContent = t("devices.cannot_use", { reason: e.message }); });
  updatePreview();
});
$("#join-form").name.addEventListener("input", updatePreview);
for (const [select, kind] of [[$("#camera"), "video"], [$("#microphone"), "audio"]]) {
  select.addEventListener("change", async () => {
    try {
      await media.choose(kind, select.value);
      $("#device-notice").textContent = "";
    } catch (error) {
      $("#device-notice").textContent = t("devices.cannot_use", { reason: error.message });
    }
    updatePreview();
    meterMicrophone();
  });
}

$("#join-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const button = $("#join");
  button.disabled = true;
  button.textContent = t("join.joining");
  $(".error", form).textContent = "";
  const waiting = () => {
    button.textContent = t("join.waiting");
    $("#join-status").textContent = t("join.waiting_text");
  };
  const name = form.name.value.trim();
  const password = form.password.value;
  try {
    await devicesReady;  // join with the camera and microphone, not before they are open
    if (joiningAs === "guest" && !guestToken()) {
      const meeting = await joinAsGuest(code, name, password);
      document.title = `${meeting.title} · confmeet`;
      $("#meeting-title").textContent = meeting.title;
    }
    await Session.join({ name, password, waiting });
  } catch (error) {
    let text = errorText(error);
    if (joiningAs === "guest" && error.code === "not_found") {
      // The server answers a stranger the same way whatever was wrong, so as not to tell which meetings exist.
      text = t("error.not_for_guests");
    } else if (joiningAs === "guest" && error.code === "unauthorized") {  // the guest pass ran out
      forgetGuest();
      askPassword("optional");
      text = t("error.guest_expired");
    } else if (error.code === "unauthorized") {  // the sign-in was revoked or has run out: sign in again
      saveTokens(null);
      show("signin");
    }
    $(".error", form).textContent = text;
  } finally {
    button.disabled = false;
    button.textContent = joinLabel();
    $("#join-status").textContent = "";
  }
});

$("#rejoin").addEventListener("click", () => location.reload());

// ----------------------------------------------------------------------------- tiles
/** The stage's tiles, keyed by participant id, laid out as large as the stage allows. */
class Grid {
  constructor(element) {
    this.element = element;
    this.tiles = new Map();
    new ResizeObserver(() => this.layout()).observe(element);
  }

  add(id, name, { self = false, guest = false } = {}) {
    let tile = this.tiles.get(id);
    if (!tile) {
      const root = $("#tile-template").content.firstElementChild.cloneNode(true);
      translatePage(root);
      tile = { root, video: $("video", root), stream: null, self };
      root.dataset.participant = id;
      if (self) {
        root.classList.add("self");
        tile.video.muted = true;  // never play your own microphone back
      }
      this.tiles.set(id, tile);
      this.element.append(root);
    }
    // Guests are marked: a name alone cannot pass for someone with an account.
    const label = tile.self ? t("people.you_named", { name }) : guest ? t("people.guest_named", { name }) : name;
    $(".tile-name", tile.root).textContent = label;
    $(".avatar-circle", tile.root).textContent = initials(name);
    tile.root.setAttribute("aria-label", label);
    this.refresh(id);
    this.layout();
    return tile;
  }

  remove(id) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    tile.video.srcObject = null;
    tile.root.remove();
    this.tiles.delete(id);
    this.layout();
  }

  clear() {
    for (const id of [...this.tiles.keys()]) this.remove(id);
  }

  /** Show a participant's stream (their audio plays through the same element). */
  attach(id, stream) {
    const tile = this.tiles.get(id);
    if (!tile || tile.stream === stream) return;
    tile.stream = stream;
    play(tile.video, stream);
    const refresh = () => this.refresh(id);
    const watch = (track) => { track.addEventListener("mute", refresh); track.addEventListener("unmute", refresh);
                               track.addEventListener("ended", refresh); };
    stream.getTracks().forEach(watch);
    stream.addEventListener("addtrack", (event) => { watch(event.track); refresh(); });
    stream.addEventListener("removetrack", refresh);
    tile.video.addEventListener("resize", refresh);
    refresh();
  }

  /** Show the avatar while the participant sends no picture. */
  refresh(id) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    if (tile.self && tile.stream) play(tile.video, tile.stream);
    const video = tile.stream?.getVideoTracks().find((t) => t.readyState === "live" && (tile.self || !t.muted));
    tile.root.classList.toggle("no-video", !video || Boolean(tile.cameraOff) || Boolean(tile.paused));
  }

  /** Show the avatar of someone whose camera is not sent to us (last-N, low-bandwidth mode). */
  setPaused(id, paused) {
    const tile = this.tiles.get(id);
    if (!tile || tile.self || Boolean(tile.paused) === paused) return;
    tile.paused = paused;
    this.refresh(id);
  }

  setCameraOff(id, off) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    tile.cameraOff = off;
    this.refresh(id);
  }

  setMuted(id, muted) {
    const tile = this.tiles.get(id);
    if (tile) $(".tile-muted", tile.root).toggleAttribute("hidden", !muted);  // an <svg> has no .hidden
  }

  speaking(id) {
    for (const [key, tile] of this.tiles) tile.root.classList.toggle("speaking", key === id);
  }

  /** A raised hand on the tile, with its place in the queue (null: the hand is down). */
  setHand(id, order) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    const hand = $(".tile-hand", tile.root);
    hand.hidden = order === null;
    if (order === null) return;
    $("b", hand).textContent = String(order);
    hand.setAttribute("aria-label", t("people.hand_raised", { nth: ordinal(order) }));
  }

  /** An emoji that floats up the tile for a few seconds. */
  react(id, emoji) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    const shown = el("span", { className: "tile-reaction", role: "img", "aria-label": t("reaction.named", { emoji }) }, emoji);
    const box = $(".tile-reactions", tile.root);
    while (box.childElementCount >= 4) box.firstElementChild.remove();
    box.append(shown);
    setTimeout(() => shown.remove(), REACTION_MS);
  }

  quality(id, quality) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    const badge = $(".tile-quality", tile.root);
    badge.dataset.quality = quality;
    badge.setAttribute("aria-label", t("quality.label", { quality: t(`quality.${quality}`) }));
    badge.hidden = quality === "good";  // only worth a glance when it is not
  }

  // The tile width that fills the stage best for the tiles on show, of the shape meeting.css gives
  // them (--tile-ratio: 16:9, 3:4 on a phone held upright).
  layout() {
    const n = Math.max(1, this.element.querySelectorAll(".tile:not(.off-page)").length);  // pages.js
    const style = getComputedStyle(this.element);
    const gap = parseFloat(style.columnGap) || 0;
    const ratio = parseFloat(style.getPropertyValue("--tile-ratio")) || 16 / 9;
    const width = this.element.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const height = this.element.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    let best = 0;
    for (let columns = 1; columns <= n; columns++) {
      const rows = Math.ceil(n / columns);
      const tile = Math.min((width - gap * (columns - 1)) / columns, ((height - gap * (rows - 1)) / rows) * ratio);
      best = Math.max(best, tile);
    }
    this.element.style.setProperty("--tile-width", `${Math.max(120, Math.floor(best))}px`);
  }
}

const grid = new Grid($("#grid"));
new TilePages($("#grid"), () => grid.layout());
const views = new Views((publisher, trackId, maxLayer) => {
  session?.signaling.request("video_layer", { publisher, track_id: trackId, max_layer: maxLayer })
    .catch((error) => console.warn("video_layer not sent", error));
});

// Low-bandwidth mode (kept for the next meeting): only the speaker's camera is received.
const LOW_BANDWIDTH = "confmeet.lowBandwidth";
function setLowBandwidth(on) {
  const button = $("#low-bandwidth");
  button.setAttribute("aria-pressed", String(on));
  button.title = t(on ? "controls.low_bandwidth_on" : "controls.low_bandwidth_title");
  try { localStorage.setItem(LOW_BANDWIDTH, on ? "1" : ""); } catch { /* private mode: not kept */ }
  views.setLowBandwidth(on);
  session?.refreshPaused();
}
$("#low-bandwidth").addEventListener("click", () => setLowBandwidth(!views.lowBandwidth));
try { setLowBandwidth(localStorage.getItem(LOW_BANDWIDTH) === "1"); } catch { /* no storage */ }
const menu = new PopupMenu($("#menu"));
const screens = new Screens((presenting) => $("#stage-main").classList.toggle("presenting", presenting));
const people = new People($("#people-list"), menu,
                          (type, participant, fields) => session?.moderate(type, participant, fields));
const chat = new Chat({
  send: (text, to) => session.signaling.request("chat", to ? { text, to } : { text }),
  me: () => session?.me ?? {},
  meeting: () => session?.meeting.id,
  name: (id) => session?.participants.get(id)?.name,
});

// The side panel shows the people or the chat, or nothing.
const PANELS = { people: ["#people-panel", "#people-button"], chat: ["#chat-panel", "#chat-button"],
                 polls: ["#polls-panel", "#polls-button"], breakouts: ["#breakouts-panel", "#breakouts-button"] };
function openPanel(name) {
  for (const [key, [panel, button]] of Object.entries(PANELS)) {
    $(panel).hidden = key !== name;
    $(button).setAttribute("aria-expanded", String(key === name));
  }
  chat.setOpen(name === "chat");
  session?.polls.setOpen(name === "polls");
}
for (const [key, [panel, button]] of Object.entries(PANELS)) {
  $(button).addEventListener("click", () => {
    openPanel($(panel).hidden ? key : null);
    if (!$(panel).hidden) $(`${panel} [data-close]`).focus();  // the focus follows (on a phone: the whole screen)
  });
  $(`${panel} [data-close]`).addEventListener("click", () => { openPanel(null); $(button).focus(); });
  $(panel).addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || event.defaultPrevented) return;  // a menu closes first
    openPanel(null);
    $(button).focus();
  });
}
new Shortcuts({ active: () => Boolean(session) && !session.closed });

// ----------------------------------------------------------------------------- the meeting
/** The peer connection that publishes the camera and microphone, and its first offer. */
class Publisher {
  /** `e2ee`: the meeting's encryption (e2ee.js), which must see the senders before the offer. */
  constructor(certificate, e2ee = null) {
    const kinds = [media.hasMicrophone && "audio", media.hasCamera && "video"].filter(Boolean);
    this.pc = new RTCPeerConnection({
      // Chrome refuses max-bundle for an offer without m-lines, the offer of someone who publishes nothing.
      bundlePolicy: kinds.length ? "max-bundle" : "balanced",
      ...(certificate ? { certificates: [certificate] } : {}),
      ...e2eePeerConfig(Boolean(e2ee)),
    });
    this.sources = new Map();
    for (const kind of kinds) {
      const track = kind === "audio" ? media.sent : media.video;  // none while the camera is off
      const transceiver = this.pc.addTransceiver(track ?? kind, {
        direction: "sendonly", streams: [media.stream],
        ...(kind === "video" ? { sendEncodings: cameraEncodings(track?.getSettings().height) } : {}),
      });
      this.sources.set(transceiver, SOURCE[kind]);
      e2ee?.protectSender(transceiver);
    }
    this.offer = this.pc.createOffer();
    this.offer.catch(() => {});  // a failure surfaces where the offer is used
  }
}

/** Being in the meeting: the signaling session, the peer connection, the stage. */
class Session {
  static async join({ name, password, waiting = () => {} }) {
    if (signaling?.state !== "idle") signaling = new Signaling(accessToken);
    const stopWaiting = signaling.on("waiting", waiting);
    // The peer connection and its first offer are made while the join is under way; only the ICE
    // servers, which come with `joined`, are set afterwards (before anything is gathered).
    let e2ee = meetingInfo?.e2ee && e2eeSupported() ? new E2ee() : null;
    let publisher = new Publisher(await certificate, e2ee);
    try {
      const joined = await signaling.join({ meeting: code, name, password });
      if (joined.e2ee?.enabled && !e2eeSupported()) {
        await signaling.leave();
        throw new ConnectionError("e2ee_unsupported", t("error.e2ee_unsupported"));
      }
      if (Boolean(joined.e2ee?.enabled) !== Boolean(e2ee)) {  // a guest learns it only now
        publisher.pc.close();
        e2ee?.close();
        e2ee = joined.e2ee?.enabled ? new E2ee() : null;
        publisher = new Publisher(await certificate, e2ee);
      }
      session = new Session(signaling, joined, publisher, e2ee);
      return session;
    } catch (error) {
      publisher.pc.close();
      e2ee?.close();
      throw error;
    } finally {
      stopWaiting();
    }
  }

  constructor(signaling, joined, publisher, e2ee = null) {
    this.signaling = signaling;
    this.meeting = joined.meeting;
    this.me = joined.participant;
    this.participants = new Map(joined.participants.map((p) => [p.id, p]));
    this.locked = Boolean(meetingInfo?.locked);
    this.screen = null;               // what we share: {track, transceiver}
    this.removedBy = null;
    this.remoteByMid = new Map();     // mid -> {participant, kind, source, ...} from server offers
    this.sources = publisher.sources;  // our sending transceiver -> source
    this.preparedOffer = publisher.offer;
    this.needsOffer = true;           // the first offer, made below
    this.unsentAnswer = null;
    this.glares = 0;
    this.closed = false;
    this.lastN = null;                // whose cameras the SFU sends us (null: everyone's)

    for (const [type, handler] of Object.entries({
      offer: (m) => this.#serverOffer(m),
      media_reset: (m) => this.#mediaReset(m),
      participant_joined: (m) => this.#joined(m.participant),
      participant_updated: (m) => this.#updated(m.participant),
      participant_left: (m) => this.#left(m.participant_id),
      track_unpublished: (m) => this.#unpublished(m.track),
      active_speaker: (m) => this.#speaking(m.participant_id),
      last_n: (m) => { this.lastN = m.participants && new Set(m.participants); this.refreshPaused(); },
      connection_quality: (m) => this.#quality(m.participant_id, m.quality),
      meeting_ended: () => this.end(t("message.ended"), t("message.ended_by_host")),
      reconnecting: () => { $("#reconnecting").hidden = false; },
      resumed: (resumed) => this.#resumed(resumed),
      closed: ({ error }) => error && this.#lost(error),
      error: (m) => this.#notify(errorText(m)),
      muted: (m) => this.#stopped("microphone", m.by),
      camera_stopped: (m) => this.#stopped("camera", m.by),
      unmute_request: (m) => this.#askedToUnmute(m.by),
      removed: (m) => { this.removedBy = m.by; },
      lobby: (m) => this.#lobby(m.waiting, m.knocked),
      meeting_updated: (m) => this.#setLocked(m.locked),
      reaction: (m) => grid.react(m.participant_id, m.emoji),
      chat: (m) => chat.add(m.message),
    })) signaling.on(type, handler);

    this.e2ee = e2ee;  // end-to-end encryption (e2ee.js), when the meeting has it
    e2ee?.start(signaling, joined);
    this.recording = new Recording(signaling, joined, (text) => this.#notify(text));
    this.captions = new Captions(signaling, joined, { token: accessToken, notify: (text) => this.#notify(text) });
    this.polls = new Polls(signaling, joined, (text) => this.#notify(text));
    this.whiteboard = new Whiteboard(signaling, joined, { notify: (text) => this.#notify(text) });
    this.breakouts = new Breakouts(signaling, joined, { notify: (text) => this.#notify(text), me: () => this.me,
                                                        people: () => [...this.participants.values()],
                                                        chat: (history) => chat.reset(history) });
    this.pc = this.#connect(publisher.pc, joined.ice_servers ?? []);
    // Negotiation steps run one at a time, in order; the first is under way while the stage is drawn.
    this.chain = this.#offer().catch((error) => this.#failed(error));
    this.#stage(joined);
  }

  #stage(joined) {
    document.title = `${joined.meeting.title} · confmeet`;
    $("#stage-title").textContent = joined.meeting.title;
    grid.clear();
    grid.add(this.me.id, this.me.name, { self: true });
    grid.attach(this.me.id, media.stream);
    for (const p of this.participants.values()) this.#updated(p);
    chat.reset(joined.chat ?? []);
    this.#roster();
    this.#controls();
    this.#setLocked(this.locked);
    this.#lobby(joined.waiting ?? []);
    if (!media.microphoneOn || !media.cameraOn) this.#sendState();
    show("stage");
    grid.layout();
    this.clock = setInterval(tick, 10_000);
    tick();
  }

  #connect(pc, iceServers) {
    pc.setConfiguration({ ...pc.getConfiguration(), iceServers });
    media.onTrack = (kind, track) => {
      const transceiver = [...this.sources.keys()].find((t) => this.sources.get(t) === SOURCE[kind]);
      transceiver?.sender.replaceTrack(track).catch((error) => this.#notify(error.message));
      if (kind === "video") grid.refresh(this.me.id);
    };
    pc.addEventListener("icecandidate", ({ candidate }) => {
      this.signaling.request("candidate", { candidate: candidate ? candidate.toJSON() : null })
        .catch((error) => console.warn("candidate not sent", error));
    });
    pc.addEventListener("track", ({ track, streams, transceiver }) => {
      this.e2ee?.protectReceiver(transceiver.receiver);
      const label = this.remoteByMid.get(transceiver.mid);
      const id = streams[0]?.id ?? label?.participant;
      if (!id || id === this.me.id) return;
      if (!this.participants.has(id)) this.#joined({ id, name: label?.name ?? t("people.role.guest"), role: "participant" });
      if (label?.source === "screen") {
        // The SFU sends all of a publisher's tracks in one stream: the tile keeps the camera.
        streams[0]?.removeTrack(track);
        screens.add(label.track_id, { participant: id, name: this.participants.get(id).name,
                                      stream: new MediaStream([track]) });
        return;
      }
      const stream = streams[0] ?? new MediaStream([track]);
      grid.attach(id, stream);
      if (label?.source === "camera") {
        views.track(id, label.track_id, grid.tiles.get(id).root);
        this.refreshPaused();
      }
    });
    pc.addEventListener("connectionstatechange", () => {
      this.#quality(this.me.id, pc.connectionState === "connected" ? this.myQuality ?? "good" : pc.connectionState);
      if (pc.connectionState === "failed" && !this.closed) this.#restart();
    });
    return pc;
  }

  // Our offers and the server's, in arrival order, one at a time.
  #enqueue(step) {
    this.chain = this.chain.then(() => (this.closed ? undefined : step())).catch((error) => this.#failed(error));
  }

  #failed(error) {
    if (!(error instanceof ConnectionError) && !this.closed) this.#notify(`Media negotiation failed: ${error.message}`);
  }

  async #offer() {
    if (!this.needsOffer) return;
    this.needsOffer = false;
    const pc = this.pc;
    const offer = this.preparedOffer ?? pc.createOffer();
    this.preparedOffer = null;
    await pc.setLocalDescription(await offer);
    const tracks = [...this.sources].filter(([t]) => t.mid !== null).map(([t, source]) => ({ mid: t.mid, source }));
    try {
      const answer = await this.signaling.request("offer", { sdp: pc.localDescription.sdp, tracks });
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      this.glares = 0;
    } catch (error) {
      if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" });
      this.needsOffer = true;
      if (error.code === "glare" && ++this.glares <= 5) {
        // The server's offer is already queued behind this step; it is answered, then we offer again.
        this.#enqueue(() => this.#offer());
        return;
      }
      if (error instanceof ConnectionError) return;  // offered again once resumed
      throw error;
    }
  }

  #serverOffer({ sdp, tracks }) {
    this.#enqueue(async () => {
      for (const track of tracks ?? []) this.remoteByMid.set(track.mid, track);
      const pc = this.pc;
      if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" });
      await pc.setRemoteDescription({ type: "offer", sdp });
      await pc.setLocalDescription();
      this.unsentAnswer = pc.localDescription.sdp;
      await this.signaling.request("answer", { sdp: this.unsentAnswer });
      this.unsentAnswer = null;
      await this.#offer();
    });
  }

  // Back on the same seat: catch up with who came and went meanwhile, finish negotiating.
  #resumed(joined) {
    $("#reconnecting").hidden = true;
    const present = new Map(joined.participants.map((p) => [p.id, p]));
    for (const id of [...this.participants.keys()]) if (!present.has(id)) this.#left(id);
    for (const p of present.values()) this.#updated(p);
    this.#updated(joined.participant);
    this.lastN = joined.last_n ? new Set(joined.last_n) : null;  // last_n events sent meanwhile were lost
    this.refreshPaused();
    chat.merge(joined.chat ?? []);
    if (isModerator(this.me)) this.#lobby(joined.waiting ?? []);
    if (joined.media_reset) {  // the seat was taken over by another node (ours stopped): media anew
      this.#mediaReset(joined);
      return;
    }
    this.#enqueue(async () => {
      if (this.unsentAnswer) {
        await this.signaling.request("answer", { sdp: this.unsentAnswer });
        this.unsentAnswer = null;
      }
      await this.#offer();
    });
  }

  // The SFU lost the meeting's media (a worker process stopped) and took us back: the seat stays,
  // the media starts over on a new peer connection.
  #mediaReset({ ice_servers: iceServers }) {
    this.#enqueue(async () => {
      if (this.screen) {
        this.screen.track.stop();
        this.screen = null;
        this.#sharing();
      }
      screens.clear();
      this.remoteByMid.clear();
      views.clear();  // the SFU took us back afresh: it sends every camera again,
      this.lastN = null;  // and says anew whose when last-N applies
      this.refreshPaused();
      const publisher = new Publisher(await certificate, this.e2ee);
      this.pc.close();
      this.sources = publisher.sources;
      this.preparedOffer = publisher.offer;
      this.pc = this.#connect(publisher.pc, iceServers ?? []);
      this.unsentAnswer = null;
      this.needsOffer = true;
      await this.#offer();
    });
  }

  // ICE failed: the SFU cannot reach us on this connection. Take a fresh seat.
  async #restart() {
    const { name } = this.me;
    this.close();
    try {
      await Session.join({ name, password: $("#join-form").password.value });
    } catch (error) {
      media.stop();
      showMessage(t("message.media_failed"), errorText(error), { rejoin: true });
    }
  }

  #joined(participant) {
    this.#updated(participant);
  }

  // Someone's role, microphone, camera or hand (their own update_state, or a moderator's doing).
  #updated(participant) {
    if (participant.id === this.me.id) {
      const wasModerator = isModerator(this.me);
      const moved = (participant.breakout ?? null) !== (this.me.breakout ?? null);
      this.me = { ...this.me, ...participant };
      if (wasModerator && !isModerator(this.me)) this.#lobby([]);
      if (moved) for (const p of this.participants.values()) this.#updated(p);  // the tiles of your new room
    } else if ((participant.breakout ?? null) !== (this.me.breakout ?? null)) {  // in another room (breakouts.js)
      this.participants.set(participant.id, participant);
      grid.remove(participant.id);
      screens.removeParticipant(participant.id);
    } else {
      this.participants.set(participant.id, participant);
      grid.add(participant.id, participant.name, { guest: Boolean(participant.guest) });
      grid.setMuted(participant.id, Boolean(participant.muted));
      grid.setCameraOff(participant.id, Boolean(participant.camera_off));
      screens.rename(participant.id, participant.name);
    }
    this.#roster();
  }

  // Everything drawn from the list of people: the participant list, hands on the tiles, the
  // chat's recipients, the count, your hand button and, for moderators, their tools.
  #roster() {
    const others = [...this.participants.values()];
    const hands = handOrder([this.me, ...others]);
    for (const id of grid.tiles.keys()) grid.setHand(id, hands.get(id) ?? null);
    people.render(this.me, others);
    chat.setPeople(others);
    $("#count-text").textContent = tn("stage.participants_count", others.length + 1);
    const raised = hands.has(this.me.id);
    const hand = $("#hand");
    hand.setAttribute("aria-pressed", String(raised));
    hand.title = t(raised ? "controls.lower_hand_title" : "controls.raise_hand_title");
    $("#moderation").hidden = !isModerator(this.me);
    $("#end-tools").hidden = !isModerator(this.me);
  }

  /** A host's or moderator's action on one participant (people.js), confirmed in a notice. */
  async moderate(type, participant, fields = {}) {
    const done = type === "set_role" ? `done.${fields.role === "moderator" ? "made_moderator" : "unmade_moderator"}`
      : `done.${type}`;
    await this.#request(type, { participant_id: participant.id, ...fields }, t(done, { name: participant.name }));
  }

  async #request(type, fields = {}, done = "") {
    try {
      await this.signaling.request(type, fields);
      if (done) this.#notify(done);
    } catch (error) {
      if (error.code !== "too_fast") this.#notify(errorText(error));
    }
  }

  // Tell the others when the microphone or camera goes on or off.
  #sendState() {
    this.signaling.request("update_state", { muted: !media.microphoneOn, camera_off: !media.cameraOn })
      .catch((error) => console.warn("state not sent", error));
  }

  // A moderator muted the microphone or stopped the camera (the SFU already stopped forwarding it).
  async #stopped(device, by) {
    if (device === "microphone") media.setMicrophone(false);
    else await media.setCamera(false);
    this.updateControls();
    this.#notify(t(`done.your_${device}_off`, { name: by }));
  }

  // Hosts and moderators: who waits in the lobby, to let in or turn away; a newcomer is announced.
  #lobby(waiting, knocked = null) {
    this.waiting = waiting;
    $("#lobby-list").replaceChildren(...waiting.map((knock) => {
      const decide = (type, style) => el("button", {
        type: "button", className: style, "aria-label": t(`lobby.${type}_named`, { name: knock.name }),
        onclick: () => this.#request(type, { knock_id: knock.id }),
      }, t(`lobby.${type}`));
      return el("li", {}, el("span", { className: "avatar-circle small", "aria-hidden": "true" }, initials(knock.name)),
                el("span", { className: "lobby-name", title: knock.name }, knock.name),
                decide("admit", ""), decide("deny", "ghost"));
    }));
    $("#lobby").hidden = waiting.length === 0;
    $("#lobby-count").textContent = String(waiting.length);
    const badge = $("#people-badge");
    badge.textContent = String(waiting.length);
    badge.hidden = waiting.length === 0;
    $("#people-button").title = waiting.length ? tn("lobby.waiting", waiting.length) : t("people.button_title");
    if (knocked) this.#notify(t("lobby.knocked", { name: knocked.name }));
  }

  #left(id) {
    this.participants.delete(id);
    views.forget(id);
    grid.remove(id);
    screens.removeParticipant(id);
    this.#roster();
  }

  #unpublished(track) {
    if (track?.source === "screen") screens.remove(track.track_id);
    if (track?.source === "camera") {
      views.forget(track.participant);
      this.refreshPaused();
    }
    grid.refresh(track?.participant);
  }

  #setLocked(locked) {
    this.locked = locked;
    $("#locked").hidden = !locked;
    const text = $("#lock-text");
    text.dataset.i18n = locked ? "people.unlock" : "people.lock";
    text.textContent = t(text.dataset.i18n);
  }

  // Never forced: the person decides.
  #askedToUnmute(by) {
    if (!media.hasMicrophone || media.microphoneOn) return;
    $("#unmute-text").textContent = t("stage.unmute_request", { name: by });
    $("#unmute-request").hidden = false;
    $("#unmute-accept").focus();
  }

  // ------------------------------------------------------------------------- screen sharing
  /** Share a screen, window or tab as a track of its own (source "screen"). */
  async #share() {
    let track;
    try {
      [track] = (await navigator.mediaDevices.getDisplayMedia(SCREEN)).getVideoTracks();
    } catch (error) {
      if (error.name !== "NotAllowedError") this.#notify(t("screens.cannot_share", { reason: error.message }));
      return;
    }
    if (this.closed || this.screen) { track.stop(); return; }
    track.contentHint = "detail";
    track.addEventListener("ended", () => this.#stopSharing());  // the browser's own "Stop sharing"
    // Each share is a new track on a new transceiver: the SFU announces it afresh to everyone.
    const transceiver = this.pc.addTransceiver(track, { direction: "sendonly", streams: [new MediaStream([track])] });
    this.sources.set(transceiver, "screen");
    this.e2ee?.protectSender(transceiver);
    this.screen = { track, transceiver };
    screens.add("self", { participant: this.me.id, name: this.me.name, self: true });
    this.#sharing();
    this.#renegotiate();
  }

  #stopSharing() {
    if (!this.screen) return;
    const { track, transceiver } = this.screen;
    this.screen = null;
    track.stop();
    screens.remove("self");
    this.#sharing();
    if (this.closed) return;
    transceiver.direction = "inactive";  // the SFU unpublishes the track once this is negotiated
    transceiver.sender.replaceTrack(null).catch(() => {});
    this.sources.delete(transceiver);
    this.#renegotiate();
  }

  #sharing() {
    const button = $("#share");
    button.setAttribute("aria-pressed", String(Boolean(this.screen)));
    button.title = t(this.screen ? "screens.stop" : "controls.share_title");
  }

  #renegotiate() {
    this.needsOffer = true;
    this.#enqueue(() => this.#offer());
  }

  #speaking(id) {
    grid.speaking(id);
    if (id !== this.me.id) views.setSpeaker(id);
    this.refreshPaused();
  }

  /** Tiles whose camera the SFU does not send us show the avatar. */
  refreshPaused() {
    for (const id of grid.tiles.keys()) {
      const notSent = Boolean(this.lastN && !this.lastN.has(id)) || (views.lowBandwidth && id !== views.speaker);
      grid.setPaused(id, views.cameras.has(id) && notSent);
    }
  }

  #quality(id, quality) {
    if (id !== this.me.id) { grid.quality(id, quality); return; }
    if (["good", "fair", "poor"].includes(quality)) this.myQuality = quality;
    const badge = $("#quality");
    badge.dataset.quality = quality;
    badge.setAttribute("aria-label", t("quality.label", { quality: t(`quality.${quality}`) }));
    badge.title = t("quality.title", { quality: t(`quality.${quality}`) });
  }

  #controls() {
    const mic = $("#mic");
    const cam = $("#cam");
    const update = this.updateControls = () => {
      setToggle(mic, media.microphoneOn && media.hasMicrophone,
                { pressedWhenOn: true, label: "controls.microphone", onTitle: "controls.mute_title", offTitle: "controls.unmute_title" });
      setToggle(cam, media.cameraOn && media.hasCamera,
                { pressedWhenOn: true, label: "controls.camera", onTitle: "controls.camera_off_title", offTitle: "controls.camera_on_title" });
      mic.disabled = !media.hasMicrophone;
      cam.disabled = !media.hasCamera;
      grid.setMuted(this.me.id, !(media.microphoneOn && media.hasMicrophone));
      grid.refresh(this.me.id);
    };
    mic.onclick = () => {
      media.setMicrophone(!media.microphoneOn);
      if (media.microphoneOn) $("#unmute-request").hidden = true;
      update();
      this.#sendState();
    };
    cam.onclick = async () => {
      await media.setCamera(!media.cameraOn).catch((error) => this.#notify(t("devices.cannot_use", { reason: error.message })));
      update();
      this.#sendState();
    };
    $("#leave").onclick = () => this.leave();
    $("#share").onclick = () => (this.screen ? this.#stopSharing() : this.#share());
    $("#share").hidden = !navigator.mediaDevices?.getDisplayMedia;  // phones' browsers cannot share a screen
    $("#stop-presenting").onclick = () => this.#stopSharing();
    $("#hand").onclick = () => this.#request(this.me.hand_raised_at != null ? "lower_hand" : "raise_hand");
    const react = $("#react");
    react.onclick = () => {
      if (menu.openFor === react) { menu.close(); return; }
      menu.open(react, REACTIONS.map(([emoji, name]) => ({
        text: emoji, label: t(`reaction.${name}`), action: () => this.#request("reaction", { emoji }),
      })), { row: true, above: true, label: t("controls.reactions") });
    };
    const prompt = $("#unmute-request");
    $("#unmute-accept").onclick = () => {
      prompt.hidden = true;
      if (!media.microphoneOn) mic.click();
    };
    $("#unmute-decline").onclick = () => { prompt.hidden = true; };
    // Moderators
    $("#mute-all").onclick = () => this.#request("mute", { all: true }, t("done.muted_all"));
    $("#lock").onclick = () => this.#request("lock", { locked: !this.locked },
                                             t(this.locked ? "done.unlocked" : "done.locked"));
    const confirmEnd = (asking) => {
      $("#end-confirm").hidden = !asking;
      $("#end-meeting").hidden = asking;
      (asking ? $("#end-cancel") : $("#end-meeting")).focus();
    };
    $("#end-meeting").onclick = () => confirmEnd(true);
    $("#end-cancel").onclick = () => confirmEnd(false);
    $("#end-for-all").onclick = () => call("POST", `/api/v1/meetings/${encodeURIComponent(this.meeting.id)}/end`)
      .catch((error) => this.#notify(errorText(error)));
    update();
  }

  #notify(text) {
    const toast = $("#notice");
    toast.textContent = text;
    toast.hidden = false;
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => { toast.hidden = true; }, NOTICE_MS);
  }

  #lost(error) {
    if (this.closed) return;
    this.close();
    media.stop();
    if (error.code === "meeting_ended") {
      showMessage(t("message.ended"), t("message.ended_by_host"));
    } else if (error.code === "removed") {
      showMessage(t("message.removed"), t("message.removed_text", { name: this.removedBy ?? t("message.a_moderator") }),
                  { rejoin: true });
    } else {
      showMessage(t("message.no_longer_in"), errorText(error), { rejoin: true });
    }
  }

  end(title, text) {
    this.close();
    media.stop();
    showMessage(title, text);
  }

  async leave() {
    if (this.closed) return;
    this.closed = true;
    media.stop();  // the camera light goes out at once
    await this.signaling.leave();
    this.close();
    showMessage(t("message.left"), t("message.left_text"), { rejoin: true });
  }

  /**
   * Leave without waiting, for a page that is going away. The peer connection closes first: the
   * SFU notices that on its own, should the `leave` behind it not get through.
   */
  leaveNow() {
    this.pc.close();
    this.signaling.leaveNow();
    this.close();
  }

  /** What the script wrote on the stage, again in the page's language. */
  relabel() {
    for (const [id, p] of this.participants) {
      if ((p.breakout ?? null) === (this.me.breakout ?? null)) grid.add(id, p.name, { guest: Boolean(p.guest) });
    }
    grid.add(this.me.id, this.me.name, { self: true });
    this.#roster();
    this.#lobby(this.waiting ?? []);
    this.updateControls();
    this.#sharing();
    this.#setLocked(this.locked);
    this.#quality(this.me.id, $("#quality").dataset.quality);
    tick();
  }

  close() {
    this.closed = true;
    clearInterval(this.clock);
    $("#reconnecting").hidden = true;
    $("#unmute-request").hidden = true;
    menu.close();
    this.recording.close();
    this.captions.close();
    this.polls.close();
    this.breakouts.close();
    this.whiteboard.close();
    this.e2ee?.close();
    this.screen?.track.stop();
    this.screen = null;
    screens.clear();
    views.clear();
    this.pc.close();
    if (this.signaling.state !== "closed") this.signaling.leave();  // closes the socket once `left` is in
    grid.clear();
    if (session === this) session = null;
  }
}

function tick() {
  $("#clock").textContent = clockTime(new Date());
}

// A closed tab or a navigation away leaves at once, so the others see it now, not in 30 s.
window.addEventListener("pagehide", () => session?.leaveNow());

$("#languages").replaceChildren(languagePicker());
new Overflow($(".controlbar"));  // what does not fit the window goes into "More"
translatePage();
window.addEventListener("languagechange", () => {
  labelPrejoin();
  updatePreview();
  listDevices();
  session?.relabel();
});

prepare();
