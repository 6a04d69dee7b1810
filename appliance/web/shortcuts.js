// Keyboard shortcuts in the meeting, and the help dialog that lists them.
//
// Single keys, as people expect of a web app: M the microphone, V the camera, H the hand, C the
// chat, ? this list. Each acts by clicking its button in the control bar, so it does exactly what
// the button does, and nothing while the button is disabled or hidden. They are ignored while
// someone types (in an input, a textarea, a select, anything editable), while Ctrl, Alt or ⌘ is
// held, while the help dialog is open, and outside the meeting. Single-key shortcuts get in the
// way of speech input and screen readers' own keys, so they can be turned off in the dialog
// (WCAG 2.1.4; remembered); Ctrl+/ (⌘+/) opens the dialog either way.
import { $, el, icon } from "/static/dom.js";
import { t } from "/static/i18n.js";

const SHORTCUTS = [
  { key: "m", button: "#mic", text: "keys.microphone" },
  { key: "v", button: "#cam", text: "keys.camera" },
  { key: "h", button: "#hand", text: "keys.hand" },
  { key: "c", button: "#chat-button", text: "keys.chat",
    then: () => { if (!$("#chat-panel").hidden) $("#chat-text").focus(); } },  // opened: ready to type
];
const SINGLE_KEYS_OFF = "confmeet.singleKeysOff";
const MAC = /Mac|iPhone|iPad/.test(navigator.platform);

function typing(target) {
  return target instanceof Element
    && (target.closest("input, textarea, select, [contenteditable]:not([contenteditable='false'])") !== null);
}

/** The letter a key stands for: its character on a Latin layout, else the key's place (KeyM). */
function letter(event) {
  if (/^[a-z]$/i.test(event.key)) return event.key.toLowerCase();
  return /^Key[A-Z]$/.test(event.code) ? event.code.slice(3).toLowerCase() : "";
}

export class Shortcuts {
  /** `active()`: whether the meeting's stage is up (shortcuts do nothing before and after). */
  constructor({ active }) {
    this.active = active;
    try { this.singleKeys = localStorage.getItem(SINGLE_KEYS_OFF) !== "1"; } catch { this.singleKeys = true; }
    this.dialog = this.#build();
    document.body.append(this.dialog);
    this.#render();
    window.addEventListener("languagechange", () => this.#render());
    document.addEventListener("keydown", (event) => this.#key(event));
  }

  /** Open the help dialog (modal: focus stays in it; Escape closes it and focus goes back). */
  help() {
    if (this.dialog.open) return;
    this.returnFocus = document.activeElement;
    this.dialog.showModal();
  }

  #key(event) {
    if (event.defaultPrevented || event.isComposing || this.dialog.open || !this.active()) return;
    const command = event.ctrlKey || event.metaKey;
    if (command && !event.altKey && (event.key === "/" || event.code === "Slash")) {
      event.preventDefault();
      this.help();
      return;
    }
    if (!this.singleKeys || command || event.altKey || event.repeat || typing(event.target)) return;
    if (event.key === "?") {
      event.preventDefault();
      this.help();
      return;
    }
    const shortcut = SHORTCUTS.find((s) => s.key === letter(event));
    const button = shortcut && $(shortcut.button);
    if (!button || button.disabled || button.hidden) return;
    event.preventDefault();
    button.click();
    shortcut.then?.();
  }

  #build() {
    this.title = el("h2", { id: "shortcuts-title" });
    this.closeButton = el("button", { type: "button", className: "icon-button", autofocus: true,
                                      onclick: () => this.dialog.close() }, icon("close"));
    this.list = el("dl", { className: "shortcut-list" });
    this.toggle = el("input", { type: "checkbox", checked: this.singleKeys, onchange: () => {
      this.singleKeys = this.toggle.checked;
      try { localStorage.setItem(SINGLE_KEYS_OFF, this.singleKeys ? "" : "1"); } catch { /* this page only */ }
      this.#render();
    } });
    this.toggleText = el("span");
    this.note = el("p", { className: "shortcut-note" });
    const dialog = el("dialog", { id: "shortcuts", className: "shortcuts-dialog",
                                  "aria-labelledby": "shortcuts-title" },
                      el("header", { className: "panel-head" }, this.title, this.closeButton),
                      this.list, el("label", { className: "check shortcut-toggle" }, this.toggle, this.toggleText),
                      this.note);
    dialog.addEventListener("close", () => {
      if (this.returnFocus?.isConnected) this.returnFocus.focus();
      this.returnFocus = null;
    });
    return dialog;
  }

  // The dialog's text in the current language, and each button's aria-keyshortcuts.
  #render() {
    const on = this.singleKeys;
    this.title.textContent = t("keys.title");
    this.closeButton.setAttribute("aria-label", t("keys.close"));
    this.closeButton.title = t("keys.close");
    const rows = [...SHORTCUTS.map((s) => [on ? [s.key.toUpperCase()] : null, t(s.text)]),
                  [on ? ["?"] : null, t("keys.help")], [[MAC ? "⌘" : "Ctrl", "/"], t("keys.help")]];
    this.list.replaceChildren(...rows.filter(([keys]) => keys).map(([keys, text]) => el("div", {},
      el("dt", {}, ...keys.flatMap((key, i) => [i ? " + " : "", el("kbd", {}, key)]).filter(Boolean)),
      el("dd", {}, text))));
    this.toggleText.textContent = t("keys.single_keys");
    this.note.textContent = t("keys.not_while_typing");
    for (const s of SHORTCUTS) {
      const button = $(s.button);
      if (on) button.setAttribute("aria-keyshortcuts", s.key.toUpperCase());
      else button.removeAttribute("aria-keyshortcuts");
    }
  }
}
