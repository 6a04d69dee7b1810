// The browser's client of the signaling protocol (docs/protocol.md): one WebSocket carrying JSON,
// requests answered by id, server events handed to listeners, a ping every 5 s, and — when the
// socket drops without `leave` — reconnecting with `resume` for as long as the server keeps the seat.

export const RESUME_WINDOW_MS = 30_000;
// A silent connection (its server's machine gone, nothing refusing) is dropped, and resumed
// elsewhere, within these two: 10 s at most.
const PING_INTERVAL_MS = 5_000;
const PING_TIMEOUT_MS = 5_000;
const REQUEST_TIMEOUT_MS = 15_000;
const BACKOFF_MS = [0, 250, 500, 1000, 2000];
const ADMISSION = Symbol("admission");  // the pending "request" of someone waiting in the lobby

// Close codes after which reconnecting cannot help, with what the person is told.
const FINAL_CLOSES = {
  4001: ["unauthorized", "Your sign-in has expired. Sign in again to rejoin."],
  4010: ["meeting_ended", "The meeting has ended."],
  4011: ["replaced", "You joined this meeting again from another tab or device."],
  4013: ["removed", "A moderator removed you from the meeting."],
  4014: ["denied", "The host did not let you in."],
};
// Error codes caused by what the person asked for: they can change it and try again.
const USER_ERRORS = new Set(["not_found", "wrong_password", "forbidden", "locked", "denied", "session_expired"]);
const FINAL_CODES = new Set(Object.values(FINAL_CLOSES).map(([code]) => code));
// Error codes that mean the connection ended.
const CLOSING_ERRORS = new Set([...FINAL_CODES, "disconnected", "timeout"]);

/** A refusal or failure, typed by what can be done about it (see errorFor). */
export class SignalingError extends Error {
  constructor(code, message, re) {
    super(message || code);
    this.name = this.constructor.name;
    this.code = code;
    this.re = re;
  }
}
/** The person asked for something the server refused: a wrong password, an unknown meeting. */
export class UserError extends SignalingError {}
/** The client sent something the server could not use: a bug here or there. */
export class ProtocolError extends SignalingError {}
/** The connection ended (dropped, timed out, kicked, meeting ended) before a reply came. */
export class ConnectionError extends SignalingError {}

function errorFor(code, message, re) {
  if (USER_ERRORS.has(code)) return new UserError(code, message, re);
  if (CLOSING_ERRORS.has(code)) return new ConnectionError(code, message, re);
  return new ProtocolError(code, message, re);
}

