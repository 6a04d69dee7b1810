// Polls in the meeting: the Polls panel (opened from the control bar like the chat), where hosts
// and moderators ask a question (one answer or several, anonymous or named), watch the results
// come in and publish them; everyone votes, may change their vote while the poll is open, and
// sees the results once published. A poll that opens or whose results are published is announced.
// Messages: poll_create / poll_vote / poll_close / poll_publish / poll_list, events `poll`,
// `joined.polls` (docs/protocol.md, "Polls").
import { $, el } from "/static/dom.js";
import { errorText, language, t, tn } from "/static/i18n.js";

export const MAX_QUESTION = 300;  // appliance/signaling/polls.py MAX_QUESTION
export const MAX_OPTION = 200;    // appliance/signaling/polls.py MAX_OPTION
const MIN_OPTIONS = 2;
const MAX_OPTIONS = 10;
const MODERATORS = ["host", "moderator"];

const listed = (items) => new Intl.ListFormat(language(), { type: "conjunction" }).format(items);

/** Run `draw` (which replaces nodes of `root`), keeping the focus on the element of the same id. */
function keepingFocus(root, draw) {
  const focused = root.contains(document.activeElement) ? document.activeElement.id : "";
  draw();
  if (focused) document.getElementById(focused)?.focus();
}

export class Polls {
  /** @param notify (text) shows a short message on the page. */
  constructor(signaling, joined, notify) {
    this.signaling = signaling;
    this.me = joined.participant.id;
    this.role = joined.participant.role;
    this.notify = notify;
    this.polls = new Map();  // id → the poll as the server shows it to us
    this.unread = 0;
    this.isOpen = !$("#polls-panel").hidden;
    this.creating = false;  // our own poll_create is under way: its `poll` event is no news to us
    this.composing = false;
    this.formNode = null;  // the form while composing: kept across redraws, so typing goes on
    this.selection = new Map();  // poll id → the options ticked but not yet sent
    this.draft = { question: "", options: ["", ""], multiple: false, anonymous: false };
    this.root = $("#polls-body");
    this.status = el("p", { id: "polls-status", className: "polls-status", role: "status" });
    this.stop = [
      signaling.on("poll", (m) => this.#changed(m)),
      signaling.on("resumed", (resumed) => this.#reset(resumed.polls ?? [])),
      signaling.on("participant_updated", ({ participant }) => {
        if (participant.id !== this.me || participant.role === this.role) return;
        this.role = participant.role;
        this.#refresh();  // a moderator sees the results, a participant no longer does
      }),
    ];
    this.relabel = () => { this.formNode = null; this.#render(); };
    window.addEventListener("languagechange", this.relabel);
    this.#reset(joined.polls ?? []);
  }

  get moderating() { return MODERATORS.includes(this.role); }

  setOpen(open) {
    this.isOpen = open;
    if (open) { this.unread = 0; this.#badge(); }
  }

  #reset(polls) {
    this.polls = new Map(polls.map((poll) => [poll.id, poll]));
    this.#render();
  }

  async #refresh() {
    try {
      this.#reset((await this.signaling.request("poll_list")).polls);
    } catch (error) {
      this.#say(errorText(error));
    }
  }

  #changed({ change, poll }) {
    this.#update(poll);
    const news = { opened: "polls.opened", published: "polls.results_published" }[change];
    // Those who run the meeting need no word of what they see happen (results they watch already).
    if (!news || (change === "opened" && this.creating) || (change === "published" && this.moderating)) return;
    this.notify(t(news, { question: poll.question }));
    if (!this.isOpen) { this.unread += 1; this.#badge(); }
  }

  #badge() {
    const badge = $("#polls-badge");
    badge.textContent = String(this.unread);
    badge.hidden = this.unread === 0;
  }

  #say(text, { error = true } = {}) {
    this.status.textContent = text;
    this.status.classList.toggle("error", error);
  }

