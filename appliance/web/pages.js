// The tiles a page at a time on a phone (portrait or landscape): at most four on a page, turned
// with the page buttons under the grid or a sideways swipe. A tile off the page is not displayed,
// so views.js stops its camera (the SFU sends nothing of a camera that is not shown) until its
// page comes back. On a larger screen every tile shows and the page buttons stay hidden.
import { el } from "/static/dom.js";
import { t } from "/static/i18n.js";

export const PER_PAGE = 4;
export const PHONE = matchMedia("(max-width: 640px), (max-height: 480px)");  // meeting.css: phones
const SWIPE_PX = 50;  // sideways, and more sideways than up or down

export class TilePages {
  /** `grid`: the element holding the tiles; `changed()`: after tiles were shown or hidden. */
  constructor(grid, changed) {
    this.grid = grid;
    this.changed = changed;
    this.page = 0;
    this.previous = el("button", { type: "button", className: "icon-button", onclick: () => this.turn(-1) }, "‹");
    this.next = el("button", { type: "button", className: "icon-button", onclick: () => this.turn(1) }, "›");
    this.status = el("span", { className: "grid-page", "aria-live": "polite" });
    this.nav = el("nav", { className: "grid-pages", hidden: true }, this.previous, this.status, this.next);
    grid.after(this.nav);
    new MutationObserver(() => this.update()).observe(grid, { childList: true });
    PHONE.addEventListener("change", () => this.update());
    window.addEventListener("languagechange", () => this.update());
    let start = null;
    grid.addEventListener("touchstart", (event) => {
      start = event.touches.length === 1 ? { x: event.touches[0].clientX, y: event.touches[0].clientY } : null;
    }, { passive: true });
    grid.addEventListener("touchend", (event) => {
      const end = event.changedTouches[0];
      if (!start || !end) return;
      const dx = end.clientX - start.x, dy = end.clientY - start.y;
      start = null;
      if (Math.abs(dx) >= SWIPE_PX && Math.abs(dx) > 2 * Math.abs(dy)) this.turn(dx < 0 ? 1 : -1);
    });
  }

  get tiles() { return [...this.grid.children].filter((child) => child.classList.contains("tile")); }

  get count() { return PHONE.matches ? Math.max(1, Math.ceil(this.tiles.length / PER_PAGE)) : 1; }

  turn(step) {
    const page = Math.min(this.count - 1, Math.max(0, this.page + step));
    if (page === this.page) return;
    this.page = page;
    this.update();
  }

  update() {
    const count = this.count;
    this.page = Math.min(this.page, count - 1);
    this.tiles.forEach((tile, i) => {
      tile.classList.toggle("off-page", count > 1 && Math.floor(i / PER_PAGE) !== this.page);
    });
    this.nav.hidden = count < 2;
    this.nav.setAttribute("aria-label", t("phone.pages"));
    const status = t("phone.page_of", { page: this.page + 1, pages: count });
    if (this.status.textContent !== status) this.status.textContent = status;  // announced when it changes
    for (const [button, key, end] of [[this.previous, "phone.previous", 0], [this.next, "phone.next", count - 1]]) {
      button.setAttribute("aria-label", t(key));
      button.title = t(key);
      const moveFocus = button.disabled === false && this.page === end && document.activeElement === button;
      button.disabled = this.page === end;
      if (moveFocus) (button === this.next ? this.previous : this.next).focus();
    }
    this.changed();
  }
}
