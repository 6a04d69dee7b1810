// The frame encryption of an end-to-end encrypted meeting (e2ee.js starts it; docs/meetings.md,
// "End-to-end encryption"). Every encoded frame the page sends is encrypted here with AES-GCM under
// the sender's current frame key, every frame it receives decrypted, before the browser packetises
// or decodes it; a frame that cannot be decrypted is dropped, never shown.
//
// A frame on the wire: its first bytes as they were (10 of a VP8 key frame, 3 of a VP8 delta
// frame, 1 of an Opus frame: what the SFU and the receiving browser read to find key frames and
// picture sizes), the rest encrypted with those bytes as additional data, then a trailer: the
// 12-byte IV and the 4-byte key id (big-endian; a generation of 24 bits, the sender's fresh random
// key, and 8 bits counting the times that key was ratcheted forward since).
//
// The frames reach this worker either as RTCRtpScriptTransform events (onrtctransform) or, on a
// Chromium without that, as the streams of createEncodedStreams() posted by the page.
"use strict";

const IV_BYTES = 12;
const TRAILER = IV_BYTES + 4;
const TAG_BYTES = 16;
const MAX_AHEAD = 16;  // ratchet steps a receiver takes by itself to catch up with a sender
const RATCHET_INFO = new TextEncoder().encode("confmeet e2ee ratchet");

const keys = new Map();   // key id -> AES-GCM CryptoKey, for decrypting
const latest = new Map(); // generation -> {index, raw}: the newest key known, to ratchet on from
let sending = null;       // {id, key}: what this page encrypts with; none yet: nothing is sent
let pendingSend = null;   // a fresh key to switch to at `at` (ms), once the others have it
const counters = { encrypted: 0, decrypted: 0, dropped: 0, undecryptable: 0 };

const keyId = (generation, index) => ((generation << 8) | index) >>> 0;

function importFrameKey(raw) {
  return crypto.subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
}

/** The key after `raw`: HKDF-SHA-256 of it (who holds only the later key cannot go back). */
async function ratchet(raw) {
  const base = await crypto.subtle.importKey("raw", raw, "HKDF", false, ["deriveBits"]);
  const bits = await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: new Uint8Array(32),
                                                info: RATCHET_INFO }, base, 256);
  return new Uint8Array(bits);
}

async function learn(generation, index, raw) {
  const id = keyId(generation, index);
  keys.set(id, await importFrameKey(raw));
  const known = latest.get(generation);
  if (!known || known.index < index) latest.set(generation, { index, raw });
  while (keys.size > 256) keys.delete(keys.keys().next().value);  // the oldest first
  return keys.get(id);
}

/** The key a received frame names: known, or ratcheted to from the newest of its generation. */
async function keyFor(id) {
  const found = keys.get(id);
  if (found) return found;
  const generation = id >>> 8, index = id & 0xff;
  const known = latest.get(generation);
  if (!known || index <= known.index || index - known.index > MAX_AHEAD) return null;
  let { raw } = known;
  for (let i = known.index + 1; i <= index; i++) {
    raw = await ratchet(raw);
    await learn(generation, i, raw);
  }
  return keys.get(id) ?? null;
}

/** How many leading bytes of a frame stay in the clear (see the top of the file). */
function clearBytes(kind, data) {
  if (kind === "audio") return Math.min(1, data.length);
  return Math.min(data.length > 0 && (data[0] & 1) === 0 ? 10 : 3, data.length);
}

const SUPPORTED = new Set(["video/vp8", "audio/opus"]);
function codecOk(frame) {
  const mime = frame.getMetadata?.().mimeType;
  return !mime || SUPPORTED.has(mime.toLowerCase());
}

async function encrypt(kind, frame, controller) {
  if (pendingSend && Date.now() >= pendingSend.at) { sending = pendingSend; pendingSend = null; }
  const data = new Uint8Array(frame.data);
  if (data.length === 0) { controller.enqueue(frame); return; }
  if (!sending || !codecOk(frame)) { counters.dropped++; return; }  // never anything in the clear
  const clear = clearBytes(kind, data);
  const iv = crypto.getRandomValues(new Uint8Array(IV_BYTES));
  const header = data.subarray(0, clear);
  const sealed = new Uint8Array(await crypto.subtle.encrypt(
    { name: "AES-GCM", iv, additionalData: header }, sending.key, data.subarray(clear)));
  const out = new Uint8Array(clear + sealed.length + TRAILER);
  out.set(header);
  out.set(sealed, clear);
  out.set(iv, clear + sealed.length);
  new DataView(out.buffer).setUint32(out.length - 4, sending.id);
  frame.data = out.buffer;
  counters.encrypted++;
  controller.enqueue(frame);
}

async function decrypt(kind, frame, controller) {
  const data = new Uint8Array(frame.data);
  if (data.length === 0) { controller.enqueue(frame); return; }
  const clear = clearBytes(kind, data);
  if (data.length < clear + TAG_BYTES + TRAILER) { counters.undecryptable++; return; }
  const id = new DataView(data.buffer, data.byteOffset, data.length).getUint32(data.length - 4);
  const key = await keyFor(id);
  if (!key) { counters.undecryptable++; return; }
  const iv = data.subarray(data.length - TRAILER, data.length - 4);
  let plain;
  try {
    plain = new Uint8Array(await crypto.subtle.decrypt({ name: "AES-GCM", iv, additionalData: data.subarray(0, clear) },
                                                       key, data.subarray(clear, data.length - TRAILER)));
  } catch {
    counters.undecryptable++;
    return;
  }
  const out = new Uint8Array(clear + plain.length);
  out.set(data.subarray(0, clear));
  out.set(plain, clear);
  frame.data = out.buffer;
  counters.decrypted++;
  controller.enqueue(frame);
}

function pipe({ readable, writable, operation, kind }) {
  const step = operation === "encrypt" ? encrypt : decrypt;
  readable.pipeThrough(new TransformStream({ transform: (frame, controller) => step(kind, frame, controller) }))
    .pipeTo(writable).catch(() => {});  // ends with the sender or receiver
}

// RTCRtpScriptTransform (Firefox, Safari, Chromium from 141).
self.onrtctransform = ({ transformer }) => {
  pipe({ readable: transformer.readable, writable: transformer.writable, ...transformer.options });
};

self.onmessage = async ({ data: message }) => {
  switch (message.type) {
    case "streams":  // createEncodedStreams() on an older Chromium
      pipe(message);
      break;
    case "send": {  // our own key: now, or after `delay` ms (a fresh key the others must get first)
      const key = { id: keyId(message.generation, message.index), key: await importFrameKey(message.raw) };
      if (message.delay) pendingSend = { ...key, at: Date.now() + message.delay };
      else { sending = key; pendingSend = null; }
      break;
    }
    case "key":  // someone else's, unwrapped by the page
      await learn(message.generation, message.index, message.raw);
      break;
    case "forget":  // the generations of someone who left
      for (const generation of message.generations) {
        latest.delete(generation);
        for (const id of [...keys.keys()]) if (id >>> 8 === generation) keys.delete(id);
      }
      break;
    default:
      break;
  }
};

setInterval(() => self.postMessage({ type: "counters", ...counters, key_id: sending?.id ?? null }), 500);
