// The appliance's REST API from the browser: an account's tokens kept in localStorage, refreshed
// on expiry; a guest's token (one meeting, no account) kept in sessionStorage, so that it belongs
// to the tab that joined and goes when the tab closes.
const KEY = "confmeet.tokens";
const GUEST_KEY = "confmeet.guest";
const FROM_PROVIDER = "confmeet.signedInWith";  // "oidc" while the session came from the OpenID provider
let guest = null;  // the guest token this page acts with, when it acts for a guest (actAsGuest)

export function tokens() {
  try { return JSON.parse(localStorage.getItem(KEY)) || null; } catch { return null; }
}

export function saveTokens(pair) {
  if (pair) localStorage.setItem(KEY, JSON.stringify(pair));
  else localStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `request failed (${status})`);
    this.status = status;
    this.code = body?.error?.code;
    this.field = body?.error?.field;
  }
}

// A Blob (a File) is sent as it is, with its own type; anything else as JSON.
async function send(method, path, body, token) {
  const headers = {};
  const raw = body instanceof Blob;
  if (body !== undefined) headers["Content-Type"] = raw ? body.type || "application/octet-stream" : "application/json";
  if (token) headers["Authorization"] = `Bearer ${token}`;
  const payload = body === undefined || raw ? body : JSON.stringify(body);
  const response = await fetch(path, { method, headers, body: payload });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  return { response, data };
}

async function refresh() {
  const current = tokens();
  if (!current?.refresh_token) return false;
  const { response, data } = await send("POST", "/api/v1/auth/refresh", { refresh_token: current.refresh_token });
  if (!response.ok) { saveTokens(null); return false; }
  saveTokens(data);
  return true;
}

export async function call(method, path, body) {
  const bearer = () => guest ?? tokens()?.access_token;
  let { response, data } = await send(method, path, body, bearer());
  if (response.status === 401 && !guest && tokens() && await refresh()) {
    ({ response, data } = await send(method, path, body, bearer()));
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export async function signIn(email, password) {
  saveTokens(await call("POST", "/api/v1/auth/login", { email, password }));
  localStorage.removeItem(FROM_PROVIDER);
  forgetGuest();
}

/** Sign in with the refresh token the OpenID callback handed over (#oidc=...): rotated at once,
 * so the one that was in the address is spent. Says whether it worked. */
export async function signInWithRefreshToken(refreshToken) {
  saveTokens({ refresh_token: refreshToken });
  const ok = await refresh();
  if (ok) {
    forgetGuest();
    localStorage.setItem(FROM_PROVIDER, "oidc");
  }
  return ok;
}

/** Sign out here; a session that came from the OpenID provider ends there too: the browser goes
 * to the provider, which sends it back to the home page. Says whether the browser is going there. */
export async function signOut() {
  const fromProvider = localStorage.getItem(FROM_PROVIDER) === "oidc";
  localStorage.removeItem(FROM_PROVIDER);
  try { await call("POST", "/api/v1/auth/logout"); } finally { saveTokens(null); }
  if (fromProvider) location.assign("/api/v1/auth/oidc/logout");
  return fromProvider;
}

/** Act as the guest of meeting `code` if this tab holds an unexpired guest token for it; says whether it does. */
export function actAsGuest(code) {
  let stored = null;
  try { stored = JSON.parse(sessionStorage.getItem(GUEST_KEY)); } catch { /* none kept */ }
  guest = stored?.code === code && stored.expires_at > Date.now() ? stored.token : null;
  return guest !== null;
}

/** The guest token this page acts with, or null when it acts for an account (or nobody). */
export function guestToken() {
  return guest;
}

/**
 * Become a guest of meeting `code`: a name, and the meeting's password if it has one. Resolves with
 * the meeting ({id, code, title}); an unknown code, a meeting without guests and a wrong password
 * all reject with the same 404.
 */
export async function joinAsGuest(code, name, password) {
  const path = `/api/v1/meetings/by-code/${encodeURIComponent(code)}/guest`;
  const { response, data } = await send("POST", path, password ? { name, password } : { name });
  if (!response.ok) throw new ApiError(response.status, data);
  sessionStorage.setItem(GUEST_KEY, JSON.stringify({ code, token: data.guest_token,
                                                     expires_at: Date.now() + data.expires_in * 1000 }));
  guest = data.guest_token;
  return data.meeting;
}

export function forgetGuest() {
  sessionStorage.removeItem(GUEST_KEY);
  guest = null;
}
