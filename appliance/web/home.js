// Home: first-admin setup, sign in, create a meeting, list my meetings with their join links.
import { call, signIn, signOut, tokens } from "/static/api.js";
import { recordingsButton } from "/static/recordings.js";
import { transcriptButton } from "/static/transcript.js";

const $ = (sel) => document.querySelector(sel);
const show = (id) => { for (const s of ["setup", "signin", "dashboard"]) $(`#${s}`).hidden = s !== id; };

function formError(form, error) { form.querySelector(".error").textContent = error ? error.message : ""; }

async function start() {
  const setupToken = new URLSearchParams(location.hash.slice(1)).get("setup");
  if (setupToken && !tokens()) { show("setup"); $("#setup-form").dataset.token = setupToken; return; }
  if (!tokens()) { show("signin"); return; }
  try {
    const me = await call("GET", "/api/v1/users/me");
    $("#who-name").textContent = me.name;
    $("#who").hidden = false;
    show("dashboard");
    await listMeetings();
  } catch {
    show("signin");
  }
}

async function listMeetings() {
  const { meetings } = await call("GET", "/api/v1/meetings");
  const list = $("#meetings");
  list.replaceChildren();
  $("#empty").hidden = meetings.length > 0;
  for (const m of meetings) {
    const item = document.createElement("li");
    const title = document.createElement("div");
    title.className = "meeting-title";
    title.textContent = m.title;
    const meta = document.createElement("div");
    meta.className = "muted";
    meta.textContent = `${m.code} · ${m.my_role}${m.status === "ended" ? " · ended" : ""}`;
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "ghost";
    copy.textContent = "Copy link";
    copy.setAttribute("aria-label", `Copy join link of ${m.title}`);
    copy.addEventListener("click", async () => {
      await navigator.clipboard?.writeText(m.join_url).catch(() => {});
      copy.textContent = "Copied";
      setTimeout(() => { copy.textContent = "Copy link"; }, 1500);
    });
    const join = document.createElement("a");
    join.className = "button";
    join.href = `/m/${m.code}`;
    join.textContent = "Join";
    join.setAttribute("aria-label", `Join ${m.title}`);
    const text = document.createElement("div");
    text.className = "grow";
    text.append(title, meta);
    item.append(text, copy, recordingsButton(m, item), transcriptButton(m, item), join);
    list.append(item);
  }
}

$("#signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  try {
    await signIn(form.email.value, form.password.value);
    formError(form, null);
    await start();
  } catch (error) { formError(form, error); }
});

$("#setup-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  try {
    await call("POST", "/api/v1/setup", { token: form.dataset.token, name: form.name.value,
                                          email: form.email.value, password: form.password.value });
    await signIn(form.email.value, form.password.value);
    history.replaceState(null, "", "/");
    await start();
  } catch (error) { formError(form, error); }
});

$("#create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const body = { title: form.title.value, lobby: form.lobby.checked, allow_guests: form.allow_guests.checked };
  if (form.password.value) body.password = form.password.value;
  try {
    await call("POST", "/api/v1/meetings", body);
    form.reset();
    formError(form, null);
    await listMeetings();
  } catch (error) { formError(form, error); }
});

$("#signout").addEventListener("click", async () => {
  await signOut();
  $("#who").hidden = true;
  show("signin");
});

start();
