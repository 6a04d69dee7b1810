// The home page's recordings of a meeting: each with its tracks to download, a composite export
// (made in the background, its progress shown) and, for the host and moderators, delete.
import { call } from "/static/api.js";
import { el } from "/static/dom.js";
import { byteSize, dateTime, duration, errorText, t } from "/static/i18n.js";

const POLL_MS = 1000;
const MODERATORS = ["host", "moderator"];

async function download(path, error) {
  try {
    const { url } = await call("GET", path);
    window.location.assign(url);
  } catch (e) { error.textContent = errorText(e); }
}

/** A "Recordings" button for a meeting of the list, and the panel it opens below `item`. */
export function recordingsButton(meeting, item) {
  const panel = el("li", { className: "recordings-panel", hidden: true, "aria-label": t("home.recordings_of", { title: meeting.title }) });
  const button = el("button", { type: "button", className: "ghost", "aria-expanded": "false",
                                "aria-label": t("home.recordings_of", { title: meeting.title }) }, t("home.recordings"));
  button.addEventListener("click", async () => {
    const open = panel.hidden;
    panel.hidden = !open;
    button.setAttribute("aria-expanded", String(open));
    if (open) {
      if (!panel.isConnected) item.after(panel);
      await render(meeting, panel);
    }
  });
  return button;
}

async function render(meeting, panel) {
  let recordings;
  try {
    ({ recordings } = await call("GET", `/api/v1/meetings/${encodeURIComponent(meeting.id)}/recordings`));
  } catch (error) {
    panel.replaceChildren(el("p", { className: "error" }, errorText(error)));
    return;
  }
  const list = el("ul");
  panel.replaceChildren(el("h3", {}, t("home.recordings_of", { title: meeting.title })),
                        recordings.length ? list : el("p", { className: "muted" }, t("recordings.none")));
  for (const recording of recordings) list.append(recordingItem(meeting, recording, () => render(meeting, panel)));
  if (recordings.some((r) => r.status === "recording" || r.status === "uploading" ||
                             r.exports.some((e) => e.status === "queued" || e.status === "running"))) {
    clearTimeout(panel.timer);
    panel.timer = setTimeout(() => { if (!panel.hidden) render(meeting, panel); }, POLL_MS);
  }
}

/** Why a recording failed, or what an interrupted one kept. */
function note(recording) {
  if (recording.status === "failed") return recording.stop_reason;
  if (recording.interrupted) {
    return t("recordings.interrupted", { duration: duration(recording.duration_s) });
  }
  return "";
}

function recordingItem(meeting, recording, refresh) {
  const base = `/api/v1/recordings/${encodeURIComponent(recording.id)}`;
  const when = dateTime(new Date(recording.started_at));
  const status = recording.status === "ready" ? "" : t(`recordings.status.${recording.status}`);
  const error = el("p", { className: "error", role: "alert" });
  const item = el("li", { className: "recording-item", "data-recording": recording.id },
    el("div", { className: "row" },
      el("strong", {}, recording.room ? t("recordings.in_room", { when, room: recording.room }) : when),
      el("span", { className: "muted" },
        `${duration(recording.duration_s)} · ${byteSize(recording.size)}${recording.started_by_name
          ? ` · ${t("recordings.by", { name: recording.started_by_name })}` : ""}`),
      status ? el("span", { className: "muted" }, status) : null),
    note(recording) ? el("p", { className: "muted recording-note" }, note(recording)) : null,
    recording.upload_error ? el("p", { className: "error" }, recording.upload_error) : null);
  if (recording.status === "ready") {
    const files = el("div", { className: "row" }, el("span", { className: "muted" }, t("recordings.tracks")));
    for (const track of recording.tracks) {
      files.append(el("button", { type: "button", className: "ghost", onclick: () => download(`${base}/files/${encodeURIComponent(track.file)}`, error) },
                      t(`recordings.track.${track.source}`, { name: track.name || track.participant_id })));
    }
    item.append(files);
  }
  const exports = el("div", { className: "row" });
  for (const exported of recording.exports) exports.append(exportItem(base, exported, error));
  if (["uploading", "ready"].includes(recording.status) && recording.tracks.length) {
    const layout = el("select", { "aria-label": t("recordings.layout") },
                      el("option", { value: "grid" }, t("recordings.layout.grid")),
                      el("option", { value: "speaker" }, t("recordings.layout.speaker")));
    const format = el("select", { "aria-label": t("recordings.format") }, el("option", { value: "mp4" }, "MP4"),
                      el("option", { value: "webm" }, "WebM"));
    const resolution = el("select", { "aria-label": t("recordings.resolution") }, el("option", { value: "1280x720" }, "720p"),
                          el("option", { value: "1920x1080" }, "1080p"), el("option", { value: "640x360" }, "360p"));
    exports.append(layout, format, resolution, el("button", { type: "button", onclick: async () => {
      const [width, height] = resolution.value.split("x").map(Number);
      try {
        await call("POST", `${base}/exports`, { layout: layout.value, format: format.value, width, height });
        refresh();
      } catch (e) { error.textContent = errorText(e); }
    } }, t("recordings.export")));
  }
  item.append(exports);
  if (MODERATORS.includes(meeting.my_role) && recording.status !== "recording") {
    const remove = el("button", { type: "button", className: "ghost danger" }, t("recordings.delete"));
    remove.addEventListener("click", async () => {
      if (remove.dataset.confirm !== "yes") {  // a second click confirms
        remove.dataset.confirm = "yes";
        remove.textContent = t("recordings.delete_confirm");
        return;
      }
      try {
        await call("DELETE", base);
        refresh();
      } catch (e) { error.textContent = errorText(e); }
    });
    item.append(el("div", { className: "row" }, remove));
  }
  item.append(error);
  return item;
}

function exportItem(base, exported, error) {
  const label = `${exported.format === "webm" ? "WebM" : "MP4"} ${t(`recordings.layout.${exported.layout}`)} ${exported.width}×${exported.height}`;
  if (exported.status === "ready") {
    return el("button", { type: "button", onclick: () => download(`${base}/exports/${encodeURIComponent(exported.id)}/download`, error) },
              t("recordings.download", { label }));
  }
  if (exported.status === "failed") return el("span", { className: "error" }, t("recordings.export_failed", { label, reason: exported.error }));
  return el("span", { className: "muted" }, `${label} `,
            el("progress", { max: 1, value: exported.progress, "aria-label": t("recordings.exporting", { label }) }));
}
