// Home: first-admin setup, sign in, create a meeting, list my meetings with their join links.
import { call, saveTokens, signIn, signInWithRefreshToken, signOut, tokens } from "/static/api.js";
import { $, el } from "/static/dom.js";
import { errorText, languagePicker, t, translatePage } from "/static/i18n.js";
import { recordingsButton } from "/static/recordings.js";
import { transcriptButton } from "/static/transcript.js";

const show = (id) => { for (const s of ["setup", "set-password", "signin", "dashboard"]) $(`#${s}`).hidden = s !== id; };

function formError(form, error) { form.querySelector(".error").textContent = error ? errorText(error) : ""; }

let oidcProvider = null;  // the OpenID provider's name, when it has a sign-in button

async function showSignIn(error) {
  show("signin");
  $("#signin-form .error").textContent = error || "";
  try {
    oidcProvider = (await call("GET", "/api/v1/auth/methods")).oidc;
  } catch { oidcProvider = null; }
  $("#oidc-signin").hidden = !oidcProvider;
  $("#oidc-signin a").textContent = oidcProvider ? t("signin.with", { provider: oidcProvider }) : "";
}

async function start() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const setupToken = fragment.get("setup");
  if (setupToken && !tokens()) { show("setup"); $("#setup-form").dataset.token = setupToken; return; }
  if (fragment.has("set-password")) {  // an administrator's one-time link (an invitation, a reset)
    show("set-password");
    $("#set-password-form").dataset.token = fragment.get("set-password");
    return;
  }
  if (fragment.has("oidc") || fragment.has("oidc_error")) {
    history.replaceState(null, "", "/");  // the token in the address works once: take it out at once
    if (fragment.has("oidc_error") || !await signInWithRefreshToken(fragment.get("oidc"))) {
      saveTokens(null);
      const reason = fragment.get("oidc_error");
      await showSignIn(reason?.startsWith("oidc_") ? t(`oidc.${reason}`) : t("oidc.failed"));
      return;
    }
  }
  if (!tokens()) { await showSignIn(); return; }
  try {
    const me = await call("GET", "/api/v1/users/me");
    $("#who-name").textContent = me.name;
    $("#admin-link").hidden = me.role !== "admin";
    $("#who").hidden = false;
    show("dashboard");
    await listMeetings();
  } catch {
    await showSignIn();
  }
}

let shown = [];  // the meetings listed, drawn again in another language

async function listMeetings() {
  const { meetings } = await call("GET", "/api/v1/meetings");
  shown = meetings;
  drawMeetings();
}

function drawMeetings() {
  const meetings = shown;
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
    const role = m.my_role ? t(`role.${m.my_role}`) : "";
    meta.textContent = [m.code, role, m.status === "ended" ? t("home.ended") : ""].filter(Boolean).join(" · ");
    if (m.e2ee) meta.append(" · ", el("span", { className: "meeting-e2ee" }, t("e2ee.list_marker")));
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "ghost";
    copy.textContent = t("home.copy_link");
    copy.setAttribute("aria-label", t("home.copy_link_of", { title: m.title }));
    copy.addEventListener("click", async () => {
      await navigator.clipboard?.writeText(m.join_url).catch(() => {});
      copy.textContent = t("home.copied");
      setTimeout(() => { copy.textContent = t("home.copy_link"); }, 1500);
    });
    const join = document.createElement("a");
    join.className = "button";
    join.href = `/m/${m.code}`;
    join.textContent = t("home.join");
    join.setAttribute("aria-label", t("home.join_meeting", { title: m.title }));
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

$("#set-password-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  try {
    saveTokens(await call("POST", "/api/v1/auth/set-password", { token: form.dataset.token, password: form.password.value }));
    history.replaceState(null, "", "/");  // the link is spent
    form.reset();
    formError(form, null);
    await start();
  } catch (error) { formError(form, error); }
});

$("#create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const body = { title: form.title.value, lobby: form.lobby.checked, allow_guests: form.allow_guests.checked,
                 e2ee: form.e2ee.checked };
  if (form.password.value) body.password = form.password.value;
  try {
    await call("POST", "/api/v1/meetings", body);
    form.reset();
    formError(form, null);
    await listMeetings();
  } catch (error) { formError(form, error); }
});

$("#signout").addEventListener("click", async () => {
  if (await signOut()) return;  // to the OpenID provider, and back
  $("#who").hidden = true;
  show("signin");
});

$("#languages").append(languagePicker());
translatePage();
start();
window.addEventListener("languagechange", () => {
  if (oidcProvider) $("#oidc-signin a").textContent = t("signin.with", { provider: oidcProvider });
  drawMeetings();
});
