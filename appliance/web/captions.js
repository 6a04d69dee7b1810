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
import { errorText, languageName, t } from "/static/i18n.js";
import { TranscriptView, langOf } from "/static/transcript.js";

const MODERATORS = ["host", "moderator"];
// Caption languages (tags the server knows, "" for "detect it"), named in the page's language.
const LANGUAGES = ["en", "zh-CN", "zh-TW", "zh-HK", "de", "fr", "es", "it", "ja", "ko", "nl", "pt", "pl", "sv", ""];
const MEETINGS = "meeting";  // "I speak" value: the meeting's language
const LINE_SECONDS = 8;  // a final caption stays on the line this long after it came
const LINES = 2;

// What the server says of captions falling behind ("captions are 5 s behind the speech", "... some
// speech was skipped (...)"), in the page's language.
function behind(detail) {
  const seconds = /(\d+) s behind/.exec(detail ?? "")?.[1];
  if (seconds) return t("captions.behind_seconds", { n: seconds });
  return t(/skipped/.test(detail ?? "") ? "captions.skipped" : "captions.behind");
}

const spoken = (code) => (code ? languageName(code) : t("captions.detect"));

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
    this.encrypted = Boolean(joined.e2ee?.enabled);  // end-to-end encrypted: the server cannot caption it
    this.lines = [];  // final captions on screen: {id, name, text, language, at}
    this.interims = new Map();  // participant → {id, name, text, language}: what they are saying

    this.button = el("button", { id: "captions", className: "control accent captions-toggle", type: "button",
                                 "aria-pressed": "false", onclick: () => this.#toggle() },
                     el("span", { className: "cc", "aria-hidden": "true" }));  // "CC", an icon drawn by captions.css
    this.language = el("select", { id: "captions-language", className: "captions-language",
                                   onchange: () => this.#setLanguage() });
    this.mine = el("select", { id: "my-caption-language", className: "captions-language",
                               onchange: () => this.#setMine() });
    document.querySelector("#leave").before(this.button, this.language, this.mine);

    this.status = el("p", { id: "captions-status", className: "captions-status", role: "status", hidden: true });
    this.line = el("div", { id: "caption-line", className: "caption-line", "aria-live": "polite", hidden: true });
    this.overlay = el("div", { className: "captions-overlay" }, this.status, this.line);
    document.querySelector("#stage-main").append(this.overlay);

    this.transcript = new TranscriptView({ meeting: this.meeting, token, notify });
    this.panel = el("aside", { id: "transcript-panel", className: "panel transcript-panel", hidden: true,
                               "aria-labelledby": "transcript-title" },
      el("header", { className: "panel-head" }, el("h2", { id: "transcript-title", "data-i18n": "captions.transcript" }, t("captions.transcript")),
         el("button", { type: "button", className: "icon-button", "data-i18n-aria-label": "captions.close_transcript",
                        "aria-label": t("captions.close_transcript"),
                        onclick: () => this.#openPanel(false) }, "✕")),
      this.transcript.node);
    document.querySelector("#chat-panel").after(this.panel);
    this.panelButton = el("button", { id: "transcript-button", className: "pill icon-only", type: "button",
                                      "aria-expanded": "false", "aria-controls": "transcript-panel",
                                      onclick: () => this.#openPanel(this.panel.hidden) }, "Aa");
    document.querySelector("#chat-button").after(this.panelButton);
    this.#label();

    this.stop = [
      signaling.on("caption", (m) => this.#caption(m)),
      signaling.on("captions_state", (m) => this.#changed(m)),
      signaling.on("resumed", (resumed) => this.#resumed(resumed)),
      signaling.on("participant_updated", ({ participant }) => {
        if (participant.id === this.me) { this.role = participant.role; this.#render(); }
      }),
    ];
    this.relabel = () => { this.#label(); this.#render(); };
    window.addEventListener("languagechange", this.relabel);
    this.timer = setInterval(() => this.#expire(), 1000);
    this.#render();
  }

  // Names and options in the page's language (again when it changes).
  #label() {
    const options = (name) => LANGUAGES.map((code) => el("option", { value: code, lang: langOf(code) }, name(code)));
    this.button.setAttribute("aria-label", t("captions.captions"));
    this.language.setAttribute("aria-label", t("captions.spoken_language"));
    this.language.title = t("captions.spoken_language_title");
    this.language.replaceChildren(...options(spoken));
    this.mine.setAttribute("aria-label", t("captions.i_speak"));
    this.mine.title = t("captions.i_speak_title");
    this.mine.replaceChildren(el("option", { value: MEETINGS }, t("captions.i_speak_meetings")),
                              ...options((code) => t("captions.i_speak_language", { language: spoken(code) })));
    this.panelButton.setAttribute("aria-label", t("captions.transcript"));
    this.panelButton.title = t("captions.transcript_title");
  }

  #caption(m) {
    const entry = { id: m.id, name: m.name || t("captions.someone"), text: m.text, language: m.language };
    if (!m.final) {  // interim: replaces the speaker's previous interim text, never stored
      this.interims.set(m.participant_id, entry);
      this.#renderLine();
      return;
    }
    this.interims.delete(m.participant_id);  // the final text takes its place
    if (m.text) {
      this.lines = [...this.lines, { ...entry, gap: Boolean(m.gap), at: Date.now() }].slice(-LINES);
      this.transcript.add({ participant: m.participant_id, name: m.name, text: m.text, start: m.start, end: m.end,
                            language: m.language, gap: Boolean(m.gap), ...(m.room ? { room: m.room } : {}) });
    }
    this.#renderLine();
  }

  #changed(m) {
    const wasEnabled = this.state.enabled;
    this.state = { ...this.state, ...Object.fromEntries(Object.entries(m).filter(([k]) => k in this.state)) };
    if (typeof m.showing === "boolean") this.showing = m.showing;
    if (m.by && m.enabled !== wasEnabled) {
      this.notify(t(m.enabled ? "captions.turned_on_by" : "captions.turned_off_by", { name: m.by }));
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
      if (show && !this.state.enabled) this.notify(t("captions.off_ask_host"));
    } catch (error) {
      this.notify(errorText(error));
    }
  }

  async #setLanguage() {
    if (!this.state.enabled) return;
    try {
      await this.signaling.request("set_captions", { enabled: true, language: this.language.value });
    } catch (error) {
      this.notify(errorText(error));
    }
  }

  async #setMine() {
    try {
      const language = this.mine.value === MEETINGS ? null : this.mine.value;
      this.#changed(await this.signaling.request("caption_language", { language }));
    } catch (error) {
      this.notify(errorText(error));
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
    this.button.title = t(this.encrypted ? "e2ee.no_captions" : this.showing ? "captions.hide"
      : (this.state.enabled || !moderator ? "captions.show" : "captions.turn_on"));
    this.button.disabled = this.encrypted;
    this.language.hidden = !moderator || this.encrypted;
    this.language.value = this.state.language ?? "en";
    this.mine.hidden = !this.state.enabled;
    this.mine.value = this.me in (this.state.speakers ?? {}) ? this.state.speakers[this.me] : MEETINGS;
    const messages = {
      unavailable: t("captions.unavailable"),
      degraded: behind(this.state.detail),
    };
    let message = on ? messages[this.state.state] : null;
    let state = this.state.state;
    if (on && !message && !this.state.interim) {
      message = t("captions.interim_paused");
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
    window.removeEventListener("languagechange", this.relabel);
    for (const node of [this.button, this.language, this.mine, this.overlay, this.panel, this.panelButton]) node.remove();
  }
}
