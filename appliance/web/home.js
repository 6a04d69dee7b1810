// Home: first-admin setup, sign in, create a meeting, list my meetings with their join links.
import { call, saveTokens, signIn, signInWithRefreshToken, signOut, tokens } from "/static/api.js";
import { recordingsButton } from "/static/recordings.js";
import { transcriptButton } from "/static/transcript.js";

const $ = (sel) => document.querySelector(sel);
const show = (id) => { for (const s of ["setup", "signin", "dashboard"]) $(`#${s}`).hidden = s !== id; };

function formError(form, error) { form.querySelector(".error").textContent = error ? error.message : ""; }

// Why the OpenID provider's sign-in did not end here (the callback's #oidc_error=<code>).
const OIDC_ERRORS = {
  oidc_cancelled: "Sign-in was cancelled at the provider.",
  oidc_expired: "That sign-in took too long or began in another browser: try again.",
  oidc_invalid_token: "The provider's answer could not be trusted: ask your administrator to check the log.",
  oidc_no_email: "The provider gave no verified e-mail address for your account.",
  oidc_not_allowed: "Your account may not sign in here: ask your administrator.",
  oidc_unavailable: "The sign-in provider cannot be reached now: try again later.",
};

async function showSignIn(error) {
  show("signin");
  $("#signin-form .error").textContent = error || "";
  try {
    const methods = await call("GET", "/api/v1/auth/methods");
    $("#oidc-signin").hidden = !methods.oidc;
    if (methods.oidc) $("#oidc-signin span").textContent = methods.oidc;
  } catch { $("#oidc-signin").hidden = true; }
}

async function start() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const setupToken = fragment.get("setup");
  if (setupToken && !tokens()) { show("setup"); $("#setup-form").dataset.token = setupToken; return; }
  if (fragment.has("oidc") || fragment.has("oidc_error")) {
    history.replaceState(null, "", "/");  // the token in the address works once: take it out at once
    if (fragment.has("oidc_error") || !await signInWithRefreshToken(fragment.get("oidc"))) {
      saveTokens(null);
      await showSignIn(OIDC_ERRORS[fragment.get("oidc_error")] || "Sign-in with the provider failed: try again.");
      return;
    }
  }
  if (!tokens()) { await showSignIn(); return; }
  try {
    const me = await call("GET", "/api/v1/users/me");
    $("#who-name").textContent = me.name;
    $("#who").hidden = false;
    show("dashboard");
    await listMeetings();
  } catch {
    await showSignIn();
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
