// Recording in the meeting: the Record button hosts and moderators get, the indicator everyone
// sees while a recording runs, and the notice (consent) when one starts or is running as you join.
// Messages: recording_start / recording_stop, events `recording`, `joined.recording` (docs/protocol.md).
import { $, el } from "/static/dom.js";
import { errorText, t } from "/static/i18n.js";

const MODERATORS = ["host", "moderator"];

// Why a recording stopped (the `reason` docs/protocol.md lists), in the page's language; a disk's
// trouble as the server says it.
function stopped(reason) {
  const by = /^stopped by (.+)$/.exec(reason)?.[1];
  if (by) return t("recording.stopped_by", { name: by });
  if (reason === "everyone left the meeting") return t("recording.everyone_left");
  if (reason === "the breakout rooms closed") return t("recording.rooms_closed");
  if (reason === "the main room's recording stopped") return t("recording.main_stopped");
  return reason ? t("recording.stopped_because", { reason }) : t("recording.stopped");
}

export class Recording {
  /** @param notify (text) shows a short message on the page. */
  constructor(signaling, joined, notify) {
    this.signaling = signaling;
    this.me = joined.participant.id;
    this.role = joined.participant.role;
    this.notify = notify;
    this.current = null;  // {id, started_at, started_by} while a recording runs
    this.encrypted = Boolean(joined.e2ee?.enabled);  // end-to-end encrypted: the server cannot record it
    this.busy = false;

    this.button = el("button", { id: "record", className: "control record", type: "button", "aria-pressed": "false", onclick: () => this.#toggle() },
                     el("span", { className: "record-dot", "aria-hidden": "true" }));
    $("#leave").before(this.button);
    this.indicator = el("span", { id: "recording-indicator", className: "recording-indicator", role: "status",
                                  hidden: true }, el("span", { className: "record-dot", "aria-hidden": "true" }),
                        el("span", { "data-i18n": "recording.indicator" }, t("recording.indicator")));
    $(".meeting-info").append(this.indicator);
    this.text = el("p", { id: "recording-notice-text" });
    this.notice = el("div", { id: "recording-notice", className: "prompt recording-notice", role: "alertdialog",
                              "aria-labelledby": "recording-notice-text", hidden: true },
                     el("span", { className: "record-dot", "aria-hidden": "true" }), this.text,
                     el("button", { type: "button", "data-i18n": "recording.ok", onclick: () => { this.notice.hidden = true; } },
                        t("recording.ok")));
    $("#stage").append(this.notice);

    this.stop = [
      signaling.on("recording", (m) => this.#changed(m)),
      signaling.on("resumed", (resumed) => this.#show(resumed.recording ?? null)),
      signaling.on("participant_updated", ({ participant }) => {
        if (participant.id === this.me) { this.role = participant.role; this.#render(); }
      }),
    ];
    this.relabel = () => { if (this.current) this.#announce(this.current); this.#render(); };
    window.addEventListener("languagechange", this.relabel);
    this.#show(joined.recording ?? null);
  }

  #changed({ active, recording, moved }) {
    if (moved) {  // into a breakout room or back: that room's recording, or none, without a notice of a stop
      this.#show(recording ?? null);
      return;
    }
    if (active) {
      this.#show(recording);
      return;
    }
    this.#show(null);
    this.notice.hidden = true;
    this.notify(stopped(recording?.reason ?? ""));
  }

  // A recording running (a new one, or one already running as we join) is announced once.
  #show(recording) {
    const isNew = recording && recording.id !== this.current?.id;
    this.current = recording;
    if (isNew) {
      this.#announce(recording);
      this.notice.hidden = false;
    }
    this.#render();
  }

  #announce(recording) {
    this.text.textContent = t("recording.notice", { name: recording.started_by });
  }

  #render() {
    const on = Boolean(this.current);
    this.indicator.hidden = !on;
    this.button.hidden = !MODERATORS.includes(this.role);
    this.button.disabled = this.busy || this.encrypted;
    this.button.setAttribute("aria-pressed", String(on));
    this.button.setAttribute("aria-label", t(on ? "recording.stop" : "recording.record"));
    this.button.title = t(this.encrypted ? "e2ee.no_recording" : on ? "recording.stop_title" : "recording.record_title");
  }

  async #toggle() {
    this.busy = true;
    this.#render();
    try {
      await this.signaling.request(this.current ? "recording_stop" : "recording_start");
    } catch (error) {
      this.notify(errorText(error));
    } finally {
      this.busy = false;
      this.#render();
    }
  }

  close() {
    for (const stop of this.stop) stop();
    window.removeEventListener("languagechange", this.relabel);
    this.button.remove();
    this.indicator.remove();
    this.notice.remove();
  }
}
