// The admin console (/admin): users (invite, reset a password, disable, make admin), meetings in
// progress (end one), recordings and the storage they take (delete one), the audit log (filter,
// export CSV) and the health of every component. Each action is one API call, authorised and
// audited by the server; a member gets the API's 403 and the page says so.
import { ApiError, call, signOut, tokens } from "/static/api.js";
import { $, el } from "/static/dom.js";
import { byteSize, duration, errorText, language, languagePicker, t, translatePage } from "/static/i18n.js";

const TABS = ["users", "meetings", "recordings", "audit", "health"];
const AUDIT_PAGE = 50;

const when = (iso) => (iso ? new Intl.DateTimeFormat(language(), { dateStyle: "medium", timeStyle: "medium" })
  .format(new Date(iso)) : "");
const day = (iso) => new Intl.DateTimeFormat(language(), { dateStyle: "medium" }).format(new Date(iso));

/** A message of the catalogue, or `fallback` (data: a code the catalogue does not know). */
function label(key, fallback) {
  const text = t(key);
  return text === key ? fallback : text;
}
const actionLabel = (action) => label(`admin.action.${action}`, action);
const roleLabel = (role) => label(`role.${role}`, role);

let me = null;
let state = { users: [], meetings: [], recordings: null, audit: null, health: null, link: null };
let auditOffset = 0;

function say(message) { $("#status").textContent = message; }

function showError(section, error) {
  $(`#${section} .error`).textContent = error ? errorText(error) : "";
}

/** Run an action: its error shown in `section`, its success announced, then redraw. */
async function act(section, work, done) {
  showError(section, null);
  try {
    await work();
    say(done);
    await load(section);
  } catch (error) {
    showError(section, error);
  }
}

