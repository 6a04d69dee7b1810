// Live captions in the meeting: the CC button (everyone shows or hides captions for themselves;
// a host or moderator turns them on for the meeting first, in the language picked beside it),
// "I speak" (each participant's own language, when it is not the meeting's), the caption lines
// over the stage with the speaker's name — interim text in a lighter style while someone speaks,
// replaced by the final text — the transcript panel (search, jump to a time, downloads: see
// transcript.js), and what the server says when captions fall behind, are unavailable, or run
// without interim text on a busy machine.
// Messages: set_captions / show_captions / caption_language, events caption / captions_state,
// joined.captions (docs/meetings.md, "Captions"; docs/protocol.md).
import { el } from "/static/dom.js";
import { TranscriptView, langOf } from "/static/transcript.js";

const MODERATORS = ["host", "moderator"];
// Caption languages (tags the server knows); the script of Chinese follows the tag.
const LANGUAGES = { en: "English", "zh-CN": "中文（简体）", "zh-TW": "中文（繁體）", "zh-HK": "中文（香港）",
                    de: "Deutsch", fr: "Français", es: "Español", it: "Italiano", ja: "日本語", ko: "한국어",
                    nl: "Nederlands", pt: "Português", pl: "Polski", sv: "Svenska", "": "Detect" };
const MEETINGS = "meeting";  // "I speak" value: the meeting's language
const LINE_SECONDS = 8;  // a final caption stays on the line this long after it came
const LINES = 2;

function options(entries) {
  return entries.map(([code, name]) => el("option", { value: code, lang: langOf(code) }, name));
}

export class Captions {
  /** @param token () => Promise<string>, the API access token (for the transcript)
   *  @param notify (text) shows a short message on the page. */
  constructor(signaling, joined, { token, notify }) {
    this.signaling = signaling;
    this.meeting = joined.meeting.id;
    this.me = joined.participant.id;
    this.role = joined.participant.role;
    this.notify = notify;
    this.state = { enabled: false, language: "en", state: "off", detail: "", interim: true, interim_detail: "",
                   speakers: {}, ...joined.captions };
    this.showing = false;
    this.lines = [];  // final captions on screen: {id, name, text, language, at}
    this.interims = new Map();  // participant → {id, name, text, language}: what they are saying

    this.button = el("button", { id: "captions", className: "control accent captions-toggle", type: "button",
                                 "aria-label": "Captions", "aria-pressed": "false", onclick: () => this.#toggle() },
                     el("span", { className: "cc", "aria-hidden": "true" }, "CC"));
    this.language = el("select", { id: "captions-language", className: "captions-language",
                                   "aria-label": "Spoken language", title: "The language people speak in this meeting",
                                   onchange: () => this.#setLanguage() }, ...options(Object.entries(LANGUAGES)));
    this.mine = el("select", { id: "my-caption-language", className: "captions-language",
                               "aria-label": "I speak", title: "The language you speak, if not the meeting's",
                               onchange: () => this.#setMine() },
                   el("option", { value: MEETINGS }, "I speak the meeting's language"),
                   ...options(Object.entries(LANGUAGES).map(([code, name]) => [code, `I speak ${name}`])));
    document.querySelector("#leave").before(this.button, this.language, this.mine);

    this.status = el("p", { id: "captions-status", className: "captions-status", role: "status", hidden: true });
    this.line = el("div", { id: "caption-line", className: "caption-line", "aria-live": "polite", hidden: true });
    this.overlay = el("div", { className: "captions-overlay" }, this.status, this.line);
    document.querySelector("#stage-main").append(this.overlay);

    this.transcript = new TranscriptView({ meeting: this.meeting, token, notify });
    this.panel = el("aside", { id: "transcript-panel", className: "panel transcript-panel", hidden: true,
                               "aria-labelledby": "transcript-title" },
      el("header", { className: "panel-head" }, el("h2", { id: "transcript-title" }, "Transcript"),
         el("button", { type: "button", className: "icon-button", "aria-label": "Close transcript",
                        onclick: () => this.#openPanel(false) }, "✕")),
      this.transcript.node);
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
    const entry = { id: m.id, name: m.name || "Someone", text: m.text, language: m.language };
    if (!m.final) {  // interim: replaces the speaker's previous interim text, never stored
      this.interims.set(m.participant_id, entry);
      this.#renderLine();
      return;
    }
    this.interims.delete(m.participant_id);  // the final text takes its place
    if (m.text) {
      this.lines = [...this.lines, { ...entry, gap: Boolean(m.gap), at: Date.now() }].slice(-LINES);
      this.transcript.add({ participant: m.participant_id, name: m.name, text: m.text, start: m.start, end: m.end,
                            language: m.language, gap: Boolean(m.gap) });
    }
    this.#renderLine();
  }

  #changed(m) {
    const wasEnabled = this.state.enabled;
    this.state = { ...this.state, ...Object.fromEntries(Object.entries(m).filter(([k]) => k in this.state)) };
    if (typeof m.showing === "boolean") this.showing = m.showing;
    if (m.by && m.enabled !== wasEnabled) {
      this.notify(m.enabled ? `${m.by} turned captions on.` : `${m.by} turned captions off.`);
    }
    if (!this.state.interim) this.interims.clear();
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

  async #setMine() {
    try {
      const language = this.mine.value === MEETINGS ? null : this.mine.value;
      this.#changed(await this.signaling.request("caption_language", { language }));
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
    const line = (entry, className) => el("p", { className, lang: langOf(entry.language), "data-id": entry.id },
      el("span", { className: "caption-name" }, entry.name), " ", el("span", { className: "caption-text" }, entry.text));
    this.line.replaceChildren(
      ...this.lines.map((entry) => line(entry, entry.gap ? "caption gap" : "caption")),
      ...[...this.interims.values()].map((entry) => line(entry, "caption interim")));
    this.line.hidden = !(this.showing && (this.lines.length || this.interims.size));
  }

  #render() {
    const moderator = MODERATORS.includes(this.role);
    const on = this.showing && this.state.enabled;
    this.button.setAttribute("aria-pressed", String(this.showing));
    this.button.title = this.showing ? "Hide captions" : (this.state.enabled || !moderator
      ? "Show captions" : "Turn captions on for the meeting");
    this.language.hidden = !moderator;
    this.language.value = this.state.language ?? "en";
    this.mine.hidden = !this.state.enabled;
    this.mine.value = this.me in (this.state.speakers ?? {}) ? this.state.speakers[this.me] : MEETINGS;
    const messages = {
      unavailable: "Captions are unavailable right now; they come back by themselves.",
      degraded: this.state.detail ? `${this.state.detail[0].toUpperCase()}${this.state.detail.slice(1)}.`
                                  : "Captions are behind the speech.",
    };
    let message = on ? messages[this.state.state] : null;
    let state = this.state.state;
    if (on && !message && !this.state.interim) {
      message = "Live text while people speak is paused: the server is busy. Captions still come after each sentence.";
      state = "interim-off";
    }
    this.status.textContent = message ?? "";
    this.status.dataset.state = state;
    this.status.hidden = !message;
    this.#renderLine();
  }

  #openPanel(open) {
    this.panel.hidden = !open;
    this.panelButton.setAttribute("aria-expanded", String(open));
    if (open) this.transcript.load();  // what was said before we joined, too
  }

  close() {
    for (const stop of this.stop) stop();
    clearInterval(this.timer);
    for (const node of [this.button, this.language, this.mine, this.overlay, this.panel, this.panelButton]) node.remove();
  }
}
