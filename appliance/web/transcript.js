// A meeting's transcript, in the meeting page (live, beside the captions) and on the home page's
// meeting list (after the meeting): every final caption with its time from the start of the
// captions, search (the server's: any case, width or Chinese script, so 预算 finds 預算), a time
// to click that jumps to that moment of the whole transcript, and downloads (WebVTT, SubRip, text).
// API: GET /api/v1/meetings/{id}/transcript[?format=vtt|srt|txt], GET .../transcript/search?q=
import { call, tokens } from "/static/api.js";
import { el } from "/static/dom.js";
import { t, tn } from "/static/i18n.js";

// The transcript's styles live in captions.css, which the meeting page loads; elsewhere, load it.
function styles() {
  if (!document.querySelector('link[href="/static/captions.css"]')) {
    document.head.append(el("link", { rel: "stylesheet", href: "/static/captions.css" }));
  }
}

export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60].map((n) => String(n).padStart(2, "0")).join(":");
}

/** "zh-CN" → "zh-Hans", "zh-TW" → "zh-Hant": the lang attribute that picks the glyphs. */
export function langOf(language) {
  if (/^zh(-(CN|SG|Hans))?$/.test(language ?? "")) return "zh-Hans";
  if (/^(zh-(TW|HK|MO|Hant)|yue)$/.test(language ?? "")) return "zh-Hant";
  return language || null;
}

export class TranscriptView {
  /** @param meeting the meeting's id; @param token () => Promise<string> the API access token;
   *  @param notify (text) says something to the user; @param idPrefix ids for the meeting page's tests. */
  constructor({ meeting, token, notify, idPrefix = "transcript" }) {
    styles();
    this.meeting = meeting;
    this.token = token;
    this.notify = notify;
    this.startedAt = null;
    this.segments = [];
    this.query = "";
    this.list = el("ol", { id: `${idPrefix}-list`, className: "transcript-list", "aria-label": t("captions.transcript") });
    this.search = el("input", { id: `${idPrefix}-search`, type: "search", className: "transcript-search",
                                placeholder: t("transcript.search_placeholder"), "aria-label": t("transcript.search_placeholder"),
                                autocomplete: "off" });
    this.matches = el("p", { id: `${idPrefix}-matches`, className: "transcript-matches", role: "status", hidden: true });
    const form = el("form", { role: "search", className: "transcript-find",
                              onsubmit: (event) => { event.preventDefault(); this.find(this.search.value); } },
                    this.search, el("button", { type: "submit", className: "ghost" }, t("transcript.search")));
    this.search.addEventListener("search", () => this.find(this.search.value));  // the field's clear button
    this.downloads = el("footer", { className: "panel-foot transcript-downloads" }, `${t("transcript.download")} `,
      ...["vtt", "srt", "txt"].map((format) => el("button", {
        type: "button", className: "ghost", "data-format": format, onclick: () => this.download(format),
      }, format.toUpperCase())));
    this.node = el("div", { className: "transcript-view" }, form, this.matches, this.list, this.downloads);
  }

