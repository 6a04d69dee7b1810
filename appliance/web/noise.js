// Noise suppression: RNNoise (compiled to WebAssembly, vendor/web-noise-suppressor) runs in an
// AudioWorklet between the microphone and the peer connection, so the others hear speech without
// the fan, the traffic or the hum behind it. It is on by default; the choice is kept in this
// browser. Turning it off or on swaps the track the sender sends (replaceTrack): nothing is
// renegotiated, and the server never knows. Where the browser lacks AudioWorklet or WebAssembly,
// or the processor cannot start, the microphone is sent as it is and the settings say so.
// The browser's own noiseSuppression constraint (meeting.js asks for it) stays on either way:
// RNNoise works on what it leaves.
import { $, el } from "/static/dom.js";
import { t } from "/static/i18n.js";

const VENDOR = "/static/vendor/web-noise-suppressor";
const KEY = "confmeet.noiseSuppression";  // "off" once turned off; on by default
const SAMPLE_RATE = 48000;                // RNNoise's frames are 10 ms at 48 kHz
const SVG = "http://www.w3.org/2000/svg";
// An equaliser's bars: the icon of the meeting's switch.
const ICON = "M7 18h2V6H7v12zm4 4h2V2h-2v20zm-8-8h2v-4H3v4zm12 4h2V6h-2v12zm4-8v4h2v-4h-2z";

/** Whether this browser can run the processor at all. */
export const supported = () => typeof AudioWorkletNode === "function" && typeof WebAssembly === "object";

/**
 * The microphone's path through RNNoise: one AudioContext at 48 kHz, the microphone's track as
 * its source, the worklet, and a MediaStreamDestination whose track is sent while it runs. The
 * destination's track stays the same when the microphone changes (another device), so only
 * turning it on or off changes what the sender sends.
 */
export class NoiseSuppression {
  constructor() {
    this.wanted = (() => { try { return localStorage.getItem(KEY) !== "off"; } catch { return true; } })();
    this.state = supported() ? "idle" : "unavailable";  // idle, loading, ready, failed, unavailable
    this.reason = "";          // why it failed, as the browser said it
    this.input = null;         // the microphone's track
    this.context = null;
    this.node = null;
    this.source = null;
    this.output = null;        // the MediaStreamAudioDestinationNode
    this.listeners = new Set();
    this.onChange = () => {};  // the track to send changed: meeting.js puts it on the sender
  }

  /** Processing, now: the context runs (a browser starts one only after a click or a key). */
  get running() {
    return this.wanted && this.state === "ready" && this.context.state === "running";
  }

  /** The track to send for the microphone's ``track``: the suppressed one while it runs. */
  sending(track) {
    return track && this.running ? this.output.stream.getAudioTracks()[0] : track;
  }

  /** The microphone's track changed (opened, another device, or null: gone); returns the track to send. */
  use(track) {
    this.input = track;
    this.#connect();
    if (track && this.wanted && this.state === "idle") this.#start();
    return this.sending(track);
  }

  /** Turn it on or off (kept for the next meeting). */
  async setWanted(on) {
    this.wanted = on;
    try { localStorage.setItem(KEY, on ? "" : "off"); } catch { /* private mode: this page only */ }
    if (on && this.state === "idle" && this.input) await this.#start();
    else if (this.state === "ready") {
      // Off, the graph waits suspended: it costs nothing, and on again is instant.
      await (on ? this.context.resume() : this.context.suspend()).catch(() => {});
    }
    this.#changed();
  }

