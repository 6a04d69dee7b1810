// Live captions in the meeting: the CC button (everyone shows or hides captions for themselves;
// a host or moderator turns them on for the meeting first, in the language picked beside it), the
// caption line over the stage with the speaker's name, the transcript panel with downloads, and
// what the server says when captions fall behind or are unavailable.
// Messages: set_captions / show_captions, events caption / captions_state, joined.captions
// (docs/protocol.md, "Captions"). Downloads: GET /api/v1/meetings/{id}/transcript?format=...
import { el } from "/static/dom.js";

const MODERATORS = ["host", "moderator"];
const LANGUAGES = { en: "English", de: "Deutsch", fr: "Français", es: "Español", it: "Italiano", nl: "Nederlands",
                    pt: "Português", pl: "Polski", sv: "Svenska", "": "Detect" };
const LINE_SECONDS = 8;  // a caption stays on the line this long after it came
const LINES = 2;

export class Captions {
  /** @param token () => Promise<string>, the API access token (for downloads)
   *  @param notify (text) shows a short message on the page. */
  constructor(signaling, joined, { token, notify }) {
    this.signaling = signaling;
    this.meeting = joined.meeting.id;
    this.me = joined.participant.id;
    this.role = joined.participant.role;
    this.token = token;
    this.notify = notify;
    this.state = joined.captions ?? { enabled: false, language: "en", state: "off", detail: "" };
    this.showing = false;
    this.lines = [];  // {name, text, at}
    this.transcript = [];

    this.button = el("button", { id: "captions", className: "control accent captions-toggle", type: "button",
                                 "aria-label": "Captions", "aria-pressed": "false", onclick: () => this.#toggle() },
                     el("span", { className: "cc", "aria-hidden": "true" }, "CC"));
    this.language = el("select", { id: "captions-language", className: "captions-language",
                                   "aria-label": "Spoken language", title: "The language people speak",
                                   onchange: () => this.#setLanguage() },
                       ...Object.entries(LANGUAGES).map(([code, name]) => el("option", { value: code }, name)));
    document.querySelector("#leave").before(this.button, this.language);

    this.status = el("p", { id: "captions-status", className: "captions-status", role: "status", hidden: true });
    this.line = el("div", { id: "caption-line", className: "caption-line", "aria-live": "polite", hidden: true });
    this.overlay = el("div", { className: "captions-overlay" }, this.status, this.line);
    document.querySelector("#stage-main").append(this.overlay);

    this.list = el("ol", { id: "transcript-list", className: "transcript-list" });
    this.panel = el("aside", { id: "transcript-panel", className: "panel transcript-panel", hidden: true,
                               "aria-labelledby": "transcript-title" },
      el("header", { className: "panel-head" }, el("h2", { id: "transcript-title" }, "Transcript"),
         el("button", { type: "button", className: "icon-button", "aria-label": "Close transcript",
                        onclick: () => this.#openPanel(false) }, "✕")),
      this.list,
      el("footer", { className: "panel-foot transcript-downloads" }, "Download ",
         ...["vtt", "srt", "txt"].map((format) => el("button", {
           type: "button", className: "ghost", "data-format": format, onclick: () => this.#download(format),
         }, format.toUpperCase()))));
    document.querySelector("#chat-panel").after(this.panel);
    this.panelButton = el("button", { id: "transcript-button", className: "pill icon-only", type: "button",
                                      "aria-label": "Transcript", "aria-expanded": "false",
                                      "aria-controls": "transcript-panel", title: "The meeting's transcript",
                                      onclick: () => this.#openPanel(this.panel.hidden) }, "Aa");
    document.querySelector("#chat-button").after(this.panelButton);

    this.stop = [
      signaling.on("caption", (m) => this.#caption(m)),
      signaling.on("captions_state", (m) => this.#changed(m)),
      signaling.on("resumed", (resumed) => this.#resumed(resumed)),
      signaling.on("participant_updated", ({ participant }) => {
        if (participant.id === this.me) { this.role = participant.role; this.#render(); }
      }),
    ];
    this.timer = setInterval(() => this.#expire(), 1000);
    this.#render();
  }

  #caption(m) {
    const entry = { name: m.name || "Someone", text: m.text, start: m.start };
    this.lines.push({ ...entry, at: Date.now() });
    this.lines = this.lines.slice(-LINES);
    this.transcript.push(entry);
    this.list.append(el("li", {}, el("strong", {}, `${entry.name}: `), entry.text));
    this.list.lastElementChild.scrollIntoView({ block: "end" });
    this.#renderLine();
  }

  #changed(m) {
    const wasEnabled = this.state.enabled;
    this.state = { enabled: m.enabled, language: m.language, state: m.state, detail: m.detail };
    if (typeof m.showing === "boolean") this.showing = m.showing;
    if (m.by && m.enabled !== wasEnabled) {
      this.notify(m.enabled ? `${m.by} turned captions on.` : `${m.by} turned captions off.`);
    }
    this.#render();
  }

  async #resumed() {  // the seat survived a blip: tell the server again what we show
    if (this.showing) await this.signaling.request("show_captions", { enabled: true }).catch(() => {});
  }

  async #toggle() {
    const show = !this.showing;
    try {
      if (show && !this.state.enabled && MODERATORS.includes(this.role)) {
        await this.signaling.request("set_captions", { enabled: true, language: this.language.value });
      }
      const reply = await this.signaling.request("show_captions", { enabled: show });
      this.#changed(reply);
      if (show && !this.state.enabled) this.notify("Captions are off in this meeting; the host can turn them on.");
    } catch (error) {
      this.notify(error.message);
    }
  }

  async #setLanguage() {
    if (!this.state.enabled) return;
    try {
      await this.signaling.request("set_captions", { enabled: true, language: this.language.value });
    } catch (error) {
      this.notify(error.message);
    }
  }

  #expire() {
    const now = Date.now();
    const kept = this.lines.filter((line) => now - line.at < LINE_SECONDS * 1000);
    if (kept.length !== this.lines.length) {
      this.lines = kept;
      this.#renderLine();
    }
  }

  #renderLine() {
    this.line.replaceChildren(...this.lines.map((line) => el("p", { className: "caption" },
      el("span", { className: "caption-name" }, line.name), " ", el("span", { className: "caption-text" }, line.text))));
    this.line.hidden = !(this.showing && this.lines.length);
  }

  #render() {
    const moderator = MODERATORS.includes(this.role);
    const on = this.showing && this.state.enabled;
    this.button.setAttribute("aria-pressed", String(this.showing));
    this.button.title = this.showing ? "Hide captions" : (this.state.enabled || !moderator
      ? "Show captions" : "Turn captions on for the meeting");
    this.language.hidden = !moderator;
    this.language.value = this.state.language ?? "en";
    const messages = {
      unavailable: `Captions are unavailable right now${this.state.detail ? "" : ""}; they come back by themselves.`,
      degraded: "Captions are behind the speech: some words are merged or skipped.",
    };
    const message = on ? messages[this.state.state] : null;
    this.status.textContent = message ?? "";
    this.status.dataset.state = this.state.state;
    this.status.hidden = !message;
    this.#renderLine();
  }

  #openPanel(open) {
    this.panel.hidden = !open;
    this.panelButton.setAttribute("aria-expanded", String(open));
    if (open) this.#loadTranscript();
  }

  async #loadTranscript() {  // what was said before we joined, too
    const response = await fetch(`/api/v1/meetings/${this.meeting}/transcript`,
                                 { headers: { Authorization: `Bearer ${await this.token()}` } });
    if (!response.ok) return;
    const { segments } = await response.json();
    this.transcript = segments.map((s) => ({ name: s.name || "Someone", text: s.text, start: s.start }));
    this.list.replaceChildren(...this.transcript.map((entry) =>
      el("li", {}, el("strong", {}, `${entry.name}: `), entry.text)));
  }

  async #download(format) {
    const response = await fetch(`/api/v1/meetings/${this.meeting}/transcript?format=${format}`,
                                 { headers: { Authorization: `Bearer ${await this.token()}` } });
    if (!response.ok) {
      this.notify(response.status === 404 ? "There is no transcript yet: captions were never on."
                                          : "The transcript could not be downloaded.");
      return;
    }
    const link = el("a", { href: URL.createObjectURL(await response.blob()), download: `transcript.${format}` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  }

  close() {
    for (const stop of this.stop) stop();
    clearInterval(this.timer);
    for (const node of [this.button, this.language, this.overlay, this.panel, this.panelButton]) node.remove();
  }
}