  async #get(path) {
    return fetch(`/api/v1/meetings/${encodeURIComponent(this.meeting)}/transcript${path}`,
                 { headers: { Authorization: `Bearer ${await this.token()}` } });
  }

  /** The whole transcript so far; false when there is none (captions were never on). */
  async load() {
    const response = await this.#get("");
    if (!response.ok) {
      this.list.replaceChildren(el("li", { className: "muted" },
        t(response.status === 404 ? "transcript.none" : "transcript.unreadable")));
      return false;
    }
    const transcript = await response.json();
    this.startedAt = transcript.started_at;
    this.segments = transcript.segments;
    if (!this.query) this.#show(this.segments);
    return true;
  }

  /** A final caption said live (the meeting page): shown at once unless a search is on. */
  add(segment) {
    this.segments.push(segment);
    if (this.startedAt === null) this.startedAt = segment.start;
    if (!this.query) {
      this.list.append(this.#item(segment));
      this.list.lastElementChild.scrollIntoView({ block: "end" });
    }
  }

  async find(query) {
    this.query = query.trim();
    if (!this.query) {
      this.matches.hidden = true;
      this.#show(this.segments);
      return;
    }
    const response = await this.#get(`/search?q=${encodeURIComponent(this.query)}&limit=500`);
    if (!response.ok) {
      this.notify(t(response.status === 404 ? "transcript.none_to_search" : "transcript.search_failed"));
      return;
    }
    const { segments } = await response.json();
    if (this.startedAt === null) await this.load();
    this.matches.textContent = segments.length
      ? tn("transcript.found", segments.length, { query: this.query })
      : t("transcript.not_found", { query: this.query });
    this.matches.hidden = false;
    this.#show(segments);
  }

  /** Back to the whole transcript, at ``start`` (a caption's start, seconds since the epoch). */
  jump(start) {
    this.query = "";
    this.search.value = "";
    this.matches.hidden = true;
    this.#show(this.segments);
    const item = [...this.list.children].find((li) => Number(li.dataset.start) === start);
    if (!item) return;
    for (const current of this.list.querySelectorAll(".current")) current.classList.remove("current");
    item.classList.add("current");
    item.scrollIntoView({ block: "center" });
    item.querySelector(".transcript-time")?.focus();
  }

  #show(segments) {
    this.list.replaceChildren(...segments.map((segment) => this.#item(segment)));
  }

  #item(segment) {
    const at = clock(segment.start - (this.startedAt ?? segment.start));
    const time = el("button", { type: "button", className: "transcript-time", title: t("transcript.show_moment"),
                                "aria-label": `${at}, ${segment.name || t("captions.someone")}`, onclick: () => this.jump(segment.start) }, at);
    const text = segment.gap
      ? el("span", { className: "transcript-gap", title: t("transcript.gap_title") }, segment.text)
      : el("span", { className: "transcript-text" }, ...this.#marked(segment.text));
    return el("li", { "data-start": String(segment.start), lang: langOf(segment.language) },
              time, " ", el("strong", {}, this.#speaker(segment)), text);
  }

  #speaker(segment) {  // a line spoken in a breakout room says which
    const name = segment.name || t("captions.someone");
    return segment.room ? t("transcript.speaker_in_room", { name, room: segment.room }) : t("transcript.speaker", { name });
  }

  #marked(text) {  // the query marked where it appears as typed (any case)
    const at = this.query ? text.toLowerCase().indexOf(this.query.toLowerCase()) : -1;
    if (at < 0) return [text];
    return [text.slice(0, at), el("mark", {}, text.slice(at, at + this.query.length)), text.slice(at + this.query.length)];
  }

  async download(format) {
    const response = await this.#get(`?format=${format}`);
    if (!response.ok) {
      this.notify(t(response.status === 404 ? "transcript.none_yet" : "transcript.download_failed"));
      return;
    }
    const link = el("a", { href: URL.createObjectURL(await response.blob()), download: `transcript.${format}` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  }
}

/** The home page's "Transcript" button for a meeting of the list, and the panel it opens below `item`. */
export function transcriptButton(meeting, item) {
  const token = async () => {  // an API call first: it refreshes the access token when it expired
    await call("GET", `/api/v1/meetings/${encodeURIComponent(meeting.id)}`);
    return tokens()?.access_token;
  };
  const panel = el("li", { className: "transcript-home", hidden: true, "aria-label": t("home.transcript_of", { title: meeting.title }) });
  const button = el("button", { type: "button", className: "ghost", "aria-expanded": "false",
                                "aria-label": t("home.transcript_of", { title: meeting.title }) }, t("home.transcript"));
  let view = null;
  button.addEventListener("click", async () => {
    const open = panel.hidden;
    panel.hidden = !open;
    button.setAttribute("aria-expanded", String(open));
    if (!open) return;
    if (!panel.isConnected) item.after(panel);
    if (!view) {
      const status = el("p", { className: "muted", role: "status" });
      view = new TranscriptView({ meeting: meeting.id, token, idPrefix: `transcript-${meeting.id}`,
                                  notify: (text) => { status.textContent = text; } });
      panel.replaceChildren(el("h3", {}, t("home.transcript_of", { title: meeting.title })), status, view.node);
    }
    await view.load();
  });
  return button;
}
