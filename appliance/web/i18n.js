// The web client's languages: message catalogues (locales/*.js), the language chosen (the
// browser's, until someone picks one: remembered in localStorage), and the page translated.
//
// In HTML, an element's text comes from `data-i18n="key"`; its attributes from
// `data-i18n-placeholder`, `data-i18n-aria-label` and `data-i18n-title`. In JavaScript, `t(key,
// {name: ...})` fills `{name}` in the message. A key missing from a catalogue falls back to English.
// Errors from the server are translated by their stable code (`error.<code>`), else shown as sent.
import { el } from "/static/dom.js";
import en from "/static/locales/en.js";
import zhCN from "/static/locales/zh-CN.js";

const CATALOGUES = { en, "zh-CN": zhCN };
const LANGUAGES = [["en", "English"], ["zh-CN", "简体中文"]];
// data-i18n-* attributes (as dataset names) and the attribute each one fills.
const ATTRIBUTES = { i18nPlaceholder: "placeholder", i18nAriaLabel: "aria-label", i18nTitle: "title" };
const KEY = "confmeet.language";

function fromBrowser() {
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const lower = tag.toLowerCase();
    if (lower.startsWith("zh")) return "zh-CN";  // Chinese of any region: the catalogue there is
    if (lower.startsWith("en")) return "en";
  }
  return "en";
}

let current = (() => {
  try { const kept = localStorage.getItem(KEY); if (CATALOGUES[kept]) return kept; } catch { /* no storage */ }
  return fromBrowser();
})();

/** The page's language: a tag of the catalogues ("en", "zh-CN"). */
export const language = () => current;

export function t(key, params = {}) {
  const message = CATALOGUES[current][key] ?? en[key] ?? key;
  return message.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
}

/** A message about a count: `key.one`, `key.other` (…) by the language's plural rules, with
 * `{n}` the count. */
export function tn(key, n, params = {}) {
  return t(`${key}.${new Intl.PluralRules(current).select(n)}`, { n, ...params });
}

/** 1st, 2nd, … in English; 第1, 第2, … in Chinese (`ordinal.*` by the ordinal rules). */
export function ordinal(n) {
  return t(`ordinal.${new Intl.PluralRules(current, { type: "ordinal" }).select(n)}`, { n });
}

/** A number of bytes as people of the language read it (1.5 MB, 1.5 兆字节): decimal units. */
export function byteSize(bytes) {
  const units = [["gigabyte", 1e9], ["megabyte", 1e6], ["kilobyte", 1e3]];
  const [unit, scale] = units.find(([, s]) => bytes >= s) ?? ["byte", 1];
  return new Intl.NumberFormat(current, { style: "unit", unit, maximumFractionDigits: 1 }).format(bytes / scale);
}

/** A length of time as a clock reads it: 4:05, 1:02:03. */
export function duration(seconds) {
  const s = Math.round(seconds);
  const hms = [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60];
  return (hms[0] ? `${hms[0]}:${String(hms[1]).padStart(2, "0")}` : String(hms[1])) + `:${String(hms[2]).padStart(2, "0")}`;
}

/** A time of day (hours and minutes) and a date with its time, as people of the language write them. */
export const clockTime = (date) => date.toLocaleTimeString(current, { hour: "2-digit", minute: "2-digit" });
export const dateTime = (date) => date.toLocaleString(current, { dateStyle: "medium", timeStyle: "short" });

// Chinese named by its script (简体中文, 繁体中文), as people choose it; other tags by their language.
const SCRIPTS = { "zh-CN": "zh-Hans", "zh-TW": "zh-Hant" };

/** A language tag's name in the page's language ("German", "德语"). */
export function languageName(tag) {
  try { return new Intl.DisplayNames([current], { type: "language" }).of(SCRIPTS[tag] ?? tag); } catch { return tag; }
}

/** An ApiError in the user's language: by its code when the catalogue has it. */
export function errorText(error) {
  const key = error?.code ? `error.${error.code}` : "";
  return key && (CATALOGUES[current][key] ?? en[key]) ? t(key) : error?.message || t("error.unknown");
}

export function translatePage(root = document) {
  document.documentElement.lang = current;
  for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll("[data-i18n-placeholder], [data-i18n-aria-label], [data-i18n-title]")) {
    for (const [data, attribute] of Object.entries(ATTRIBUTES)) {
      if (node.dataset[data]) node.setAttribute(attribute, t(node.dataset[data]));
    }
  }
}

/** Choose the language (remembered), translate the page, and tell the page's code
 * (a "languagechange" event on window) to redraw what it wrote itself. */
export function setLanguage(tag) {
  if (!CATALOGUES[tag]) return;
  current = tag;
  try { localStorage.setItem(KEY, tag); } catch { /* private mode: for this page only */ }
  translatePage();
  window.dispatchEvent(new Event("languagechange"));
}

/** A <select> of the languages, set to the current one. */
export function languagePicker() {
  const select = el("select", { className: "language", "aria-label": "Language / 语言" },
                    ...LANGUAGES.map(([tag, name]) => el("option", { value: tag, lang: tag }, name)));
  select.value = current;
  select.addEventListener("change", () => setLanguage(select.value));
  return select;
}