  /** Listen for any change of state (for the controls); returns the function that stops listening. */
  listen(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The microphone is closed for good (the meeting is over): the worklet stops. */
  close() {
    this.input = null;
    this.#connect();
    this.context?.close().catch(() => {});
    this.context = null;
    if (this.state === "ready" || this.state === "loading") this.state = "idle";
    for (const listener of this.listeners) listener();
  }

  async #start() {
    this.state = "loading";
    this.#changed();
    const context = new AudioContext({ sampleRate: SAMPLE_RATE });
    this.context = context;
    try {
      // Imported here, not at the top: the module defines a subclass of AudioWorkletNode, which a
      // browser without one cannot even load.
      const { RnnoiseWorkletNode, loadRnnoise } = await import(`${VENDOR}/index.js`);
      const [wasmBinary] = await Promise.all([
        loadRnnoise({ url: `${VENDOR}/rnnoise.wasm`, simdUrl: `${VENDOR}/rnnoise_simd.wasm` }),
        context.audioWorklet.addModule(`${VENDOR}/rnnoise/workletProcessor.js`),
      ]);
      // Compiled here once to know it can be: the worklet compiles it again on its own, and one
      // that cannot (a damaged file, a policy against WebAssembly) would output silence.
      await WebAssembly.compile(wasmBinary);
      if (this.context !== context) return;  // closed meanwhile
      this.node = new RnnoiseWorkletNode(context, { maxChannels: 1, wasmBinary });
      // One channel in, one out: the processor cleans only the first channel, and a stereo
      // microphone would reach the destination as that channel mixed with a silent one (-6 dB).
      this.node.channelCount = 1;
      this.node.channelCountMode = "explicit";
      this.output = context.createMediaStreamDestination();
      this.output.channelCount = 1;
      this.node.connect(this.output);
      this.state = "ready";
      this.#connect();
    } catch (error) {
      this.#fail(error);
      return;
    }
    context.addEventListener("statechange", () => this.#changed());
    if (!this.wanted) await context.suspend().catch(() => {});
    else if (context.state === "suspended") this.#resumeOnGesture(context);
    this.#changed();
  }

  // Feed the microphone's track (if any) into the worklet.
  #connect() {
    this.source?.disconnect();
    this.source = null;
    if (!this.input || this.state !== "ready") return;
    try {
      this.source = this.context.createMediaStreamSource(new MediaStream([this.input]));
      this.source.connect(this.node);
    } catch (error) {  // Firefox: a microphone at another sample rate than the context's
      this.#fail(error);
    }
  }

  #fail(error) {
    this.state = "failed";
    this.reason = error?.message || String(error);
    console.warn("noise suppression is off:", error);
    this.context?.close().catch(() => {});
    this.context = null;
    this.#changed();
  }

  // Until the person clicks or types, the browser keeps a new AudioContext suspended: the raw
  // microphone is sent meanwhile (never silence), and the first gesture starts the worklet.
  #resumeOnGesture(context) {
    const resume = () => {
      if (context.state === "suspended" && this.wanted) context.resume().catch(() => {});
      if (context.state !== "suspended" || this.context !== context) {
        for (const type of ["pointerdown", "keydown"]) document.removeEventListener(type, resume, true);
      }
    };
    for (const type of ["pointerdown", "keydown"]) document.addEventListener(type, resume, true);
  }

  #changed() {
    this.onChange();
    for (const listener of this.listeners) listener();
  }
}

/**
 * The switch, twice: a checkbox in the pre-join settings under the microphone, and a toggle
 * button beside "Low bandwidth" in the meeting. Both say when it cannot run, and why.
 */
export class NoiseControls {
  constructor(noise) {
    this.noise = noise;
    this.checkbox = el("input", { type: "checkbox", id: "noise-suppression", "aria-describedby": "noise-hint",
                                  onchange: () => noise.setWanted(this.checkbox.checked) });
    this.label = el("span");
    this.hint = el("p", { className: "hint", id: "noise-hint" });
    const label = el("label", { className: "check" }, this.checkbox, this.label);
    $("#microphone").closest(".field").after(el("div", { className: "field" }, label, this.hint));

    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("viewBox", "0 0 24 24");
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", ICON);
    svg.append(path);
    this.button = el("button", { id: "noise-button", className: "pill icon-only", type: "button",
                                 onclick: () => noise.setWanted(!noise.wanted) }, svg);
    $("#low-bandwidth").before(this.button);

    noise.listen(() => this.render());
    window.addEventListener("languagechange", () => this.render());
    this.render();
  }

  render() {
    const { noise } = this;
    const usable = !["unavailable", "failed"].includes(noise.state);
    const on = noise.wanted && usable;
    const why = noise.state === "unavailable" ? t("noise.unavailable")
      : noise.state === "failed" ? t("noise.failed", { reason: noise.reason }) : "";
    this.checkbox.checked = on;
    this.checkbox.disabled = !usable;
    this.label.textContent = t("noise.label");
    this.hint.textContent = why || t("noise.hint");
    this.hint.className = why ? "notice" : "hint";
    this.button.disabled = !usable;
    this.button.dataset.state = noise.running ? "running" : noise.state;  // for tests and diagnostics
    this.button.setAttribute("aria-pressed", String(on));
    this.button.setAttribute("aria-label", t("noise.label"));
    this.button.title = why || t(on ? "noise.on_title" : "noise.off_title");
  }
}
