// Breakout rooms in the meeting: the hosts' and moderators' panel (create rooms, assign people by
// hand or at random, a timer, open and close, a message to every room, visit a room), the banner
// that tells a participant which room they are in (return to the main room, ask for help, join
// their room when it opens), and the notices (help asked, rooms closing). Moving between rooms
// is the server's doing: it resets our media (media_reset, meeting.js) and sends `breakout` with
// the new room's chat. Messages: breakout_* and events `breakouts`, `breakout`,
// `breakouts_closing`, `breakout_help` (docs/protocol.md, "Breakout rooms").
import { $, el } from "/static/dom.js";
import { duration, errorText, t, tn } from "/static/i18n.js";
import { isModerator } from "/static/people.js";

export const MAX_ROOMS = 50;  // appliance/signaling/breakouts.py MAX_ROOMS
const MAX_NAME = 60;
const MAX_MINUTES = 24 * 60;

export class Breakouts {
  /**
   * @param hooks notify(text) shows a short message; me() → your participant; people() → the others;
   *   chat(history) shows the chat of the room you are now in.
   */
  constructor(signaling, joined, hooks) {
    this.signaling = signaling;
    this.hooks = hooks;
    this.plan = joined.breakouts ?? null;
    this.endsAt = null;   // Date.now() at which open rooms close (from seconds_left: no clock skew)
    this.help = new Map();  // room → names of those who asked for help there
    this.roomCount = 2;

    this.body = $("#breakouts-body");
    // The forms are made once, so that what someone is typing survives the redraws.
    this.createForm = this.#createForm();
    this.openForm = this.#openForm();
    this.broadcastForm = this.#broadcastForm();
    this.button = $("#breakouts-button");
    this.banner = el("div", { id: "breakout-banner", className: "breakout-banner", role: "status", hidden: true });
    $("#stage").append(this.banner);

    this.stop = [
      signaling.on("breakouts", (plan) => this.#planned(plan)),
      signaling.on("breakout", (m) => this.#moved(m)),
      signaling.on("breakouts_closing", (m) => this.hooks.notify(tn("breakouts.closing_in", m.seconds_left))),
      signaling.on("breakout_help", (m) => this.#helpAsked(m)),
      signaling.on("chat", ({ message }) => {
        if (message.broadcast && message.from !== this.hooks.me().id) {
          this.hooks.notify(t("breakouts.broadcast_from", { name: message.from_name, text: message.text }));
        }
      }),
      signaling.on("resumed", (resumed) => this.#planned(resumed.breakouts ?? null)),
      signaling.on("participant_updated", () => this.render()),
      signaling.on("participant_joined", () => this.render()),
      signaling.on("participant_left", () => this.render()),
    ];
    this.relabel = () => {
      this.createForm = this.#createForm();
      this.openForm = this.#openForm();
      this.broadcastForm = this.#broadcastForm();
      this.render();
    };
    window.addEventListener("languagechange", this.relabel);
    this.clock = setInterval(() => this.#tick(), 1000);
    this.#planned(this.plan);
  }

  get #room() { return this.hooks.me().breakout ?? null; }
  #name(room) { return this.plan?.rooms.find((r) => r.id === room)?.name ?? room; }

  #planned(plan) {
    this.plan = plan;
    this.endsAt = plan?.open && plan.seconds_left != null ? Date.now() + plan.seconds_left * 1000 : null;
    if (!plan?.open) this.help.clear();
    this.render();
  }

  #moved({ room, name, chat }) {
    this.help.delete(room);  // a moderator came to help
    this.hooks.chat(chat ?? []);
    this.hooks.notify(room ? t("breakouts.now_in", { room: name ?? room }) : t("breakouts.back_in_main"));
    this.render();
  }

  #helpAsked({ name, room, room_name: roomName }) {
    const asking = this.help.get(room) ?? new Set();
    asking.add(name);
    this.help.set(room, asking);
    this.hooks.notify(t("breakouts.help_asked", { name, room: roomName || room }));
    this.render();
  }

  async #send(type, fields = {}, done = "") {
    try {
      const reply = await this.signaling.request(type, fields);
      if (done) this.hooks.notify(done);
      return reply;
    } catch (error) {
      this.hooks.notify(errorText(error));
      return null;
    }
  }

  #tick() {
    if (!this.endsAt) return;
    const left = Math.max(0, Math.round((this.endsAt - Date.now()) / 1000));
    for (const node of document.querySelectorAll(".breakout-timer")) {
      node.textContent = t("breakouts.time_left", { time: duration(left) });
    }
  }