  async #request(type, fields) {
    try {
      const reply = await this.signaling.request(type, fields);
      if (reply.poll) this.#update(reply.poll);
      this.#say("");
      return reply;
    } catch (error) {
      this.#say(errorText(error));
      return null;
    }
  }

  /** A poll new or changed: only its own item is drawn again. */
  #update(poll) {
    const known = this.polls.has(poll.id);
    this.polls.set(poll.id, poll);
    const item = known && this.root.querySelector(`[data-poll="${poll.id}"]`);
    if (item) keepingFocus(this.root, () => item.replaceWith(this.#poll(poll)));
    else this.#render();
  }

  // ------------------------------------------------------------------ drawing
  #render() {
    const polls = [...this.polls.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
    const parts = [];
    if (this.moderating) parts.push(this.composing ? (this.formNode ??= this.#form()) : this.#newButton());
    parts.push(this.status);
    parts.push(polls.length
      ? el("ol", { className: "poll-list", "aria-label": t("polls.title") }, ...polls.map((poll) => this.#poll(poll)))
      : el("p", { className: "polls-empty" }, t(this.moderating ? "polls.empty_moderator" : "polls.empty")));
    keepingFocus(this.root, () => this.root.replaceChildren(...parts));
  }

  #compose(open) {
    this.composing = open;
    this.formNode = null;
    this.#render();
  }

  #newButton() {
    return el("div", { className: "polls-tools" },
      el("button", { id: "poll-new", type: "button", className: "ghost",
                     onclick: () => { this.#compose(true); $("#poll-question").focus(); } },
         t("polls.new")));
  }

  // The host's form: a question, 2 to 10 options, one answer or several, anonymous or named.
  #form() {
    const draft = this.draft;
    const question = el("textarea", { id: "poll-question", rows: 2, maxLength: MAX_QUESTION, required: true,
                                      value: draft.question, oninput: (e) => { draft.question = e.target.value; } });
    const options = draft.options.map((text, i) => el("li", { className: "poll-option-field" },
      el("input", { id: `poll-option-${i}`, type: "text", maxLength: MAX_OPTION, required: true, value: text,
                    "aria-label": t("polls.option_n", { n: i + 1 }), placeholder: t("polls.option_n", { n: i + 1 }),
                    oninput: (e) => { draft.options[i] = e.target.value; } }),
      draft.options.length > MIN_OPTIONS && el("button", {
        type: "button", className: "icon-button", "aria-label": t("polls.remove_option", { n: i + 1 }),
        title: t("polls.remove_option", { n: i + 1 }),
        onclick: () => { draft.options.splice(i, 1); this.#compose(true); $("#poll-question").focus(); },
      }, "✕")));
    const check = (name, key) => el("label", { className: "check" },
      el("input", { type: "checkbox", name, checked: draft[name],
                    onchange: (e) => { draft[name] = e.target.checked; } }), t(key));
    return el("form", { id: "poll-form", className: "poll-form", "aria-label": t("polls.new"),
                        onsubmit: (event) => { event.preventDefault(); this.#create(); } },
      el("label", { htmlFor: "poll-question" }, t("polls.question")), question,
      el("fieldset", {}, el("legend", {}, t("polls.options")), el("ol", { className: "poll-option-fields" }, ...options),
         draft.options.length < MAX_OPTIONS && el("button", {
           id: "poll-add-option", type: "button", className: "ghost small",
           onclick: () => { draft.options.push(""); this.#compose(true); $(`#poll-option-${draft.options.length - 1}`).focus(); },
         }, t("polls.add_option"))),
      check("multiple", "polls.multiple"), check("anonymous", "polls.anonymous"),
      el("p", { className: "hint" }, t("polls.anonymous_hint")),
      el("div", { className: "poll-actions" },
         el("button", { id: "poll-start", type: "submit" }, t("polls.start")),
         el("button", { type: "button", className: "ghost",
                        onclick: () => { this.#compose(false); $("#poll-new")?.focus(); } },
            t("polls.cancel"))));
  }

  async #create() {
    const draft = this.draft;
    const options = draft.options.map((o) => o.trim());
    if (!draft.question.trim() || options.some((o) => !o)) {
      this.#say(t("polls.fill_in"));
      return;
    }
    if (new Set(options.map((o) => o.toLowerCase())).size < options.length) {
      this.#say(t("polls.options_differ"));
      return;
    }
    this.creating = true;
    const reply = await this.#request("poll_create", { question: draft.question.trim(), options,
                                                       multiple: draft.multiple, anonymous: draft.anonymous });
    this.creating = false;
    if (!reply) return;
    this.draft = { question: "", options: ["", ""], multiple: false, anonymous: false };
    this.#compose(false);
    $("#poll-new")?.focus();
  }

  #poll(poll) {
    const state = t(`polls.state.${poll.state}`);
    const kind = [t(poll.multiple ? "polls.several_answers" : "polls.one_answer"),
                  t(poll.anonymous ? "polls.is_anonymous" : "polls.is_named")].join(" · ");
    const headingId = `poll-${poll.id}-question`;
    const body = [
      el("h3", { id: headingId, className: "poll-question" }, poll.question),
      el("p", { className: "poll-meta" }, el("span", { className: `poll-state ${poll.state}` }, state), " ", kind),
    ];
    if (poll.state === "open") body.push(this.#ballot(poll, headingId));
    else if (poll.my_choice) body.push(el("p", { className: "poll-mine" }, this.#mine(poll)));
    if (poll.results) body.push(this.#results(poll));
    else if (poll.state !== "open") body.push(el("p", { className: "muted" }, t("polls.results_not_published")));
    if (this.moderating) body.push(this.#tools(poll));
    return el("li", { className: "poll", "data-poll": poll.id, "aria-labelledby": headingId }, ...body);
  }

  #mine(poll) {
    return t("polls.you_chose", { options: listed(poll.my_choice.map((i) => poll.options[i])) });
  }

  // The ballot: radio buttons (one answer) or checkboxes (several), and Vote / Change vote.
  #ballot(poll, headingId) {
    const chosen = this.selection.get(poll.id) ?? new Set(poll.my_choice ?? []);
    const type = poll.multiple ? "checkbox" : "radio";
    const tick = () => this.selection.set(poll.id, new Set(
      [...fieldset.querySelectorAll("input:checked")].map((input) => Number(input.value))));
    const fieldset = el("fieldset", { className: "poll-ballot", "aria-labelledby": headingId },
      ...poll.options.map((text, i) => el("label", { className: "check poll-choice" },
        el("input", { id: `poll-${poll.id}-option-${i}`, type, name: `poll-${poll.id}`, value: String(i),
                      checked: chosen.has(i), onchange: tick }), text)));
    const form = el("form", {
      className: "poll-vote", onsubmit: async (event) => {
        event.preventDefault();
        const choice = [...form.querySelectorAll("input:checked")].map((input) => Number(input.value));
        if (!choice.length) { this.#say(t("polls.choose_first")); return; }
        this.selection.delete(poll.id);
        const reply = await this.#request("poll_vote", { poll_id: poll.id, choice });
        if (reply) this.#say(t("polls.vote_counted"), { error: false });
      },
    }, fieldset, el("div", { className: "poll-actions" },
      el("button", { id: `poll-${poll.id}-vote`, type: "submit" }, t(poll.my_choice ? "polls.change_vote" : "polls.vote")),
      poll.my_choice && el("span", { className: "poll-mine" }, this.#mine(poll))));
    return form;
  }

  // Bars of the counts (a share of those who voted), and for a named poll who chose what.
  #results(poll) {
    const { ballots, counts, voters } = poll.results;
    const rows = poll.options.map((text, i) => {
      const share = ballots ? Math.round((counts[i] / ballots) * 100) : 0;
      const bar = el("span", { className: "poll-bar", "aria-hidden": "true" }, el("span", {}));
      bar.firstChild.style.width = `${share}%`;
      return el("li", { className: "poll-result" },
        el("span", { className: "poll-result-text" }, el("span", {}, text),
           el("span", { className: "poll-count" }, tn("polls.votes", counts[i], { percent: share }))),
        bar,
        voters && voters[i].length ? el("span", { className: "poll-voters" }, listed(voters[i])) : null);
    });
    const heading = t(poll.state === "published" ? "polls.results" : "polls.live_results");
    return el("section", { className: "poll-results", "aria-label": heading },
      el("p", { className: "poll-results-head" }, heading, " · ", tn("polls.voted", ballots)),
      el("ol", {}, ...rows));
  }

  #tools(poll) {
    const tools = el("div", { className: "poll-actions" });
    if (poll.state === "open") {
      tools.append(el("button", { id: `poll-${poll.id}-close`, type: "button", className: "ghost",
                                  onclick: () => this.#request("poll_close", { poll_id: poll.id }) }, t("polls.close_poll")));
    }
    if (poll.state !== "published") {
      tools.append(el("button", { id: `poll-${poll.id}-publish`, type: "button", className: "ghost",
                                  onclick: () => this.#request("poll_publish", { poll_id: poll.id }) }, t("polls.publish")));
    }
    return tools;
  }

  close() {
    for (const stop of this.stop) stop();
    window.removeEventListener("languagechange", this.relabel);
    this.unread = 0;
    this.#badge();
    this.root.replaceChildren();
  }
}