// ---------------------------------------------------------------- tabs
function showTab(name) {
  if (!TABS.includes(name)) name = "users";
  for (const tab of TABS) {
    const button = $(`#tab-${tab}`);
    button.setAttribute("aria-selected", String(tab === name));
    button.tabIndex = tab === name ? 0 : -1;
    $(`#${tab}`).hidden = tab !== name;
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  say("");
  load(name);
}

function tabKeys(event) {
  const at = TABS.indexOf(event.target.id.replace("tab-", ""));
  const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
  if (at < 0 || !step) return;
  const next = TABS[(at + step + TABS.length) % TABS.length];
  showTab(next);
  $(`#tab-${next}`).focus();
}

async function load(name) {
  try {
    if (name === "users") await loadUsers();
    else if (name === "meetings") await loadMeetings();
    else if (name === "recordings") await loadRecordings();
    else if (name === "audit") await loadAudit();
    else if (name === "health") await loadHealth();
  } catch (error) {
    if (name === "users") $("#users-error").textContent = errorText(error);
    else showError(name, error);
  }
}

// ---------------------------------------------------------------- users
async function loadUsers() {
  ({ users: state.users } = await call("GET", "/api/v1/users?limit=500"));
  drawUsers();
}

function drawUsers() {
  const body = $("#users-table tbody");
  body.replaceChildren(...state.users.map((user) => {
    const self = user.id === me.id;
    const buttons = [
      el("button", { type: "button", className: "ghost", "aria-label": t("admin.users.reset_of", { name: user.name }),
                     onclick: () => resetPassword(user) }, t("admin.users.reset")),
      el("button", { type: "button", className: "ghost", disabled: self,
                     "aria-label": t(user.role === "admin" ? "admin.users.make_member_of" : "admin.users.make_admin_of", { name: user.name }),
                     onclick: () => patchUser(user, { role: user.role === "admin" ? "member" : "admin" }) },
         t(user.role === "admin" ? "admin.users.make_member" : "admin.users.make_admin")),
      el("button", { type: "button", className: user.active ? "ghost danger-text" : "ghost", disabled: self,
                     "aria-label": t(user.active ? "admin.users.disable_of" : "admin.users.enable_of", { name: user.name }),
                     onclick: () => patchUser(user, { active: !user.active }) },
         t(user.active ? "admin.users.disable" : "admin.users.enable")),
    ];
    return el("tr", { "aria-label": user.name },
      el("td", {}, user.name, self ? el("span", { className: "muted you" }, t("admin.users.you")) : null),
      el("td", {}, user.email),
      el("td", {}, t(`admin.role.${user.role}`)),
      el("td", {}, el("span", { className: `badge ${user.active ? "ok" : "off"}` },
                      t(user.active ? "admin.users.active" : "admin.users.disabled"))),
      el("td", {}, day(user.created_at)),
      el("td", { className: "actions" }, ...buttons));
  }));
}

async function patchUser(user, change) {
  const done = "active" in change
    ? t(change.active ? "admin.users.enabled_done" : "admin.users.disabled_done", { name: user.name })
    : t(change.role === "admin" ? "admin.users.made_admin_done" : "admin.users.made_member_done", { name: user.name });
  if (change.active === false && !confirm(t("admin.users.disable_confirm", { name: user.name }))) return;
  await act("users", () => call("PATCH", `/api/v1/users/${encodeURIComponent(user.id)}`, change), done);
}

async function resetPassword(user) {
  if (!confirm(t("admin.users.reset_confirm", { name: user.name }))) return;
  await act("users", async () => {
    showLink("reset", await call("POST", `/api/v1/users/${encodeURIComponent(user.id)}/password-reset`));
  }, t("admin.link.reset_done", { name: user.name }));
}

function showLink(kind, link) {
  state.link = { kind, link };
  drawLink();
  $("#link-box").hidden = false;
  $("#link").select();
}

function drawLink() {
  if (!state.link) return;
  const { kind, link } = state.link;
  $("#link-lead").textContent = t(kind === "invite" ? "admin.link.invite_lead" : "admin.link.reset_lead",
                                  { name: link.user.name, email: link.user.email });
  $("#link").value = link.url;
  $("#link-expiry").textContent = t("admin.link.expires", { when: when(link.expires_at) });
}

// ---------------------------------------------------------------- meetings in progress
async function loadMeetings() {
  ({ meetings: state.meetings } = await call("GET", "/api/v1/admin/meetings"));
  drawMeetings();
}

function drawMeetings() {
  $("#meetings .empty").hidden = state.meetings.length > 0;
  $("#live-meetings").replaceChildren(...state.meetings.map((m) => el("li", { "aria-label": m.title },
    el("div", { className: "grow" },
      el("div", { className: "meeting-title" }, m.title),
      el("div", { className: "muted" }, [m.code, t("admin.meetings.host", { name: m.owner_name }),
                                         t("admin.meetings.count", { n: m.participants.length })].join(" · ")),
      el("ul", { className: "people", "aria-label": t("admin.meetings.participants_of", { title: m.title }) },
         ...m.participants.map((p) => el("li", {}, p.name, el("span", { className: "muted" }, ` · ${roleLabel(p.role)}`))))),
    el("button", { type: "button", className: "danger", "aria-label": t("admin.meetings.end_of", { title: m.title }),
                   onclick: () => endMeeting(m) }, t("admin.meetings.end")))));
}

async function endMeeting(meeting) {
  if (!confirm(t("admin.meetings.end_confirm", { title: meeting.title }))) return;
  await act("meetings", () => call("POST", `/api/v1/meetings/${encodeURIComponent(meeting.id)}/end`),
            t("admin.meetings.ended_done", { title: meeting.title }));
}

// ---------------------------------------------------------------- recordings and storage
async function loadRecordings() {
  state.recordings = await call("GET", "/api/v1/admin/recordings?limit=500");
  drawRecordings();
}

function drawRecordings() {
  if (!state.recordings) return;
  const { recordings, storage } = state.recordings;
  $("#storage").textContent = t("admin.recordings.storage", {
    total: byteSize(storage.total), recordings: byteSize(storage.recordings), exports: byteSize(storage.exports),
    files: byteSize(storage.files) });
  $("#recordings .empty").hidden = recordings.length > 0;
  $("#recordings-table").hidden = recordings.length === 0;
  $("#recordings-table tbody").replaceChildren(...recordings.map((r) => el("tr", { "aria-label": r.meeting_title },
    el("td", {}, r.room ? t("admin.recordings.in_room", { title: r.meeting_title, room: r.room }) : r.meeting_title),
    el("td", {}, when(r.started_at)),
    el("td", {}, duration(r.duration_s)),
    el("td", {}, byteSize(r.size + r.exports_size)),
    el("td", {}, label(`admin.recording.${r.status}`, r.status)),
    el("td", { className: "actions" }, el("button", {
      type: "button", className: "ghost danger-text", disabled: r.status === "recording",
      "aria-label": t("admin.recordings.delete_of", { title: r.meeting_title, when: when(r.started_at) }),
      onclick: () => deleteRecording(r) }, t("admin.recordings.delete"))))));
}

async function deleteRecording(recording) {
  if (!confirm(t("admin.recordings.delete_confirm", { title: recording.meeting_title }))) return;
  await act("recordings", () => call("DELETE", `/api/v1/recordings/${encodeURIComponent(recording.id)}`),
            t("admin.recordings.deleted_done", { title: recording.meeting_title }));
}

// ---------------------------------------------------------------- audit log
function auditFilters() {
  const form = $("#audit-form");
  const params = new URLSearchParams();
  for (const name of ["meeting_id", "actor_id", "action"]) if (form[name].value) params.set(name, form[name].value);
  for (const name of ["since", "until"]) {
    if (form[name].value) params.set(name, new Date(form[name].value).toISOString());
  }
  return params;
}

function fillSelect(select, options) {
  const chosen = select.value;
  const first = select.options[0];
  select.replaceChildren(first, ...options.map(([value, text]) => el("option", { value }, text)));
  select.value = options.some(([value]) => value === chosen) ? chosen : "";
}

async function loadAuditChoices() {
  const [{ users }, created] = await Promise.all([
    call("GET", "/api/v1/users?limit=500"),
    call("GET", "/api/v1/audit?action=meeting.created&limit=500"),
  ]);
  userNames = new Map(users.map((u) => [u.id, u.name]));
  const form = $("#audit-form");
  fillSelect(form.actor_id, users.map((u) => [u.id, `${u.name} <${u.email}>`]));
  fillSelect(form.meeting_id, created.events.filter((e) => e.meeting_id)
    .map((e) => [e.meeting_id, e.meeting_title ?? e.meeting_id]));
  fillSelect(form.action, created.actions.map((a) => [a, actionLabel(a)]));
}

async function loadAudit() {
  await loadAuditChoices();
  const params = auditFilters();
  params.set("limit", AUDIT_PAGE);
  params.set("offset", auditOffset);
  state.audit = await call("GET", `/api/v1/audit?${params}`);
  drawAudit();
}

let userNames = new Map();  // id -> name, for the audit events' details

/** An event's detail as key=value pairs; an account it names, by its name. */
function detailText(detail) {
  return Object.entries(detail).map(([k, v]) => {
    const text = typeof v === "string" ? v : JSON.stringify(v);
    return k === "user_id" && userNames.has(v) ? `user=${userNames.get(v)}` : `${k}=${text}`;
  }).join(", ");
}

function drawAudit() {
  if (!state.audit) return;
  const { events, total } = state.audit;
  $("#audit-table tbody").replaceChildren(...events.map((e) => el("tr", { "data-action": e.action },
    el("td", { className: "nowrap" }, when(e.at)),
    el("td", {}, e.actor_name ?? (e.actor_id ? e.actor_id : t("admin.audit.system"))),
    el("td", {}, el("span", { title: e.action }, actionLabel(e.action))),
    el("td", {}, e.meeting_title ?? ""),
    el("td", { className: "detail" }, detailText(e.detail)))));
  $("#audit-count").textContent = total
    ? t("admin.audit.count", { from: auditOffset + 1, to: auditOffset + events.length, total })
    : t("admin.audit.none");
  $("#audit-newer").disabled = auditOffset === 0;
  $("#audit-older").disabled = auditOffset + events.length >= total;
}

async function exportAudit() {
  showError("audit", null);
  try {
    const path = `/api/v1/audit/export.csv?${auditFilters()}`;
    const get = () => fetch(path, { headers: { Authorization: `Bearer ${tokens()?.access_token}` } });
    let response = await get();
    if (response.status === 401) {  // the access token expired: call() refreshes it
      await call("GET", "/api/v1/users/me");
      response = await get();
    }
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    const name = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") || "")?.[1] ?? "audit.csv";
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    say(t("admin.audit.exported"));
    await loadAudit();
  } catch (error) { showError("audit", error); }
}

// ---------------------------------------------------------------- health
async function loadHealth() {
  $("#overall").textContent = t("admin.health.checking");
  state.health = await call("GET", "/api/v1/admin/health");
  drawHealth();
}

function drawHealth() {
  if (!state.health) return;
  const { state: overall, components } = state.health;
  $("#overall").replaceChildren(t("admin.health.overall"), " ",
                                el("span", { className: `badge ${overall}` }, t(`admin.state.${overall}`)));
  $("#health-table tbody").replaceChildren(...components.map((c) => el("tr", { "aria-label": c.component },
    el("td", {}, c.component),
    el("td", {}, el("span", { className: `badge ${c.state === "n/a" ? "na" : c.state}` },
                    label(`admin.state.${c.state === "n/a" ? "na" : c.state}`, c.state))),
    el("td", {}, c.version || "–"),
    el("td", { className: "number" }, c.ms === null ? "–" : new Intl.NumberFormat(language()).format(c.ms)),
    el("td", { className: "detail" }, c.detail))));
}

// ---------------------------------------------------------------- start
async function start() {
  if (!tokens()) { location.replace("/"); return; }
  try {
    me = await call("GET", "/api/v1/users/me");
  } catch { location.replace("/"); return; }
  $("#who-name").textContent = me.name;
  try {
    await call("GET", "/api/v1/users?limit=1");  // the API decides who is an administrator
  } catch (error) {
    if (error.status === 403) $("#denied").hidden = false;
    else location.replace("/");
    return;
  }
  $("#console").hidden = false;
  showTab(location.hash.slice(1));
}

for (const tab of TABS) {
  $(`#tab-${tab}`).addEventListener("click", () => showTab(tab));
  $(`#tab-${tab}`).addEventListener("keydown", tabKeys);
}
for (const button of document.querySelectorAll(".refresh")) {
  button.addEventListener("click", () => load(button.closest("section").id));
}

$("#invite-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const body = { email: form.email.value, role: form.role.value };
  if (form.name.value.trim()) body.name = form.name.value;
  showError("users", null);
  try {
    const link = await call("POST", "/api/v1/users/invitations", body);
    form.reset();
    showLink("invite", link);
    say(t("admin.link.invite_done", { name: link.user.name }));
    await loadUsers();
  } catch (error) { showError("users", error); }
});

$("#copy-link").addEventListener("click", async () => {
  $("#link").select();
  await navigator.clipboard?.writeText($("#link").value).catch(() => {});
  say(t("admin.link.copied"));
});

$("#audit-form").addEventListener("submit", (event) => { event.preventDefault(); auditOffset = 0; load("audit"); });
$("#audit-clear").addEventListener("click", () => { $("#audit-form").reset(); auditOffset = 0; load("audit"); });
$("#audit-export").addEventListener("click", exportAudit);
$("#audit-newer").addEventListener("click", () => { auditOffset = Math.max(0, auditOffset - AUDIT_PAGE); load("audit"); });
$("#audit-older").addEventListener("click", () => { auditOffset += AUDIT_PAGE; load("audit"); });

$("#signout").addEventListener("click", async () => { if (!await signOut()) location.replace("/"); });

$("#languages").append(languagePicker());
translatePage();
window.addEventListener("languagechange", () => {
  if (!me || $("#console").hidden) return;
  drawUsers(); drawLink(); drawMeetings(); drawRecordings(); drawHealth(); drawAudit();
  const form = $("#audit-form");
  for (const option of form.action.options) if (option.value) option.textContent = actionLabel(option.value);
});
start();
