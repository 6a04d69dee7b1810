// The meeting's chat panel: messages to everyone or privately to one person, the history a late
// joiner receives with `joined`, and files shared through the REST API (they come back as chat
// messages with `file`). Chat text is plain text: it only ever becomes text nodes, and only the
// http(s) addresses in it become links.
import { call } from "/static/api.js";
import { $, el, icon } from "/static/dom.js";
import { byteSize, clockTime, errorText, t, tn } from "/static/i18n.js";

export const MAX_CHAT = 4000;  // appliance/controls.py MAX_CHAT
const ADDRESS = /\bhttps?:\/\/[^\s<>"]+/gi;
const TRAILING = /[.,;:!?)\]}'"]+$/;  // "see https://example.org." ends a sentence, not the address
const LINK_MARGIN_MS = 30_000;        // ask for a new signed link this long before the old one expires

/** Text as nodes: the http(s) addresses in it as links that open in a new tab, the rest as text. */
export function linkify(text) {
  const nodes = [];
  let at = 0;
  for (const match of text.matchAll(ADDRESS)) {
    const address = match[0].replace(TRAILING, "");
    let url = null;
    try { url = new URL(address); } catch { continue; }
    if (url.protocol !== "http:" && url.protocol !== "https:") continue;
    nodes.push(text.slice(at, match.index),
               el("a", { href: url.href, target: "_blank", rel: "noopener noreferrer" }, address));
    at = match.index + address.length;
  }
  nodes.push(text.slice(at));
  return nodes.filter((node) => node !== "");
}

export class Chat {
  /**
   * @param {object} hooks  send(text, to?) → the server's reply; me() → your participant;
   *   meeting() → the meeting's id; name(id) → a participant's name, if they are still here.
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.ids = new Set();
    this.unread = 0;
    this.isOpen = false;
    this.recipient = "";
    const form = $("#chat-form");
    const box = $("#chat-text");
    box.maxLength = MAX_CHAT;
    form.addEventListener("submit", (event) => { event.preventDefault(); this.#send(); });
    box.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    box.addEventListener("input", () => this.#fit());
    $("#chat-to").addEventListener("change", (event) => { this.recipient = event.target.value; });
    $("#chat-attach").addEventListener("click", () => $("#chat-file").click());
    $("#chat-file").addEventListener("change", (event) => {
      const [file] = event.target.files;
      event.target.value = "";
      if (file) this.#upload(file);
    });
  }

  /** A new meeting: its history, nothing unread. */
  reset(history) {
    this.ids.clear();
    $("#chat-log").replaceChildren();
    $("#chat-empty").hidden = false;
    $("#chat-status").textContent = "";
    this.unread = 0;
    this.#badge();
    this.merge(history);
  }

  /** Messages seen already are skipped: after a reconnect the history repeats some. */
  merge(history) {
    for (const message of history) this.add(message, { quiet: true });
  }

  add(message, { quiet = false } = {}) {
    if (this.ids.has(message.id)) return;
    this.ids.add(message.id);
    const log = $("#chat-log");
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
    const later = [...log.children].find((item) => item.dataset.at > message.at) ?? null;
    log.insertBefore(this.#render(message), later);
    $("#chat-empty").hidden = true;
    const mine = message.from === this.hooks.me().id;
    if (atBottom || mine) log.scrollTop = log.scrollHeight;
    if (!quiet && !mine && !this.isOpen) {
      this.unread += 1;
      this.#badge();
    }
  }

  /** The people one can write to privately (everyone but you). */
  setPeople(others) {
    const select = $("#chat-to");
    const gone = this.recipient && !others.some((p) => p.id === this.recipient);
    if (gone) {
      this.#status(t("chat.recipient_left"));
      this.recipient = "";
    }
    const sorted = [...others].sort((a, b) => a.name.localeCompare(b.name));
    select.replaceChildren(new Option(t("chat.everyone"), ""), ...sorted.map((p) => new Option(p.name, p.id)));
    select.value = this.recipient;
  }

  setOpen(open) {
    this.isOpen = open;
    if (!open) return;
    this.unread = 0;
    this.#badge();
    const log = $("#chat-log");
    log.scrollTop = log.scrollHeight;
    $("#chat-text").focus();
  }

  #render(message) {
    const mine = message.from === this.hooks.me().id;
    let privately = null;
    if (message.private) {
      const to = this.hooks.name(message.to) ?? t("chat.someone_who_left");
      privately = mine ? t("chat.privately_to", { name: to }) : t("chat.privately_to_you");
    }
    const meta = el("div", { className: "chat-meta" },
      el("span", { className: "chat-from" }, mine ? t("chat.you") : message.from_name),
      privately && el("span", { className: "chat-private" }, privately),
      el("time", { dateTime: message.at }, clockTime(new Date(message.at))));
    const body = message.file ? this.#file(message.file)
      : el("p", { className: "chat-text" }, ...linkify(message.text));
    return el("li", {
      className: ["chat-message", mine && "mine", message.private && "private"].filter(Boolean).join(" "),
      "data-at": message.at,
    }, meta, body);
  }

