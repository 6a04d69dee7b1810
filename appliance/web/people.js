// The participant list: names (guests marked), roles, microphone, camera and raised hands (in the
// order they went up), with the moderators' actions beside each name for hosts and moderators.
// The server decides who may do what; this only leaves out the buttons that would be refused.
import { el, icon, initials } from "/static/dom.js";
import { ordinal, t } from "/static/i18n.js";

export const MODERATORS = ["host", "moderator"];

export const isModerator = (participant) => MODERATORS.includes(participant?.role);

/** Raised hands in the order they went up: participant id → 1, 2, … */
export function handOrder(people) {
  return new Map(people.filter((p) => p.hand_raised_at !== null && p.hand_raised_at !== undefined)
    .sort((a, b) => a.hand_raised_at - b.hand_raised_at)
    .map((p, i) => [p.id, i + 1]));
}

export class People {
  /**
   * @param list the <ul> of people
   * @param menu the page's PopupMenu, for each person's "More actions"
   * @param act (type, participant, fields?) sends a moderator's message about that participant
   */
  constructor(list, menu, act) {
    this.list = list;
    this.menu = menu;
    this.act = act;
    this.rows = new Map();
  }

  /** Raised hands first, in order; then everyone else, you first, in the order they came. */
  render(me, others) {
    const everyone = [me, ...others];
    const hands = handOrder(everyone);
    const rank = (p, i) => hands.get(p.id) ?? everyone.length + i;
    const order = everyone.map((p, i) => [rank(p, i), p]).sort(([a], [b]) => a - b).map(([, p]) => p);
    for (const p of order) {
      let row = this.rows.get(p.id);
      if (!row) this.rows.set(p.id, row = el("li", { className: "person" }));
      if (this.menu.openFor && row.contains(this.menu.openFor)) this.menu.close();
      row.setAttribute("aria-label", p.id === me.id ? t("people.you_named", { name: p.name })
        : p.guest ? t("people.guest_named", { name: p.name }) : p.name);
      row.replaceChildren(...this.#content(p, me, hands.get(p.id)));
    }
    const present = new Set(everyone.map((p) => p.id));
    for (const [id, row] of this.rows) {
      if (!present.has(id)) { row.remove(); this.rows.delete(id); }
    }
    const rows = order.map((p) => this.rows.get(p.id));
    if (rows.some((row, i) => this.list.children[i] !== row)) this.list.replaceChildren(...rows);
  }

  #content(p, me, hand) {
    const self = p.id === me.id;
    const moderating = isModerator(me) && !self;
    const state = el("div", { className: "person-state" },
      hand && el("span", { className: "person-hand", role: "img", "aria-label": t("people.hand_raised", { nth: ordinal(hand) }),
                           title: t("people.hand_raised", { nth: ordinal(hand) }) }, icon("hand"), String(hand)),
      p.camera_off && icon("cam-off", t("people.camera_off")),
      p.muted ? icon("mic-off", t("people.microphone_off"))
        : moderating ? el("button", { type: "button", className: "icon-button", "aria-label": t("people.mute_named", { name: p.name }),
                                      title: t("people.mute_named", { name: p.name }), onclick: () => this.act("mute", p) }, icon("mic"))
          : icon("mic", t("people.microphone_on")));
    return [
      el("span", { className: "avatar-circle small", "aria-hidden": "true" }, initials(p.name)),
      el("div", { className: "person-text" },
        el("span", { className: "person-name" }, p.name, self && el("span", { className: "you" }, ` ${t("people.you")}`),
           !self && p.guest && el("span", { className: "guest-mark" }, ` ${t("people.guest")}`)),
        el("span", { className: "person-role" }, t(`people.role.${p.role}`))),
      state,
      moderating && this.#more(p, me),
    ].filter(Boolean);
  }

  #more(p, me) {
    const button = el("button", { type: "button", className: "icon-button", "aria-label": t("people.more_named", { name: p.name }),
                                  title: t("people.more"), "aria-haspopup": "menu", "aria-expanded": "false" },
                      icon("more"));
    button.onclick = () => {
      if (this.menu.openFor === button) this.menu.close();
      else this.menu.open(button, this.#actions(p, me), { label: t("people.actions_named", { name: p.name }) });
    };
    return button;
  }

  #actions(p, me) {
    const act = (type, fields) => () => this.act(type, p, fields);
    return [
      p.muted ? { label: t("people.ask_unmute"), action: act("ask_unmute") } : { label: t("people.mute"), action: act("mute") },
      !p.camera_off && { label: t("people.stop_camera"), action: act("stop_camera") },
      p.hand_raised_at != null && { label: t("people.lower_hand"), action: act("lower_hand") },
      me.role === "host" && p.role === "participant"
        && { label: t("people.make_moderator"), action: act("set_role", { role: "moderator" }) },
      me.role === "host" && p.role === "moderator"
        && { label: t("people.remove_moderator"), action: act("set_role", { role: "participant" }) },
      p.role !== "host" && { label: t("people.remove"), danger: true, action: act("remove") },
    ].filter(Boolean);
  }
}
