// The meeting's shared whiteboard (docs/meetings.md, "Whiteboard"): a Yjs document that everyone
// in the meeting edits at once, shown as the main stage to whoever opens it. The server checks,
// keeps and relays the changes (appliance/signaling/whiteboard.py, docs/protocol.md).
//
// The document: a root array "pages" of page ids (the first page, "main", is always there and not
// listed), and for each page a root array "page:<id>" of items, each a map {id, kind, colour,
// width, points, text}: kind is pen, rect, ellipse, line, arrow or text; points are x, y pairs on
// a board WIDTH x HEIGHT units (a pen's a Y.Array, growing as it draws; a shape's its two corners;
// a text's its top left). Root types, because two people who draw on an empty page at once must
// not each make the page. Items from others are checked before they are drawn.
import * as Y from "/static/vendor/yjs/yjs.mjs";
import { $, el } from "/static/dom.js";
import { errorText, t } from "/static/i18n.js";

export const WIDTH = 1600;
export const HEIGHT = 900;
const MAX_UPDATE = 128 * 1024;  // appliance/signaling/whiteboard.py MAX_UPDATE
const FLUSH_MS = 100;           // changes go out at most this often (the server's rate limit)
const MAIN = "main";
const MODERATORS = ["host", "moderator"];
const LOCAL = "local";           // the origin of this page's own changes: the only ones undo sees
const REMOTE = "remote";
const KINDS = new Set(["pen", "rect", "ellipse", "line", "arrow", "text"]);
const TOOLS = ["pen", "rect", "ellipse", "line", "arrow", "text", "eraser"];
const COLOURS = [["#111827", "black"], ["#dc2626", "red"], ["#2563eb", "blue"], ["#16a34a", "green"],
                 ["#f59e0b", "orange"], ["#7c3aed", "purple"]];
const WIDTHS = [[2, "thin"], [5, "medium"], [10, "thick"]];
const ERASER = 12;       // the eraser's reach, in board units
const MAX_TEXT = 500;
const MAX_POINTS = 20_000;
const PDF_PAGE = [960, 540];  // points: a 16:9 slide (13.33 x 7.5 in)

// Icons, drawn with lines (24 x 24): [element, attributes] each.
const GLYPHS = {
  board: [["rect", { x: 3, y: 4, width: 18, height: 12, rx: 1.5 }], ["path", { d: "M8 20l4-4 4 4M7 8h6M7 11h9" }]],
  pen: [["path", { d: "M4 20l1-4L16 5l3 3L8 19zM14 7l3 3" }]],
  rect: [["rect", { x: 4, y: 6, width: 16, height: 12, rx: 1 }]],
  ellipse: [["ellipse", { cx: 12, cy: 12, rx: 8.5, ry: 6 }]],
  line: [["path", { d: "M5 19L19 5" }]],
  arrow: [["path", { d: "M5 19L19 5M11 5h8v8" }]],
  text: [["path", { d: "M5 6V4h14v2M12 4v16M9 20h6" }]],
  eraser: [["path", { d: "M8 20h12M4.5 14.5l9-9a2 2 0 0 1 2.8 0l2.2 2.2a2 2 0 0 1 0 2.8L11 18H8z" }]],
  undo: [["path", { d: "M9 14L4 9l5-5M4 9h10a6 6 0 0 1 0 12h-3" }]],
  redo: [["path", { d: "M15 14l5-5-5-5M20 9H10a6 6 0 0 0 0 12h3" }]],
  previous: [["path", { d: "M15 5l-7 7 7 7" }]],
  next: [["path", { d: "M9 5l7 7-7 7" }]],
  add: [["path", { d: "M12 5v14M5 12h14" }]],
  image: [["rect", { x: 3, y: 5, width: 18, height: 14, rx: 2 }], ["path", { d: "M3 16l5-5 4 4 3-3 6 6" }]],
  pdf: [["path", { d: "M6 3h8l5 5v13H6zM14 3v5h5M9 13h6M9 17h6" }]],
  lock: [["rect", { x: 5, y: 11, width: 14, height: 9, rx: 1.5 }], ["path", { d: "M8 11V8a4 4 0 0 1 8 0v3" }]],
  close: [["path", { d: "M6 6l12 12M18 6L6 18" }]],
};

function glyph(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.classList.add("glyph");
  for (const [tag, attributes] of GLYPHS[name]) {
    const part = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attributes)) part.setAttribute(key, String(value));
    svg.append(part);
  }
  return svg;
}

export function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

export function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function newId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
}

