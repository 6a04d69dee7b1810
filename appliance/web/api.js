// The appliance's REST API from the browser: tokens kept in localStorage, refreshed on expiry.
const KEY = "confmeet.tokens";

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

async function send(method, path, body, token) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers["Authorization"] = `Bearer ${token}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
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
  let { response, data } = await send(method, path, body, tokens()?.access_token);
  if (response.status === 401 && tokens() && await refresh()) {
    ({ response, data } = await send(method, path, body, tokens()?.access_token));
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export async function signIn(email, password) {
  saveTokens(await call("POST", "/api/v1/auth/login", { email, password }));
}

export async function signOut() {
  try { await call("POST", "/api/v1/auth/logout"); } finally { saveTokens(null); }
}
