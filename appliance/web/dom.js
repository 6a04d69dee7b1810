// Small DOM helpers for the meeting page's modules. Text always goes in as text nodes: nothing
// here parses HTML.
const SVG = "http://www.w3.org/2000/svg";

export const $ = (selector, root = document) => root.querySelector(selector);

/**
 * An element: el("button", {type: "button", className: "x", "aria-label": "…", onclick}, child, …).
 * Keys with a dash and `role` are attributes, the others properties; null, undefined and false are skipped.
 * String children become text nodes.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.includes("-") || key === "role") node.setAttribute(key, value === true ? "" : String(value));
    else node[key] = value;
  }
  node.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

/** One of the page's icons (<symbol id="i-NAME">); with a label it is an image, else decoration. */
export function icon(name, label = "") {
  const svg = document.createElementNS(SVG, "svg");
  if (label) {
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
  } else {
    svg.setAttribute("aria-hidden", "true");
  }
  const use = document.createElementNS(SVG, "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

export function initials(name) {
  const words = name.trim().split(/\s+/).filter(Boolean);
  return ((words[0]?.[0] ?? "?") + (words.length > 1 ? words.at(-1)[0] : "")).toUpperCase();
}

/** A menu of actions (role=menu) that opens beside the button that asked for it. */
export class PopupMenu {
  constructor(element) {
    this.element = element;
    this.button = null;
    element.addEventListener("keydown", (event) => this.#key(event));
    document.addEventListener("pointerdown", (event) => {
      if (this.button && !element.contains(event.target) && !this.button.contains(event.target)) this.close();
    });
  }

  get openFor() { return this.button; }

  /**
   * Open under (or above) `button`, with `items`: [{label, action, danger?}] or, for a row of
   * symbols, [{label, text, action}] with {row: true}.
   */
  open(button, items, { label, row = false, above = false } = {}) {
    this.close();
    this.button = button;
    this.element.setAttribute("aria-label", label ?? button.getAttribute("aria-label") ?? "");
    this.element.classList.toggle("row", row);
    this.element.replaceChildren(...items.map((item) => el("button", {
      type: "button", role: "menuitem", className: item.danger ? "danger" : "",
      "aria-label": item.text ? item.label : null, title: item.text ? item.label : null,
      onclick: () => { this.close({ focus: true }); item.action(); },
    }, item.text ?? item.label)));
    this.element.hidden = false;
    button.setAttribute("aria-expanded", "true");
    const anchor = button.getBoundingClientRect();
    const menu = this.element.getBoundingClientRect();
    const fitsBelow = anchor.bottom + 6 + menu.height < window.innerHeight;
    const top = above || !fitsBelow ? anchor.top - 6 - menu.height : anchor.bottom + 6;
    const left = row ? anchor.left + anchor.width / 2 - menu.width / 2 : anchor.right - menu.width;
    this.element.style.top = `${Math.max(8, top)}px`;
    this.element.style.left = `${Math.min(window.innerWidth - menu.width - 8, Math.max(8, left))}px`;
    this.element.querySelector("button")?.focus();
  }

  close({ focus = false } = {}) {
    if (!this.button) return;
    const button = this.button;
    this.button = null;
    this.element.hidden = true;
    button.setAttribute("aria-expanded", "false");
    if (focus && button.isConnected) button.focus();
  }

  #key(event) {
    const items = [...this.element.querySelectorAll("button")];
    const at = items.indexOf(document.activeElement);
    const step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1 }[event.key];
    if (step) {
      event.preventDefault();
      items[(at + step + items.length) % items.length]?.focus();
    } else if (event.key === "Escape" || event.key === "Tab") {
      if (event.key === "Escape") event.preventDefault();
      this.close({ focus: event.key === "Escape" });
    }
  }
}
