// Screen shares, shown large: the latest share by default, the others one click away. While
// anyone presents, the stage puts the camera tiles in a strip beside the share (onChange).
import { $, el } from "/static/dom.js";
import { t } from "/static/i18n.js";

export class Screens {
  /** @param onChange (presenting) is called whenever the set of shares changes. */
  constructor(onChange) {
    this.shares = new Map();  // key (the track id; "self" for your own) -> {participant, name, stream, self}
    this.selected = null;
    this.onChange = onChange;
  }

  get presenting() { return this.shares.size > 0; }

  /** A new share is shown at once. */
  add(key, { participant, name, stream = null, self = false }) {
    this.shares.set(key, { key, participant, name, stream, self });
    this.selected = key;
    this.#render();
  }

  remove(key) {
    if (!this.shares.delete(key)) return;
    if (this.selected === key) this.selected = [...this.shares.keys()].at(-1) ?? null;
    this.#render();
  }

  removeParticipant(id) {
    for (const [key, share] of this.shares) if (share.participant === id) this.remove(key);
  }

  rename(id, name) {
    let changed = false;
    for (const share of this.shares.values()) {
      if (share.participant === id && share.name !== name) { share.name = name; changed = true; }
    }
    if (changed) this.#render();
  }

  clear() {
    this.shares.clear();
    this.selected = null;
    this.#render();
  }

  select(key) {
    if (!this.shares.has(key)) return;
    this.selected = key;
    this.#render();
  }

  #render() {
    const share = this.shares.get(this.selected);
    const video = $("#screen-video");
    $("#screens").hidden = !share;
    if (!share) {
      video.srcObject = null;
      this.onChange(false);
      return;
    }
    const title = (s) => (s.self ? t("screens.yours") : t("screens.named", { name: s.name }));
    const tabs = $("#screen-tabs");
    tabs.hidden = this.shares.size < 2;
    tabs.replaceChildren(...[...this.shares.values()].map((s) => el("button", {
      type: "button", className: "screen-tab", "aria-pressed": String(s.key === share.key),
      onclick: () => this.select(s.key),
    }, title(s))));
    // Your own screen is not played back to you: a picture of it inside itself helps nobody.
    $("#screen-self").hidden = !share.self;
    video.hidden = share.self;
    video.setAttribute("aria-label", title(share));
    const stream = share.self ? null : share.stream;
    if (video.srcObject !== stream) {
      video.srcObject = stream;
      if (stream) video.play().catch(() => {});
    }
    $("#screen-label").textContent = share.self ? "" : t("screens.presenting_named", { name: share.name });
    $("#screen-label").hidden = share.self;
    this.onChange(true);
  }
}
