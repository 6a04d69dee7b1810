// The meeting page, /m/<code>: sign in, get ready (name, camera, microphone), then the meeting:
// one RTCPeerConnection to the SFU (docs/protocol.md, spoken by signaling.js) and one tile per
// participant. For tests and diagnostics, window.confmeet.pc is the page's RTCPeerConnection
// (read getStats() from it); nothing else is exposed.
import { ApiError, call, saveTokens, signIn, tokens } from "/static/api.js";
import { ConnectionError, Signaling } from "/static/signaling.js";

const $ = (selector, root = document) => root.querySelector(selector);
const code = decodeURIComponent(location.pathname.replace(/^\/m\//, "").replace(/\/+$/, ""));
// The SFU forwards one stream per camera to every subscriber (no simulcast), so a camera sends
// what suits a tile, not a full screen.
const VIDEO = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24 } };
const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const SOURCE = { audio: "microphone", video: "camera" };

let session = null;       // the meeting we are in, once joined
let devicesReady = null;  // settles once the camera and microphone were asked for
let signaling = null;     // opened on the pre-join screen, so that joining takes one round trip
let certificate = null;   // the DTLS certificate, also made ahead of joining

window.confmeet = Object.freeze({ get pc() { return session?.pc ?? null; } });

function show(view) {
  for (const id of ["signin", "prejoin", "message"]) $(`#${id}`).hidden = id !== view;
  $("#stage").hidden = view !== "stage";
  $("#page").hidden = view === "stage";
  $("#topbar").hidden = view === "stage";
}

function showMessage(title, text, { rejoin = false } = {}) {
  $("#message-title").textContent = title;
  $("#message-text").textContent = text;
  $("#rejoin").hidden = !rejoin;
  show("message");
}

function initials(name) {
  const words = name.trim().split(/\s+/).filter(Boolean);
  return ((words[0]?.[0] ?? "?") + (words.length > 1 ? words.at(-1)[0] : "")).toUpperCase();
}

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

// A device toggle: `on` is whether the device is in use; `pressedWhenOn` says what aria-pressed
// means for this button ("Microphone" is pressed when on, "Mute" when off).
function setToggle(button, on, { pressedWhenOn, onTitle, offTitle }) {
  button.setAttribute("aria-pressed", String(on === pressedWhenOn));
  button.dataset.state = on ? "on" : "off";
  button.title = on ? onTitle : offTitle;
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

// A valid access token for a WebSocket: one about to expire is refreshed first (any REST call does).
async function accessToken() {
  if (secondsLeft(tokens()?.access_token) < 60) await call("GET", "/api/v1/users/me").catch(() => {});
  const token = tokens()?.access_token;
  if (!token) throw new ConnectionError("unauthorized", "Your sign-in has expired. Sign in again to rejoin.");
  return token;
}

function secondsLeft(jwt) {
  try {
    const payload = JSON.parse(atob(jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return payload.exp - Date.now() / 1000;
  } catch {
    return 0;
  }
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
    if (!navigator.mediaDevices) return "The camera and microphone need a secure (https) connection to the appliance.";
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
      const missing = [!this.hasCamera && "camera", !this.hasMicrophone && "microphone"].filter(Boolean);
      const denied = problems.some((e) => e.name === "NotAllowedError");
      return denied ? `The browser did not allow the ${missing.join(" and ")}.`
        : `No ${missing.join(" or ")} found: you can join without.`;
    }
    return "";
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
    this.onTrack(track.kind, track);
  }
}

const media = new LocalMedia();

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

// ----------------------------------------------------------------------------- pre-join
async function prepare() {
  if (!tokens()) { show("signin"); return; }
  let meeting, me;
  try {
    [meeting, me] = await Promise.all([
      call("GET", `/api/v1/meetings/by-code/${encodeURIComponent(code)}`),
      call("GET", "/api/v1/users/me"),
    ]);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) { show("signin"); return; }
    if (error instanceof ApiError && error.status === 404) {
      showMessage("Meeting not found", `There is no meeting with the code “${code}”. Check the link you were given.`);
      return;
    }
    showMessage("Cannot open the meeting", error.message, { rejoin: true });
    return;
  }
  if (meeting.status === "ended") {
    showMessage("This meeting has ended", `“${meeting.title}” is over.`);
    return;
  }
  document.title = `${meeting.title} · confmeet`;
  $("#meeting-title").textContent = meeting.title;
  $("#meeting-code").textContent = `Meeting code ${meeting.code}`;
  const form = $("#join-form");
  if (!form.name.value) form.name.value = me.name;
  const needsPassword = meeting.has_password && meeting.my_role !== "host";
  $("#password-field").hidden = !needsPassword;
  form.password.required = needsPassword;
  show("prejoin");
  updatePreview();
  if (signaling?.state !== "idle") signaling = new Signaling(accessToken);
  signaling.connect().catch(() => {});  // joining tries again
  certificate ??= RTCPeerConnection.generateCertificate({ name: "ECDSA", namedCurve: "P-256" }).catch(() => null);
  devicesReady ??= media.open().then(async (notice) => {
    $("#device-notice").textContent = notice;
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
      const option = new Option(device.label || `${none.split(" ")[1]} ${i + 1}`, device.deviceId);
      option.selected = device.deviceId === current;
      return option;
    }));
    if (!found.length) select.append(new Option(none, ""));
    select.disabled = !found.length;
  };
  fill($("#camera"), "videoinput", media.video, "No camera found");
  fill($("#microphone"), "audioinput", media.audio, "No microphone found");
}