const textSize = (width) => 16 + width * 3;

/** An item as it may be drawn: checked and plain, or null (someone else's item is not trusted). */
export function drawable(item) {
  if (!(item instanceof Y.Map)) return null;
  const kind = item.get("kind");
  if (!KINDS.has(kind)) return null;
  const raw = item.get("points");
  const points = raw instanceof Y.Array ? raw.toArray() : raw;
  const need = kind === "pen" || kind === "text" ? 2 : 4;
  if (!Array.isArray(points) || points.length < need || points.length > MAX_POINTS
      || !points.every((n) => typeof n === "number" && Number.isFinite(n))) return null;
  const colour = item.get("colour");
  const width = Number(item.get("width"));
  const text = item.get("text");
  return {
    id: String(item.get("id") ?? ""), kind, points,
    colour: typeof colour === "string" && /^#[0-9a-f]{6}$/i.test(colour) ? colour : COLOURS[0][0],
    width: Number.isFinite(width) ? Math.min(40, Math.max(1, width)) : 4,
    text: typeof text === "string" ? text.slice(0, MAX_TEXT) : "",
  };
}

/** Draw one item on a context whose units are board units. */
function paint(ctx, item) {
  const p = item.points;
  ctx.strokeStyle = ctx.fillStyle = item.colour;
  ctx.lineWidth = item.width;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  if (item.kind === "pen") {
    ctx.moveTo(p[0], p[1]);
    if (p.length === 2) ctx.lineTo(p[0] + 0.01, p[1]);  // a dot
    for (let i = 2; i + 1 < p.length; i += 2) ctx.lineTo(p[i], p[i + 1]);
  } else if (item.kind === "rect") {
    ctx.rect(Math.min(p[0], p[2]), Math.min(p[1], p[3]), Math.abs(p[2] - p[0]), Math.abs(p[3] - p[1]));
  } else if (item.kind === "ellipse") {
    ctx.ellipse((p[0] + p[2]) / 2, (p[1] + p[3]) / 2, Math.abs(p[2] - p[0]) / 2, Math.abs(p[3] - p[1]) / 2, 0, 0, 2 * Math.PI);
  } else if (item.kind === "line" || item.kind === "arrow") {
    ctx.moveTo(p[0], p[1]);
    ctx.lineTo(p[2], p[3]);
    if (item.kind === "arrow") {
      const angle = Math.atan2(p[3] - p[1], p[2] - p[0]);
      const head = Math.max(14, item.width * 3.5);
      for (const side of [-1, 1]) {
        ctx.moveTo(p[2], p[3]);
        ctx.lineTo(p[2] - head * Math.cos(angle + side * Math.PI / 7), p[3] - head * Math.sin(angle + side * Math.PI / 7));
      }
    }
  } else if (item.kind === "text") {
    ctx.font = `${textSize(item.width)}px system-ui, "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", sans-serif`;
    ctx.textBaseline = "top";
    ctx.fillText(item.text, p[0], p[1]);
    return;
  }
  ctx.stroke();
}

/** The whole page drawn on `ctx` at `scale` pixels per board unit, on white. */
function paintPage(ctx, items, scale) {
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, WIDTH, HEIGHT);
  for (const item of items) paint(ctx, item);
}

function segmentDistance(x, y, x1, y1, x2, y2) {
  const dx = x2 - x1;
  const dy = y2 - y1;
  const length = dx * dx + dy * dy;
  const along = length ? Math.max(0, Math.min(1, ((x - x1) * dx + (y - y1) * dy) / length)) : 0;
  return Math.hypot(x - (x1 + along * dx), y - (y1 + along * dy));
}

/** Whether the eraser at (x, y) touches `item`; `measure(item)` is a text's width. */
function touches(item, x, y, measure) {
  const p = item.points;
  const reach = ERASER + item.width / 2;
  if (item.kind === "pen") {
    if (p.length === 2) return Math.hypot(x - p[0], y - p[1]) <= reach;
    for (let i = 2; i + 1 < p.length; i += 2) {
      if (segmentDistance(x, y, p[i - 2], p[i - 1], p[i], p[i + 1]) <= reach) return true;
    }
    return false;
  }
  if (item.kind === "line" || item.kind === "arrow") return segmentDistance(x, y, p[0], p[1], p[2], p[3]) <= reach;
  if (item.kind === "text") {
    return x >= p[0] - ERASER && x <= p[0] + measure(item) + ERASER && y >= p[1] - ERASER
      && y <= p[1] + textSize(item.width) + ERASER;
  }
  const [left, right] = [Math.min(p[0], p[2]), Math.max(p[0], p[2])];
  const [top, bottom] = [Math.min(p[1], p[3]), Math.max(p[1], p[3])];
  if (item.kind === "ellipse") {
    const rx = (right - left) / 2 + reach;
    const ry = (bottom - top) / 2 + reach;
    return ((x - (left + right) / 2) / rx) ** 2 + ((y - (top + bottom) / 2) / ry) ** 2 <= 1;
  }
  return x >= left - reach && x <= right + reach && y >= top - reach && y <= bottom + reach;
}

