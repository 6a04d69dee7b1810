// The control bar when it does not fit the window: its least used buttons move, in a fixed order,
// into a "More" popover at the end of the bar (and come back when there is room again). They stay
// the same buttons, with their labels, states and handlers; only where they sit changes.

import { el, icon } from "/static/dom.js";
import { t } from "/static/i18n.js";

// First to go first: settings, then the panels people open least.
const ORDER = ["#low-bandwidth", "#noise-button", "#captions-language", "#my-caption-language",
               "#transcript-button", "#breakouts-button", "#polls-button", "#whiteboard-button"];

export class Overflow {
  constructor(bar) {
    this.bar = bar;
    this.popover = el("div", { id: "more-popover", className: "more-popover", role: "group", hidden: true });
    this.button = el("button", { id: "more-button", className: "pill icon-only", type: "button", hidden: true,
                                 "aria-expanded": "false", "aria-controls": "more-popover",
                                 onclick: () => this.#open(this.popover.hidden) }, icon("more"));
    bar.querySelector(".meeting-status").append(this.button);
    bar.append(this.popover);
    this.homes = new Map();  // a moved button → the marker where it lives when there is room
    this.#label();
    window.addEventListener("languagechange", () => { this.#label(); this.fit(); });
    this.popover.addEventListener("click", (event) => { if (event.target.closest("button")) this.#open(false); });
    this.popover.addEventListener("keydown", (event) => {
      if (event.key === "Escape") { this.#open(false); this.button.focus(); }
    });
    document.addEventListener("pointerdown", (event) => {
      if (!this.popover.hidden && !this.popover.contains(event.target) && !this.button.contains(event.target)) this.#open(false);
    });
    // Refit when the bar's width changes and when a button comes, goes, is shown or hidden.
    let queued = false;
    this.refit = () => { if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; this.fit(); }); } };
    new ResizeObserver(this.refit).observe(bar);  // the window's width, and the bar's first showing
    this.watch = new MutationObserver(this.refit);
    this.#observe();
  }

  #observe() {
    this.watch.observe(this.bar, { childList: true, subtree: true, attributes: true, attributeFilter: ["hidden"] });
  }

  #label() {
    this.button.setAttribute("aria-label", t("controls.more"));
    this.button.title = t("controls.more");
    this.popover.setAttribute("aria-label", t("controls.more"));
  }

  /** Put every button back, then move them out one by one, in ORDER, until the bar fits. */
  fit() {
    this.watch.disconnect();
    for (const [node, home] of this.homes) { home.replaceWith(node); }
    this.homes.clear();
    for (const selector of ORDER) {
      if (!this.#crowded()) break;
      const node = this.bar.querySelector(selector);
      if (!node || node.hidden || this.popover.contains(node)) continue;
      const home = document.createComment(selector);
      node.replaceWith(home);
      this.homes.set(node, home);
      this.popover.append(node);
      this.button.hidden = false;  // it takes room too: shown before the next measure
    }
    this.button.hidden = this.homes.size === 0;
    if (this.button.hidden) this.#open(false);
    this.watch.takeRecords();
    this.#observe();
  }

  // Whether a part of the bar is cut off by the window or runs into another part.
  #crowded() {
    const width = document.documentElement.clientWidth;
    const parts = [...this.bar.querySelectorAll(":scope > .controls, :scope > .meeting-status, .meeting-info > .clock")]
      .filter((part) => part.getClientRects().length);
    const boxes = parts.map((part) => part.getBoundingClientRect());
    if (boxes.some((box) => box.left < 0 || box.right > width + 0.5)) return true;
    if (parts.some((part) => part.scrollWidth > part.clientWidth + 1)) return true;
    // Side by side in one row: each must end before the next begins.
    const row = boxes.filter((box) => Math.abs(box.top - boxes[0].top) < box.height).sort((a, b) => a.left - b.left);
    return row.some((box, i) => i > 0 && row[i - 1].right > box.left + 0.5);
  }

  #open(open) {
    this.popover.hidden = !open;
    this.button.setAttribute("aria-expanded", String(open));
    if (!open) return;
    const anchor = this.button.getBoundingClientRect();
    this.popover.style.bottom = `${window.innerHeight - anchor.top + 8}px`;
    this.popover.style.right = `${Math.max(8, document.documentElement.clientWidth - anchor.right)}px`;
    this.popover.querySelector("button, select")?.focus();
  }
}