  // A shared file: a link that fetches a signed, expiring download address when it is followed.
  #file(file) {
    const link = el("a", { className: "chat-file", href: "#", download: file.name,
                           "aria-label": t("chat.download", { name: file.name }) },
      icon("file"),
      el("span", { className: "chat-file-text" },
        el("span", { className: "chat-file-name" }, file.name),
        el("span", { className: "chat-file-size" }, byteSize(file.size))),
      icon("download"));
    link.addEventListener("click", (event) => this.#download(event, link, file));
    return link;
  }

  async #download(event, link, file) {
    if (Date.now() < Number(link.dataset.expires ?? 0)) return;  // a fresh signed link: the browser follows it
    event.preventDefault();
    const path = `/api/v1/meetings/${encodeURIComponent(this.hooks.meeting())}/files/${encodeURIComponent(file.id)}`;
    try {
      const { url, expires_in: seconds } = await call("GET", path);
      link.href = url;
      link.dataset.expires = String(Date.now() + seconds * 1000 - LINK_MARGIN_MS);
      link.click();
    } catch (error) {
      this.#status(t("chat.cannot_download", { name: file.name, reason: errorText(error) }));
    }
  }

  async #send() {
    const box = $("#chat-text");
    const text = box.value;
    if (!text.trim()) return;
    if (text.length > MAX_CHAT) {
      this.#status(t("chat.too_long", { n: MAX_CHAT }));
      return;
    }
    const button = $("#chat-send");
    button.disabled = true;
    try {
      const reply = await this.hooks.send(text, this.recipient || undefined);
      if (reply?.message) this.add(reply.message);
      box.value = "";
      this.#fit();
      this.#status("");
    } catch (error) {
      this.#status(t("chat.not_sent", { reason: errorText(error) }));
    } finally {
      button.disabled = false;
      box.focus();
    }
  }

  // Files go to everyone, whoever the messages are addressed to.
  async #upload(file) {
    const meeting = encodeURIComponent(this.hooks.meeting());
    this.#status(t("chat.sharing", { name: file.name }));
    try {
      await call("POST", `/api/v1/meetings/${meeting}/files?name=${encodeURIComponent(file.name)}`, file);
      this.#status("");
    } catch (error) {
      this.#status(t("chat.not_shared", { name: file.name, reason: errorText(error) }));
    }
  }

  // The message box grows with its text, up to a few lines.
  #fit() {
    const box = $("#chat-text");
    box.style.height = "auto";
    box.style.height = `${Math.min(box.scrollHeight, 120)}px`;
    const left = MAX_CHAT - box.value.length;
    const counting = $("#chat-status").dataset.counting === "true";
    if (left < 200) this.#status(tn("chat.characters_left", left), { counting: true });
    else if (counting) this.#status("");
  }

  #status(text, { counting = false } = {}) {
    $("#chat-status").textContent = text;
    $("#chat-status").dataset.counting = String(counting);
  }

  #badge() {
    const badge = $("#chat-badge");
    badge.textContent = this.unread > 99 ? "99+" : String(this.unread);
    badge.hidden = this.unread === 0;
    $("#chat-button").title = this.unread ? tn("chat.unread", this.unread) : t("chat.with_everyone");
  }
}