function canvasBlob(canvas, type, quality) {
  return new Promise((resolve, reject) => canvas.toBlob(
    (blob) => (blob ? resolve(blob) : reject(new Error("the canvas gave no picture"))), type, quality));
}

/** A PDF of one JPEG picture per page, each filling a PDF_PAGE-sized page: the smallest correct
 * file (PDF 1.4: catalog, page tree, and per page its page, content stream and image). */
export function pdfOf(jpegs, pixels) {
  const encoder = new TextEncoder();
  const parts = [];
  const offsets = [];
  let length = 0;
  const put = (chunk) => {
    const bytes = typeof chunk === "string" ? encoder.encode(chunk) : chunk;
    parts.push(bytes);
    length += bytes.length;
  };
  const object = (n, dictionary, stream = null) => {
    offsets[n] = length;
    put(`${n} 0 obj\n${dictionary}\n`);
    if (stream) { put("stream\n"); put(stream); put("\nendstream\n"); }
    put("endobj\n");
  };
  const [w, h] = PDF_PAGE;
  put("%PDF-1.4\n%\u00e2\u00e3\u00cf\u00d3\n");  // a comment of high bytes: the file is binary
  object(1, "<< /Type /Catalog /Pages 2 0 R >>");
  object(2, `<< /Type /Pages /Kids [${jpegs.map((_, i) => `${3 + 3 * i} 0 R`).join(" ")}] /Count ${jpegs.length} >>`);
  jpegs.forEach((jpeg, i) => {
    const page = 3 + 3 * i;
    object(page, `<< /Type /Page /Parent 2 0 R /MediaBox [0 0 ${w} ${h}] /Resources << /XObject << /Im0 ${page + 2} 0 R >> >> /Contents ${page + 1} 0 R >>`);
    const content = encoder.encode(`q ${w} 0 0 ${h} 0 0 cm /Im0 Do Q`);
    object(page + 1, `<< /Length ${content.length} >>`, content);
    object(page + 2, `<< /Type /XObject /Subtype /Image /Width ${pixels[0]} /Height ${pixels[1]} /ColorSpace /DeviceRGB `
                     + `/BitsPerComponent 8 /Filter /DCTDecode /Length ${jpeg.length} >>`, jpeg);
  });
  const xref = length;
  const count = 3 + 3 * jpegs.length;
  put(`xref\n0 ${count}\n0000000000 65535 f \n${offsets.slice(1).map((o) => `${String(o).padStart(10, "0")} 00000 n \n`).join("")}`);
  put(`trailer\n<< /Size ${count} /Root 1 0 R >>\nstartxref\n${xref}\n%%EOF\n`);
  return new Blob(parts, { type: "application/pdf" });
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export class Whiteboard {
  /**
   * @param signaling  the meeting's signaling session
   * @param joined     its `joined` reply (`whiteboard`: the board and whether it is locked)
   * @param notify     (text) shows a short message on the page
   */
  constructor(signaling, joined, { notify }) {
    this.signaling = signaling;
    this.me = joined.participant.id;
    this.role = joined.participant.role;
    this.title = joined.meeting.title;
    this.notify = notify;
    this.locked = Boolean(joined.whiteboard?.locked);
    this.isOpen = false;
    this.tool = "pen";
    this.colour = COLOURS[0][0];
    this.width = WIDTHS[1][0];
    this.page = MAIN;
    this.pending = [];        // this page's changes the server has not acknowledged, oldest first
    this.sending = false;
    this.timer = null;
    this.gesture = null;      // what the pointer is doing: {tool, ...}
    this.scheduled = false;
    this.renderScheduled = false;
    this.closed = false;

    this.#build();
    this.#useDoc(new Y.Doc(), joined.whiteboard?.update);
    this.stop = [
      signaling.on("whiteboard_update", (m) => this.#remote(m)),
      signaling.on("whiteboard_locked", (m) => this.#lockChanged(m)),
      signaling.on("resumed", (resumed) => this.#resumed(resumed)),
      signaling.on("participant_updated", ({ participant }) => {
        if (participant.id === this.me) { this.role = participant.role; this.#render(); }
      }),
    ];
    this.relabel = () => this.#render();
    window.addEventListener("languagechange", this.relabel);
    this.resizer = new ResizeObserver(() => this.#fit());
    this.resizer.observe(this.surface);
    this.#render();
  }

  get canDraw() { return !this.locked || MODERATORS.includes(this.role); }

  // ------------------------------------------------------------------------- the document
  #useDoc(doc, update) {
    this.doc?.destroy();
    this.undo?.destroy();
    this.doc = doc;
    if (update) Y.applyUpdate(doc, fromBase64(update), REMOTE);
    // One undo step per gesture: #change and the end of a gesture stop the capture, never a clock.
    this.undo = new Y.UndoManager([doc.getArray("pages")], { trackedOrigins: new Set([LOCAL]), captureTimeout: 3_600_000 });
    this.undo.on("stack-item-added", () => this.#render());
    this.undo.on("stack-item-popped", () => this.#render());
    doc.on("update", (change, origin) => {
      if (origin !== REMOTE) this.#queue(change);
      this.#renderSoon();  // the picture, and the labels (someone may have added a page)
    });
  }

  /** Page ids in order: the first page, then the others (each once, whatever concurrent adds did). */
  pages() {
    const listed = this.doc.getArray("pages").toArray().filter((id) => typeof id === "string" && /^[\w-]{1,40}$/.test(id));
    return [...new Set([MAIN, ...listed])];
  }

  #items(page) {
    const items = this.doc.getArray(`page:${page}`);
    this.undo.addToScope(items);
    return items;
  }

  /** The page's items that can be drawn, in drawing order. */
  drawables(page) {
    return this.#items(page).toArray().map(drawable).filter(Boolean);
  }

  /** For tests and diagnostics (window.confmeet.whiteboard): every page's items, and the state vector. */
  summary() {
    return {
      pages: this.pages().map((page) => this.drawables(page).map(({ id, kind, points, colour, width, text }) =>
        ({ id, kind, points, colour, width, text }))),
      state: Object.fromEntries(Y.decodeStateVector(Y.encodeStateVector(this.doc))),
      pending: this.pending.length,  // changes not yet acknowledged (the one on its way included)
      page: this.pages().indexOf(this.page),
    };
  }

  #change(fn) {
    this.undo.stopCapturing();
    this.doc.transact(fn, LOCAL);
  }

  #add(kind, points, fields = {}) {
    const item = new Y.Map();
    this.#change(() => {
      item.set("id", newId());
      item.set("kind", kind);
      item.set("colour", this.colour);
      item.set("width", this.width);
      for (const [key, value] of Object.entries(fields)) item.set(key, value);
      item.set("points", points);
      this.#items(this.page).push([item]);
    });
    return item;
  }

  // ------------------------------------------------------------------------- sync with the server
  #queue(change) {
    this.pending.push(change);
    this.#flushSoon();
  }

  #flushSoon(delay = FLUSH_MS) {
    if (this.timer === null && !this.sending) this.timer = setTimeout(() => { this.timer = null; this.#flush(); }, delay);
  }

  /** Send what is pending, merged into one update (as much as one update may hold), one at a time. */
  async #flush() {
    if (this.sending || !this.pending.length || this.closed) return;
    let count = 0;
    let size = 0;
    while (count < this.pending.length && (count === 0 || size + this.pending[count].length <= MAX_UPDATE)) {
      size += this.pending[count].length;
      count += 1;
    }
    const update = count === 1 ? this.pending[0] : Y.mergeUpdates(this.pending.slice(0, count));
    this.sending = true;
    let retry = FLUSH_MS;
    try {
      await this.signaling.request("whiteboard_update", { update: toBase64(update) });
      this.pending.splice(0, count);
    } catch (error) {
      if (error.code === "too_fast") {
        retry = 1000;
      } else if (["disconnected", "timeout"].includes(error.code)) {
        return;  // sent again once the connection is back (resumed)
      } else {
        this.pending = [];  // refused (the board is locked or full): the board goes back to the server's
        this.notify(error.code === "forbidden" ? t("whiteboard.locked_notice") : errorText(error));
        await this.#reload();
        return;
      }
    } finally {
      this.sending = false;
    }
    if (this.pending.length) this.#flushSoon(retry);
  }

  async #reload() {
    try {
      const state = await this.signaling.request("whiteboard_state");
      this.locked = Boolean(state.locked);
      this.#cancelGesture();
      this.#useDoc(new Y.Doc(), state.update);
      for (const change of this.pending) Y.applyUpdate(this.doc, change, REMOTE);  // ours, still on their way
      this.#render();
    } catch (error) {
      this.notify(errorText(error));
    }
  }

  #remote({ update }) {
    try {
      Y.applyUpdate(this.doc, fromBase64(update), REMOTE);
    } catch (error) {
      console.warn("a whiteboard update could not be applied; loading the board again", error);
      this.#reload();
      return;
    }
    if (!this.isOpen) this.badge.hidden = false;  // something new on the board
  }

  #resumed(joined) {
    if (!joined.whiteboard) return;
    this.locked = Boolean(joined.whiteboard.locked);
    Y.applyUpdate(this.doc, fromBase64(joined.whiteboard.update), REMOTE);  // what was missed meanwhile
    this.#render();
    this.#flushSoon(0);
  }

  #lockChanged({ locked, by }) {
    this.locked = locked;
    if (!MODERATORS.includes(this.role)) this.notify(t(locked ? "whiteboard.locked_by" : "whiteboard.unlocked_by", { name: by }));
    this.#cancelGesture();
    this.#render();
  }

  // ------------------------------------------------------------------------- the page's parts
  #build() {
    const tool = (name) => el("button", {
      type: "button", className: "wb-tool", "data-tool": name, "aria-pressed": "false",
      onclick: () => { this.tool = name; this.#render(); },
    }, glyph(name));
    this.tools = Object.fromEntries(TOOLS.map((name) => [name, tool(name)]));
    this.swatches = COLOURS.map(([colour, name]) => el("button", {
      type: "button", className: "wb-swatch", "data-colour": colour, "data-name": name, "aria-pressed": "false",
      onclick: () => { this.colour = colour; if (this.tool === "eraser") this.tool = "pen"; this.#render(); },
    }, el("span", { "aria-hidden": "true" })));
    this.swatches.forEach((swatch) => { swatch.firstChild.style.backgroundColor = swatch.dataset.colour; });
    this.widthPicker = el("select", { className: "wb-width", onchange: () => { this.width = Number(this.widthPicker.value); } },
                          ...WIDTHS.map(([width]) => el("option", { value: String(width) })));
    this.widthPicker.value = String(this.width);
    const action = (name, onclick, className = "wb-tool") => el("button", { type: "button", className, onclick }, glyph(name));
    this.undoButton = action("undo", () => this.#undo(false));
    this.redoButton = action("redo", () => this.#undo(true));
    this.previousButton = action("previous", () => this.#turn(-1));
    this.nextButton = action("next", () => this.#turn(1));
    this.addButton = action("add", () => this.#addPage());
    this.pageLabel = el("span", { className: "wb-page", role: "status" });
    this.pngButton = action("image", () => this.exportPng());
    this.pdfButton = action("pdf", () => this.exportPdf());
    this.lockButton = el("button", { type: "button", className: "wb-lock", "aria-pressed": "false", onclick: () => this.#toggleLock() },
                         glyph("lock"), el("span"));
    this.closeButton = action("close", () => this.setOpen(false));
    this.lockNotice = el("p", { className: "wb-notice", role: "status" });

    this.toolGroup = el("div", { className: "wb-group", role: "group" }, ...Object.values(this.tools));
    this.colourGroup = el("div", { className: "wb-group", role: "group" }, ...this.swatches, this.widthPicker);
    this.historyGroup = el("div", { className: "wb-group", role: "group" }, this.undoButton, this.redoButton);
    this.pageGroup = el("div", { className: "wb-group", role: "group" }, this.previousButton, this.pageLabel,
                        this.nextButton, this.addButton);
    this.exportGroup = el("div", { className: "wb-group", role: "group" }, this.pngButton, this.pdfButton);
    this.toolbar = el("div", { className: "wb-toolbar", role: "toolbar" }, this.toolGroup, this.colourGroup,
                      this.historyGroup, this.pageGroup, this.exportGroup, this.lockButton, this.closeButton);

    this.canvas = el("canvas", { className: "wb-canvas", role: "img", tabIndex: 0 });
    this.textBox = el("input", { className: "wb-text", type: "text", maxLength: MAX_TEXT, hidden: true });
    this.surface = el("div", { className: "wb-surface" }, this.canvas, this.textBox);
    this.section = el("section", { id: "whiteboard", className: "whiteboard", hidden: true },
                      this.toolbar, this.lockNotice, this.surface);
    $("#stage-main").prepend(this.section);

    this.badge = el("span", { className: "badge attention wb-badge", hidden: true, "aria-hidden": "true" });
    this.button = el("button", { id: "whiteboard-button", className: "control accent", type: "button", "aria-pressed": "false",
                                 onclick: () => this.setOpen(!this.isOpen) }, glyph("board"), this.badge);
    $("#share").after(this.button);

    this.canvas.addEventListener("pointerdown", (event) => this.#down(event));
    this.canvas.addEventListener("pointermove", (event) => this.#move(event));
    this.canvas.addEventListener("pointerup", (event) => this.#up(event));
    this.canvas.addEventListener("pointercancel", () => this.#cancelGesture());
    this.textBox.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.isComposing) { event.preventDefault(); this.#commitText(); }
      if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); this.#closeText(); }
    });
    this.textBox.addEventListener("blur", () => this.#commitText());
    this.section.addEventListener("keydown", (event) => this.#key(event));
  }

  setOpen(open) {
    this.isOpen = open;
    this.#cancelGesture();
    this.section.hidden = !open;
    $("#stage-main").classList.toggle("whiteboard-open", open);
    if (open) {
      this.badge.hidden = true;
      this.#fit();
      this.#flushSoon(0);
      this.canvas.focus();
    } else {
      this.button.focus();
    }
    this.#render();
  }

  // The canvas as large as the surface allows at the board's shape, sharp on the screen.
  #fit() {
    const box = this.surface.getBoundingClientRect();
    if (!box.width || !box.height) return;
    const width = Math.floor(Math.min(box.width, (box.height * WIDTH) / HEIGHT));
    const height = Math.floor((width * HEIGHT) / WIDTH);
    this.canvas.style.width = `${width}px`;
    this.canvas.style.height = `${height}px`;
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(width * ratio);
    this.canvas.height = Math.round(height * ratio);
    this.#schedule();
  }

  #renderSoon() {
    if (this.renderScheduled) return;
    this.renderScheduled = true;
    requestAnimationFrame(() => { this.renderScheduled = false; if (!this.closed) this.#render(); });
  }

  #schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => { this.scheduled = false; this.#draw(); });
  }

  #draw() {
    if (!this.isOpen || this.closed) return;
    const ctx = this.canvas.getContext("2d");
    const items = this.drawables(this.page);
    if (this.gesture?.preview) items.push(this.gesture.preview);
    paintPage(ctx, items, this.canvas.width / WIDTH);
  }

  /** Texts, states and labels, in the page's language. */
  #render() {
    const pages = this.pages();
    if (!pages.includes(this.page)) this.page = MAIN;
    const at = pages.indexOf(this.page);
    const label = (node, key, params) => {
      node.setAttribute("aria-label", t(key, params));
      node.title = t(key, params);
    };
    this.button.setAttribute("aria-pressed", String(this.isOpen));
    this.button.setAttribute("aria-label", t("whiteboard.title"));  // the same name either way: aria-pressed says which
    this.button.title = t(this.isOpen ? "whiteboard.hide" : "whiteboard.show");
    this.section.setAttribute("aria-label", t("whiteboard.title"));
    this.toolbar.setAttribute("aria-label", t("whiteboard.tools"));
    this.toolGroup.setAttribute("aria-label", t("whiteboard.drawing_tools"));
    this.colourGroup.setAttribute("aria-label", t("whiteboard.colours"));
    this.historyGroup.setAttribute("aria-label", t("whiteboard.history"));
    this.pageGroup.setAttribute("aria-label", t("whiteboard.pages"));
    this.exportGroup.setAttribute("aria-label", t("whiteboard.download"));
    for (const [name, button] of Object.entries(this.tools)) {
      label(button, `whiteboard.tool.${name}`);
      button.setAttribute("aria-pressed", String(this.tool === name));
      button.disabled = !this.canDraw;
    }
    this.swatches.forEach((swatch) => {
      label(swatch, `whiteboard.colour.${swatch.dataset.name}`);
      swatch.setAttribute("aria-pressed", String(this.colour === swatch.dataset.colour && this.tool !== "eraser"));
      swatch.disabled = !this.canDraw;
    });
    this.widthPicker.setAttribute("aria-label", t("whiteboard.width"));
    this.widthPicker.title = t("whiteboard.width");
    [...this.widthPicker.options].forEach((option, i) => { option.textContent = t(`whiteboard.width.${WIDTHS[i][1]}`); });
    this.widthPicker.disabled = !this.canDraw;
    label(this.undoButton, "whiteboard.undo");
    label(this.redoButton, "whiteboard.redo");
    this.undoButton.disabled = !this.canDraw || !this.undo.canUndo();
    this.redoButton.disabled = !this.canDraw || !this.undo.canRedo();
    label(this.previousButton, "whiteboard.previous_page");
    label(this.nextButton, "whiteboard.next_page");
    label(this.addButton, "whiteboard.add_page");
    this.previousButton.disabled = at <= 0;
    this.nextButton.disabled = at >= pages.length - 1;
    this.addButton.disabled = !this.canDraw;
    this.pageLabel.textContent = t("whiteboard.page_of", { page: at + 1, pages: pages.length });
    label(this.pngButton, "whiteboard.download_png");
    label(this.pdfButton, "whiteboard.download_pdf");
    const moderator = MODERATORS.includes(this.role);
    this.lockButton.hidden = !moderator;
    this.lockButton.setAttribute("aria-pressed", String(this.locked));
    this.lockButton.lastChild.textContent = t(this.locked ? "whiteboard.unlock" : "whiteboard.lock");
    this.lockButton.title = t(this.locked ? "whiteboard.unlock_title" : "whiteboard.lock_title");
    label(this.closeButton, "whiteboard.close");
    this.lockNotice.hidden = !this.locked;
    this.lockNotice.textContent = t(moderator ? "whiteboard.locked_moderator" : "whiteboard.locked_notice");
    this.canvas.setAttribute("aria-label", t("whiteboard.canvas", { page: at + 1, pages: pages.length }));
    this.canvas.dataset.tool = this.canDraw ? this.tool : "none";
    this.textBox.setAttribute("aria-label", t("whiteboard.text_label"));
    this.textBox.placeholder = t("whiteboard.text_placeholder");
    this.#schedule();
  }

  // ------------------------------------------------------------------------- drawing
  #point(event) {
    const box = this.canvas.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * WIDTH;
    const y = ((event.clientY - box.top) / box.height) * HEIGHT;
    return [Math.round(Math.min(WIDTH, Math.max(0, x))), Math.round(Math.min(HEIGHT, Math.max(0, y)))];
  }

  #down(event) {
    if (!this.canDraw || this.gesture || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    this.canvas.focus();
    const [x, y] = this.#point(event);
    if (this.tool === "text") {
      this.#openText(x, y);
      return;
    }
    try { this.canvas.setPointerCapture(event.pointerId); } catch { /* a pointer already gone: the stroke ends at its edge */ }
    this.gesture = { tool: this.tool, pointer: event.pointerId, start: [x, y], last: [x, y] };
    if (this.tool === "pen") {
      const points = new Y.Array();
      points.push([x, y]);
      this.gesture.points = this.#add("pen", points).get("points");
    } else if (this.tool === "eraser") {
      this.undo.stopCapturing();  // one undo step for all a stroke of the eraser takes away
      this.#erase(x, y);
    }
  }

  #move(event) {
    const gesture = this.gesture;
    if (!gesture || event.pointerId !== gesture.pointer) return;
    const moves = event.getCoalescedEvents?.().length ? event.getCoalescedEvents() : [event];
    for (const move of moves) {
      const [x, y] = this.#point(move);
      if (gesture.tool === "pen") {
        if (Math.hypot(x - gesture.last[0], y - gesture.last[1]) < 2) continue;
        this.doc.transact(() => gesture.points.push([x, y]), LOCAL);
      } else if (gesture.tool === "eraser") {
        this.#erase(x, y);
      } else {
        gesture.preview = { kind: gesture.tool, points: [...gesture.start, x, y], colour: this.colour, width: this.width };
        this.#schedule();
      }
      gesture.last = [x, y];
    }
  }

  #up(event) {
    const gesture = this.gesture;
    if (!gesture || event.pointerId !== gesture.pointer) return;
    this.gesture = null;
    const [x, y] = this.#point(event);
    const [x0, y0] = gesture.start;
    if (!["pen", "eraser"].includes(gesture.tool) && Math.hypot(x - x0, y - y0) >= 3) {
      this.#add(gesture.tool, [x0, y0, x, y]);
    }
    this.undo.stopCapturing();
    this.#schedule();
  }

  #cancelGesture() {
    if (this.gesture) {
      this.gesture = null;
      this.undo.stopCapturing();
      this.#schedule();
    }
    this.#closeText();
  }

  #erase(x, y) {
    const items = this.#items(this.page);
    const ctx = this.canvas.getContext("2d");
    const measure = (item) => {
      ctx.font = `${textSize(item.width)}px system-ui, sans-serif`;
      return ctx.measureText(item.text).width;
    };
    const hit = [];
    items.toArray().forEach((item, index) => {
      const shape = drawable(item);
      if (shape && touches(shape, x, y, measure)) hit.push(index);
    });
    if (!hit.length) return;
    this.doc.transact(() => { for (const index of hit.reverse()) items.delete(index, 1); }, LOCAL);
  }

  #openText(x, y) {
    this.textAt = [x, y];
    const scale = this.canvas.getBoundingClientRect().width / WIDTH;
    this.textBox.style.left = `${this.canvas.offsetLeft + x * scale}px`;
    this.textBox.style.top = `${this.canvas.offsetTop + y * scale}px`;
    this.textBox.style.color = this.colour;
    this.textBox.style.fontSize = `${Math.max(12, textSize(this.width) * scale)}px`;
    this.textBox.value = "";
    this.textBox.hidden = false;
    this.textBox.focus();
  }

  #commitText() {
    if (this.textBox.hidden) return;
    const text = this.textBox.value.trim();
    const at = this.textAt;
    this.#closeText();
    if (text && at && this.canDraw) this.#add("text", at, { text: text.slice(0, MAX_TEXT) });
    this.canvas.focus();
  }

  #closeText() {
    if (this.textBox.hidden) return;
    this.textBox.hidden = true;
    this.textAt = null;
  }

  #undo(redo) {
    if (!this.canDraw) return;
    this.undo.stopCapturing();
    if (redo) this.undo.redo(); else this.undo.undo();
  }

  #key(event) {
    if (event.target === this.textBox) return;
    const command = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    if (command && key === "z") { event.preventDefault(); this.#undo(event.shiftKey); }
    else if (command && key === "y") { event.preventDefault(); this.#undo(true); }
    else if (event.key === "Escape" && !event.defaultPrevented) { event.preventDefault(); this.setOpen(false); }
  }

  // ------------------------------------------------------------------------- pages
  #turn(step) {
    const pages = this.pages();
    const at = Math.min(pages.length - 1, Math.max(0, pages.indexOf(this.page) + step));
    this.#cancelGesture();
    this.page = pages[at];
    this.#render();
  }

  #addPage() {
    const id = newId();
    this.#change(() => this.doc.getArray("pages").push([id]));
    this.#cancelGesture();
    this.page = id;
    this.#render();
  }

  // ------------------------------------------------------------------------- export
  /** A page drawn at the board's own size (WIDTH x HEIGHT pixels). */
  pageCanvas(page) {
    const canvas = el("canvas", { width: WIDTH, height: HEIGHT });
    paintPage(canvas.getContext("2d"), this.drawables(page), 1);
    return canvas;
  }

  #fileName(suffix) {
    const base = this.title.replace(/[^\p{L}\p{N}_-]+/gu, "-").replace(/^-+|-+$/g, "") || "whiteboard";
    return `${base}-${suffix}`;
  }

  async exportPng() {
    const pages = this.pages();
    const blob = await canvasBlob(this.pageCanvas(this.page), "image/png");
    download(blob, this.#fileName(`${t("whiteboard.file_page", { page: pages.indexOf(this.page) + 1 })}.png`));
  }

  async exportPdf() {
    const jpegs = [];
    for (const page of this.pages()) {
      const blob = await canvasBlob(this.pageCanvas(page), "image/jpeg", 0.92);
      jpegs.push(new Uint8Array(await blob.arrayBuffer()));
    }
    download(pdfOf(jpegs, [WIDTH, HEIGHT]), this.#fileName(`${t("whiteboard.file_board")}.pdf`));
  }

  // ------------------------------------------------------------------------- moderators
  async #toggleLock() {
    this.lockButton.disabled = true;
    try {
      const reply = await this.signaling.request("whiteboard_lock", { locked: !this.locked });
      this.locked = reply.locked;
      this.notify(t(this.locked ? "whiteboard.done_locked" : "whiteboard.done_unlocked"));
    } catch (error) {
      this.notify(errorText(error));
    } finally {
      this.lockButton.disabled = false;
      this.#render();
    }
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    for (const stop of this.stop) stop();
    window.removeEventListener("languagechange", this.relabel);
    this.resizer.disconnect();
    $("#stage-main").classList.remove("whiteboard-open");
    this.section.remove();
    this.button.remove();
    this.undo.destroy();
    this.doc.destroy();
  }
}