function signalingUrl(token) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws/signaling?token=${encodeURIComponent(token)}`;
}

/**
 * Events (listen with `on(type, handler)`): every server event by its `type` (`offer`,
 * `participant_joined`, `active_speaker`, ...) and the client's own:
 * `waiting` (the `waiting` reply of a join: in the lobby until a host admits you), `reconnecting`
 * (the socket dropped; resuming), `resumed` (the `joined` reply of the resume), `closed` ({error}:
 * the session is over; error is null after `leave`).
 */
export class Signaling {
  #token;
  #socket = null;
  #nextId = 1;
  #pending = new Map();
  #listeners = new Map();
  #join = null;
  #session = null;
  #pingTimer = null;
  #state = "idle";
  #finished = false;
  #opening = null;

  /** @param {() => Promise<string>} token gives a valid access token for each connection. */
  constructor(token) {
    this.#token = token;
  }

  /** idle (not in a meeting), connecting (joining), joined, reconnecting or closed. */
  get state() { return this.#state; }

  on(type, handler) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(handler);
    return () => this.#listeners.get(type).delete(handler);
  }

  /** Open the socket ahead of joining, to join faster (join opens it if need be). */
  connect() {
    if (this.#socket?.readyState === WebSocket.OPEN) return Promise.resolve();
    this.#opening ??= this.#open().finally(() => { this.#opening = null; });
    return this.#opening;
  }

  /**
   * Join a meeting; resolves with `joined` (after a wait in the lobby, if the meeting has one),
   * rejects with a SignalingError. After a UserError (a wrong password, say) the client may try again.
   */
  async join({ meeting, name, password }) {
    if (this.#state !== "idle") throw new ProtocolError("already_joined", "This client has already joined.");
    const fields = { meeting };
    if (name) fields.name = name;
    if (password) fields.password = password;
    this.#state = "connecting";
    try {
      await this.connect();
      let joined = await this.request("join", fields);
      if (joined.type === "waiting") {
        this.#emit("waiting", joined);
        joined = await new Promise((resolve, reject) => {
          this.#pending.set(ADMISSION, { resolve, reject, timer: null, socket: this.#socket });
        });
      }
      this.#join = fields;
      this.#session = joined.session;
      this.#state = "joined";
      return joined;
    } catch (error) {
      this.#state = "idle";
      throw error;
    }
  }

  /** Send a request; resolves with the reply, rejects with a SignalingError. */
  request(type, fields = {}, timeoutMs = REQUEST_TIMEOUT_MS) {
    const socket = this.#socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      return Promise.reject(new ConnectionError("disconnected", "Not connected to the meeting."));
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new ConnectionError("timeout", `No reply to ${type} within ${timeoutMs / 1000} s.`, id));
        if (type === "ping") this.#dropped(socket);  // a silent connection is a dropped one
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer, socket });
      socket.send(JSON.stringify({ ...fields, type, id }));
    });
  }

  /** Leave the meeting: the server frees the seat at once. */
  async leave() {
    if (this.#state === "closed") return;
    this.#state = "closed";  // a drop from here on is no reason to resume
    try {
      await this.request("leave", {}, 3000);
    } catch { /* the server frees the seat when the socket closes after a leave anyway */ }
    this.#finish(null);
  }

  /** Leave without waiting for the reply, for a page that is going away. */
  leaveNow() {
    if (this.#state === "closed") return;
    if (this.#socket?.readyState === WebSocket.OPEN) {
      this.#socket.send(JSON.stringify({ type: "leave", id: this.#nextId++ }));
    }
    this.#finish(null);
  }

  #emit(type, detail) {
    for (const handler of this.#listeners.get(type) ?? []) {
      try { handler(detail); } catch (error) { console.error(`signaling ${type} handler`, error); }
    }
  }

  async #open() {
    const socket = new WebSocket(signalingUrl(await this.#token()));
    this.#socket = socket;
    socket.onmessage = (event) => this.#receive(event.data);
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onclose = (event) => {
        this.#release(socket, finalClose(event.code));
        reject(finalClose(event.code) ?? new ConnectionError("disconnected", "Cannot reach the meeting server."));
      };
    });
    socket.onclose = (event) => this.#dropped(socket, event.code);
    this.#pingTimer = setInterval(() => this.request("ping", {}, PING_TIMEOUT_MS).catch(() => {}), PING_INTERVAL_MS);
  }

  #receive(text) {
    let message;
    try { message = JSON.parse(text); } catch { return; }
    const admitted = message.type === "joined" && message.re === undefined;
    const key = admitted ? ADMISSION : message.re;
    const pending = key !== undefined ? this.#pending.get(key) : undefined;
    if (pending) {
      this.#pending.delete(key);
      clearTimeout(pending.timer);
      if (message.type === "error") pending.reject(errorFor(message.code, message.message, message.re));
      else pending.resolve(message);
      return;
    }
    this.#emit(message.type, message);
  }

  // The socket is gone (closed by either side, or silent): fail its requests, then resume or stop.
  #dropped(socket, code) {
    if (socket !== this.#socket) return;
    const final = finalClose(code);
    this.#release(socket, final);
    if (this.#state !== "joined") return;
    if (final || code === 1000) this.#finish(final);
    else this.#resume();
  }

  // Stop using a socket; its unanswered requests fail with `error` (or as dropped).
  #release(socket, error = null) {
    if (socket === this.#socket) {
      clearInterval(this.#pingTimer);
      this.#socket = null;
    }
    socket.onclose = socket.onmessage = socket.onopen = null;
    if (socket.readyState <= WebSocket.OPEN) socket.close(1000);
    for (const [id, pending] of this.#pending) {
      if (pending.socket !== socket) continue;
      clearTimeout(pending.timer);
      this.#pending.delete(id);
      pending.reject(error ?? new ConnectionError("disconnected", "The connection to the meeting dropped.", id));
    }
  }

  async #resume() {
    this.#state = "reconnecting";
    this.#emit("reconnecting", {});
    const deadline = Date.now() + RESUME_WINDOW_MS;
    for (let attempt = 0; ; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)]));
      if (this.#state !== "reconnecting") return;
      if (Date.now() > deadline) {
        this.#finish(new ConnectionError("disconnected", "The connection to the meeting was lost."));
        return;
      }
      try {
        await this.#open();
        if (this.#state !== "reconnecting") {  // left meanwhile
          this.#release(this.#socket);
          return;
        }
        const joined = await this.request("join", { ...this.#join, resume: this.#session });
        if (this.#state !== "reconnecting") return;  // leave() has sent its `leave` after this join
        this.#session = joined.session;
        this.#state = "joined";
        this.#emit("resumed", joined);
        return;
      } catch (error) {
        if (this.#socket) this.#release(this.#socket);
        if (error instanceof UserError || FINAL_CODES.has(error.code)) {
          this.#finish(error);
          return;
        }
      }
    }
  }

  // The session is over: close the socket and tell the listeners, once.
  #finish(error) {
    if (this.#socket) this.#release(this.#socket, error);
    this.#state = "closed";
    if (this.#finished) return;
    this.#finished = true;
    this.#emit("closed", { error });
  }
}

function finalClose(code) {
  const final = FINAL_CLOSES[code];
  return final ? new ConnectionError(final[0], final[1]) : null;
}