  // ------------------------------------------------------------------------- drawing
  render() {
    const me = this.hooks.me();
    const moderating = isModerator(me);
    this.button.hidden = !moderating && !this.plan?.open;
    this.#banner(me);
    const parts = [];
    if (moderating) parts.push(...this.#hostTools());
    if (this.plan?.open) parts.push(this.#roomList(moderating));
    else if (!moderating) parts.push(el("p", { className: "breakouts-empty" }, t("breakouts.none_open")));
    this.body.replaceChildren(...parts);
    this.#tick();
  }

  #banner(me) {
    const room = this.#room;
    const mine = this.plan?.assignments?.[me.id] ?? null;
    const timer = this.endsAt ? el("span", { className: "breakout-timer" }) : null;
    if (room) {
      this.banner.replaceChildren(
        el("span", { className: "breakout-where" }, t("breakouts.you_are_in", { room: this.#name(room) })), timer,
        el("button", { type: "button", className: "ghost", onclick: () => this.#send("breakout_join", { room: null }) },
           t("breakouts.return")),
        !isModerator(me) && el("button", { type: "button", onclick: () => this.#askHelp() }, t("breakouts.ask_help")));
    } else if (this.plan?.open && mine) {
      this.banner.replaceChildren(
        el("span", { className: "breakout-where" }, t("breakouts.your_room_open", { room: this.#name(mine) })), timer,
        el("button", { type: "button", onclick: () => this.#send("breakout_join", { room: mine }) }, t("breakouts.join")));
    }
    this.banner.hidden = !(room || (this.plan?.open && mine));
  }

  async #askHelp() {
    const reply = await this.#send("breakout_help");
    if (reply) this.hooks.notify(reply.told ? t("breakouts.help_sent") : t("breakouts.help_nobody"));
  }

  // Hosts and moderators: make rooms, assign, open and close, message every room.
  #hostTools() {
    const plan = this.plan;
    const tools = [];
    if (!plan?.open) {
      this.createForm.querySelector(".hint").hidden = !plan;
      this.createForm.querySelector("button[type=submit]").textContent = t(plan ? "breakouts.recreate" : "breakouts.create");
      tools.push(this.createForm);
    }
    if (plan) tools.push(this.#assignments(plan));
    if (plan && !plan.open) tools.push(this.openForm);
    if (plan?.open) {
      tools.push(el("div", { className: "breakouts-actions" },
        this.endsAt && el("span", { className: "breakout-timer" }),
        el("button", { type: "button", className: "danger", onclick: () => this.#send("breakout_close", {}, t("breakouts.closed")) },
           t("breakouts.close_rooms"))));
      tools.push(this.broadcastForm);
    }
    return tools;
  }

  #createForm() {
    const count = el("input", { type: "number", id: "breakout-count", min: "1", max: String(MAX_ROOMS), value: String(this.roomCount),
                                required: true });
    const names = el("ol", { className: "breakout-names" });
    const fill = () => {
      const n = Math.min(MAX_ROOMS, Math.max(1, Number(count.value) || 1));
      this.roomCount = n;
      const kept = [...names.querySelectorAll("input")].map((input) => input.value);
      names.replaceChildren(...Array.from({ length: n }, (_, i) => el("li", {},
        el("input", { type: "text", required: true, maxLength: MAX_NAME, value: kept[i] ?? t("breakouts.room_n", { n: i + 1 }),
                      "aria-label": t("breakouts.room_name_n", { n: i + 1 }) }))));
    };
    count.addEventListener("input", fill);
    fill();
    const form = el("form", { className: "breakout-form" },
      el("label", { htmlFor: "breakout-count" }, t("breakouts.how_many")), count, names,
      el("p", { className: "hint" }, t("breakouts.replaces")),
      el("button", { type: "submit" }, t("breakouts.create")));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const rooms = [...names.querySelectorAll("input")].map((input) => input.value.trim());
      this.#send("breakout_create", { rooms }, tn("breakouts.created", rooms.length));
    });
    return form;
  }

  #assignments(plan) {
    const me = this.hooks.me();
    const everyone = [me, ...this.hooks.people()];
    const rows = everyone.map((p) => {
      const select = el("select", { "aria-label": t("breakouts.room_for", { name: p.name }) },
        el("option", { value: "" }, t("breakouts.unassigned")),
        ...plan.rooms.map((r) => el("option", { value: r.id }, r.name)));
      select.value = plan.assignments?.[p.id] ?? "";
      select.addEventListener("change", () =>
        this.#send("breakout_assign", { assignments: { [p.id]: select.value || null } }));
      return el("li", { className: "breakout-person" },
        el("span", { className: "breakout-person-name", title: p.name }, p.id === me.id ? t("people.you_named", { name: p.name }) : p.name),
        select);
    });
    return el("section", { className: "breakout-assign", "aria-labelledby": "breakout-assign-title" },
      el("div", { className: "breakouts-actions" },
        el("h3", { id: "breakout-assign-title" }, t("breakouts.assign")),
        el("button", { type: "button", className: "ghost", onclick: () => this.#send("breakout_shuffle", {}, t("breakouts.shuffled")) },
           t("breakouts.shuffle"))),
      el("ul", { className: "breakout-people" }, ...rows));
  }

  #openForm() {
    const minutes = el("input", { type: "number", id: "breakout-minutes", min: "1", max: String(MAX_MINUTES), step: "1",
                                  placeholder: t("breakouts.no_timer") });
    const choose = el("input", { type: "checkbox", id: "breakout-choose" });
    const form = el("form", { className: "breakout-form" },
      el("label", { htmlFor: "breakout-minutes" }, t("breakouts.minutes")), minutes,
      el("label", { className: "check" }, choose, " ", t("breakouts.allow_choose")),
      el("button", { type: "submit" }, t("breakouts.open_rooms")));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#send("breakout_open", { minutes: minutes.value ? Number(minutes.value) : null, allow_choose: choose.checked },
                 t("breakouts.opened"));
    });
    return form;
  }

  #broadcastForm() {
    const text = el("textarea", { id: "breakout-message", rows: 2, maxLength: 4000, required: true });
    const form = el("form", { className: "breakout-form" },
      el("label", { htmlFor: "breakout-message" }, t("breakouts.message_all")), text,
      el("button", { type: "submit" }, t("breakouts.send_all")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (await this.#send("breakout_broadcast", { text: text.value }, t("breakouts.sent_all"))) text.value = "";
    });
    return form;
  }

  // The open rooms and who is in each; Join where you may go.
  #roomList(moderating) {
    const me = this.hooks.me();
    const everyone = [me, ...this.hooks.people()];
    const mine = this.plan.assignments?.[me.id] ?? null;
    const rooms = [{ id: null, name: t("breakouts.main_room") }, ...this.plan.rooms];
    return el("ul", { className: "breakout-rooms", "aria-label": t("breakouts.rooms") }, ...rooms.map((room) => {
      const inside = everyone.filter((p) => (p.breakout ?? null) === room.id);
      const here = (me.breakout ?? null) === room.id;
      const mayJoin = !here && (room.id === null || moderating || this.plan.allow_choose || mine === room.id);
      const asking = room.id ? [...(this.help.get(room.id) ?? [])] : [];
      return el("li", { className: `breakout-room${here ? " here" : ""}${asking.length ? " help" : ""}` },
        el("div", { className: "breakout-room-head" },
          el("span", { className: "breakout-room-name" }, room.name),
          el("span", { className: "breakout-room-count" }, tn("breakouts.people", inside.length)),
          mayJoin && el("button", { type: "button", className: "ghost",
                                    "aria-label": t("breakouts.join_named", { room: room.name }),
                                    onclick: () => this.#send("breakout_join", { room: room.id }) },
                        t(room.id === null ? "breakouts.return" : "breakouts.join"))),
        inside.length > 0 && el("p", { className: "breakout-room-people" }, inside.map((p) => p.name).join(", ")),
        asking.length > 0 && el("p", { className: "breakout-room-help", role: "status" },
                                t("breakouts.help_from", { names: asking.join(", ") })));
    }));
  }

  close() {
    for (const stop of this.stop) stop();
    clearInterval(this.clock);
    window.removeEventListener("languagechange", this.relabel);
    this.banner.remove();
    this.body.replaceChildren();
    this.button.hidden = true;
  }
}