function updatePreview() {
  const form = $("#join-form");
  play($("#preview"), media.stream);
  const showing = Boolean(media.video) && media.cameraOn;
  $("#preview-off").hidden = showing;
  $("#preview-off-text").textContent = !media.hasCamera ? "No camera" : "Your camera is off";
  $("#preview-initials").textContent = initials(form.name.value || "?");
  setToggle($("#pre-mic"), media.microphoneOn && media.hasMicrophone,
            { pressedWhenOn: false, onTitle: "Mute microphone", offTitle: "Unmute microphone" });
  setToggle($("#pre-cam"), media.cameraOn && media.hasCamera,
            { pressedWhenOn: false, onTitle: "Turn camera off", offTitle: "Turn camera on" });
  $("#pre-mic").disabled = !media.hasMicrophone;
  $("#pre-cam").disabled = !media.hasCamera;
}

// A level meter on the preview, so people see their microphone works before joining.
let meter = null;
function meterMicrophone() {
  const track = media.audio;
  if (!track || meter?.track === track) return;
  meter?.context.close();
  const context = new AudioContext();
  if (context.state === "suspended") document.addEventListener("click", () => context.resume(), { once: true });
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
  await media.setCamera(!media.cameraOn).catch((e) => { $("#device-notice").textContent = e.message; });
  updatePreview();
});
$("#join-form").name.addEventListener("input", updatePreview);
for (const [select, kind] of [[$("#camera"), "video"], [$("#microphone"), "audio"]]) {
  select.addEventListener("change", async () => {
    try {
      await media.choose(kind, select.value);
      $("#device-notice").textContent = "";
    } catch (error) {
      $("#device-notice").textContent = `Cannot use that device: ${error.message}`;
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
  button.textContent = "Joining…";
  $(".error", form).textContent = "";
  const waiting = () => {
    button.textContent = "Waiting to be let in…";
    $("#join-status").textContent = "The host knows you are here: you join as soon as they let you in.";
  };
  try {
    await devicesReady;  // join with the camera and microphone, not before they are open
    await Session.join({ name: form.name.value.trim(), password: form.password.value, waiting });
  } catch (error) {
    if (error.code === "unauthorized") {  // the sign-in was revoked or has run out: sign in again
      saveTokens(null);
      show("signin");
    }
    $(".error", form).textContent = error.message;
  } finally {
    button.disabled = false;
    button.textContent = "Join";
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

  add(id, name, { self = false } = {}) {
    let tile = this.tiles.get(id);
    if (!tile) {
      const root = $("#tile-template").content.firstElementChild.cloneNode(true);
      tile = { root, video: $("video", root), stream: null, self };
      root.dataset.participant = id;
      if (self) {
        root.classList.add("self");
        tile.video.muted = true;  // never play your own microphone back
      }
      this.tiles.set(id, tile);
      this.element.append(root);
    }
    const label = tile.self ? `${name} (You)` : name;
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
    tile.root.classList.toggle("no-video", !video || Boolean(tile.cameraOff));
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

  quality(id, quality) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    const badge = $(".tile-quality", tile.root);
    badge.dataset.quality = quality;
    badge.setAttribute("aria-label", `Connection quality: ${quality}`);
    badge.hidden = quality === "good";  // only worth a glance when it is not
  }

  // The tile width that fills the stage best for this many 16:9 tiles.
  layout() {
    const n = Math.max(1, this.tiles.size);
    const style = getComputedStyle(this.element);
    const gap = parseFloat(style.columnGap) || 0;
    const width = this.element.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const height = this.element.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    let best = 0;
    for (let columns = 1; columns <= n; columns++) {
      const rows = Math.ceil(n / columns);
      const tile = Math.min((width - gap * (columns - 1)) / columns, ((height - gap * (rows - 1)) / rows) * 16 / 9);
      best = Math.max(best, tile);
    }
    this.element.style.setProperty("--tile-width", `${Math.max(120, Math.floor(best))}px`);
  }
}

const grid = new Grid($("#grid"));

// ----------------------------------------------------------------------------- the meeting
/** The peer connection that publishes the camera and microphone, and its first offer. */
class Publisher {
  constructor(certificate) {
    const kinds = [media.hasMicrophone && "audio", media.hasCamera && "video"].filter(Boolean);
    this.pc = new RTCPeerConnection({
      // Chrome refuses max-bundle for an offer without m-lines, the offer of someone who publishes nothing.
      bundlePolicy: kinds.length ? "max-bundle" : "balanced",
      ...(certificate ? { certificates: [certificate] } : {}),
    });
    this.sources = new Map();
    for (const kind of kinds) {
      const track = kind === "audio" ? media.audio : media.video;  // none while the camera is off
      const transceiver = this.pc.addTransceiver(track ?? kind, { direction: "sendonly", streams: [media.stream] });
      this.sources.set(transceiver, SOURCE[kind]);
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
    const publisher = new Publisher(await certificate);
    try {
      const joined = await signaling.join({ meeting: code, name, password });
      session = new Session(signaling, joined, publisher);
      return session;
    } catch (error) {
      publisher.pc.close();
      throw error;
    } finally {
      stopWaiting();
    }
  }

  constructor(signaling, joined, publisher) {
    this.signaling = signaling;
    this.me = joined.participant;
    this.participants = new Map(joined.participants.map((p) => [p.id, p]));
    this.remoteByMid = new Map();     // mid -> {participant, kind, source, ...} from server offers
    this.sources = publisher.sources;  // our sending transceiver -> source
    this.preparedOffer = publisher.offer;
    this.needsOffer = true;           // the first offer, made below
    this.unsentAnswer = null;
    this.glares = 0;
    this.closed = false;

    for (const [type, handler] of Object.entries({
      offer: (m) => this.#serverOffer(m),
      participant_joined: (m) => this.#joined(m.participant),
      participant_updated: (m) => this.#updated(m.participant),
      participant_left: (m) => this.#left(m.participant_id),
      track_unpublished: (m) => grid.refresh(m.track?.participant),
      active_speaker: (m) => grid.speaking(m.participant_id),
      connection_quality: (m) => this.#quality(m.participant_id, m.quality),
      meeting_ended: () => this.end("This meeting has ended", "The host ended the meeting for everyone."),
      reconnecting: () => { $("#reconnecting").hidden = false; },
      resumed: (resumed) => this.#resumed(resumed),
      closed: ({ error }) => error && this.#lost(error),
      error: (m) => this.#notify(m.message || m.code),
      muted: (m) => this.#stopped("microphone", m.by),
      camera_stopped: (m) => this.#stopped("camera", m.by),
      unmute_request: (m) => this.#notify(`${m.by} asks you to unmute your microphone.`),
      lobby: (m) => this.#lobby(m.waiting),
    })) signaling.on(type, handler);

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
    this.#count();
    this.#controls();
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
      const label = this.remoteByMid.get(transceiver.mid);
      const id = streams[0]?.id ?? label?.participant;
      if (!id || id === this.me.id) return;
      if (!this.participants.has(id)) this.#joined({ id, name: label?.name ?? "Guest", role: "participant" });
      const stream = streams[0] ?? new MediaStream([track]);
      grid.attach(id, stream);
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
    for (const p of present.values()) if (!this.participants.has(p.id)) this.#joined(p);
    this.#enqueue(async () => {
      if (this.unsentAnswer) {
        await this.signaling.request("answer", { sdp: this.unsentAnswer });
        this.unsentAnswer = null;
      }
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
      showMessage("The media connection failed", error.message, { rejoin: true });
    }
  }

  #joined(participant) {
    this.#updated(participant);
    this.#count();
  }

  // Someone's name, microphone or camera state (as they announced it with update_state).
  #updated(participant) {
    if (participant.id === this.me.id) return;
    this.participants.set(participant.id, participant);
    grid.add(participant.id, participant.name);
    grid.setMuted(participant.id, Boolean(participant.muted));
    grid.setCameraOff(participant.id, Boolean(participant.camera_off));
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
    this.#notify(`${by} turned your ${device} off.`);
  }

  // Hosts and moderators: who waits in the lobby, to let in or turn away.
  #lobby(waiting) {
    const list = $("#lobby-list");
    list.replaceChildren(...waiting.map((knock) => {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.className = "lobby-name";
      name.textContent = knock.name;
      const decide = (type, label, style) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = style;
        button.textContent = label;
        button.setAttribute("aria-label", `${label} ${knock.name}`);
        button.onclick = () => this.signaling.request(type, { knock_id: knock.id })
          .catch((error) => this.#notify(error.message));
        return button;
      };
      item.append(name, decide("admit", "Admit", ""), decide("deny", "Deny", "ghost"));
      return item;
    }));
    $("#lobby").hidden = waiting.length === 0;
  }

  #left(id) {
    this.participants.delete(id);
    grid.remove(id);
    this.#count();
  }

  #count() {
    $("#count-text").textContent = plural(this.participants.size + 1, "participant");
  }

  #quality(id, quality) {
    if (id !== this.me.id) { grid.quality(id, quality); return; }
    if (["good", "fair", "poor"].includes(quality)) this.myQuality = quality;
    const badge = $("#quality");
    badge.dataset.quality = quality;
    badge.setAttribute("aria-label", `Connection quality: ${quality}`);
    badge.title = `Connection: ${quality}`;
  }

  #controls() {
    const mic = $("#mic");
    const cam = $("#cam");
    const update = this.updateControls = () => {
      setToggle(mic, media.microphoneOn && media.hasMicrophone,
                { pressedWhenOn: true, onTitle: "Mute microphone", offTitle: "Unmute microphone" });
      setToggle(cam, media.cameraOn && media.hasCamera,
                { pressedWhenOn: true, onTitle: "Turn camera off", offTitle: "Turn camera on" });
      mic.disabled = !media.hasMicrophone;
      cam.disabled = !media.hasCamera;
      grid.setMuted(this.me.id, !(media.microphoneOn && media.hasMicrophone));
      grid.refresh(this.me.id);
    };
    mic.onclick = () => {
      media.setMicrophone(!media.microphoneOn);
      update();
      this.#sendState();
    };
    cam.onclick = async () => {
      await media.setCamera(!media.cameraOn).catch((error) => this.#notify(error.message));
      update();
      this.#sendState();
    };
    $("#leave").onclick = () => this.leave();
    update();
  }

  #notify(text) {
    const toast = $("#notice");
    toast.textContent = text;
    toast.hidden = false;
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => { toast.hidden = true; }, 6000);
  }

  #lost(error) {
    if (this.closed) return;
    this.close();
    media.stop();
    if (error.code === "meeting_ended") {
      showMessage("This meeting has ended", "The host ended the meeting for everyone.");
    } else if (error.code === "removed") {
      showMessage("You were removed from the meeting", "Rejoining asks the host to let you in again.", { rejoin: true });
    } else {
      showMessage("You are no longer in the meeting", error.message, { rejoin: true });
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
    showMessage("You left the meeting", "You can rejoin while the meeting goes on.", { rejoin: true });
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

  close() {
    this.closed = true;
    clearInterval(this.clock);
    $("#reconnecting").hidden = true;
    this.pc.close();
    if (this.signaling.state !== "closed") this.signaling.leave();  // closes the socket once `left` is in
    grid.clear();
    if (session === this) session = null;
  }
}

function tick() {
  $("#clock").textContent = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// A closed tab or a navigation away leaves at once, so the others see it now, not in 30 s.
window.addEventListener("pagehide", () => session?.leaveNow());

prepare();
