// End-to-end encryption in a meeting that has it on (docs/meetings.md, "End-to-end encryption";
// messages: docs/protocol.md). The frames are encrypted and decrypted in e2ee-worker.js; this
// module agrees on the keys and shows that the meeting is encrypted.
//
// Keys: each page makes an ECDH P-256 key pair (its private half never leaves WebCrypto) and
// announces the public half (`e2ee_key` with `public_key`). Each sender has a 32-byte frame key; it
// gives it to each other participant wrapped with AES-GCM under a key both derive (ECDH, then
// HKDF-SHA-256), in an `e2ee_key` to that participant alone. The server relays and never sees a
// frame key. When someone joins, every sender ratchets its key forward (HKDF) and gives the
// newcomer only the new one: nobody can decrypt what was said before they came. When someone
// leaves, every sender draws a fresh random key and gives it to those who remain: the one who left
// cannot decrypt what comes after.
import { $, el, icon } from "/static/dom.js";
import { t } from "/static/i18n.js";

const SWITCH_AFTER_MS = 1000;  // a fresh key is used once the others have had time to receive it
const WRAP_INFO = new TextEncoder().encode("confmeet e2ee wrap");
const scriptTransform = () => typeof RTCRtpScriptTransform === "function";

/** Whether this browser can take part in an encrypted meeting. */
export function e2eeSupported() {
  return scriptTransform() || (typeof RTCRtpSender !== "undefined" && "createEncodedStreams" in RTCRtpSender.prototype);
}

/** What an RTCPeerConnection needs from the start to be encrypted later (older Chromium only). */
export function e2eePeerConfig(encrypted) {
  return encrypted && !scriptTransform() && e2eeSupported() ? { encodedInsertableStreams: true } : {};
}

const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)));
const unb64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
const randomGeneration = () => crypto.getRandomValues(new Uint32Array(1))[0] & 0xffffff;

export class E2ee {
  /** Made before the peer connection: Chromium encrypts with a sender's transform only if it was
   * set before the first offer (set later, it is ignored and the frames go out as they are). */
  constructor() {
    this.counters = { encrypted: 0, decrypted: 0, dropped: 0, undecryptable: 0, key_id: null };
    this.protected = new WeakSet();
    this.worker = new Worker("/static/e2ee-worker.js", { name: "e2ee" });
    this.worker.onmessage = ({ data }) => { if (data.type === "counters") this.counters = data; };
    this.key = { generation: randomGeneration(), index: 0, raw: crypto.getRandomValues(new Uint8Array(32)) };
    this.#tellWorker(0);
    this.stop = [];
  }

  /** In the meeting (`joined`): agree on keys with the others, show the badge. */
  start(signaling, joined) {
    this.signaling = signaling;
    this.meeting = joined.meeting.id;
    this.me = joined.participant.id;
    this.publicKeys = new Map();  // participant -> their ECDH public key (CryptoKey)
    this.waiting = new Map();     // participant -> wrapped keys that came before their public key
    this.generations = new Map(); // participant -> generations of their keys we hold
    // Events are handled one at a time, in order, once the key pair exists.
    this.queue = this.#start(joined.e2ee?.public_keys ?? {});
    this.stop = [
      signaling.on("e2ee_key", (m) => this.#enqueue(() => this.#received(m))),
      signaling.on("participant_joined", () => this.#enqueue(() => this.#ratchet())),
      signaling.on("participant_left", (m) => this.#enqueue(() => this.#renew(m.participant_id))),
      signaling.on("resumed", (resumed) => this.#enqueue(() => this.#resumed(resumed))),
    ];
    this.#badge();
  }

  async #start(publicKeys) {
    this.pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]);
    await this.#announce();
    for (const [participant, key] of Object.entries(publicKeys)) await this.#announced(participant, key);
  }

  async #announce() {
    const raw = await crypto.subtle.exportKey("raw", this.pair.publicKey);
    await this.signaling.request("e2ee_key", { public_key: b64(raw) });
  }

  // Back on the same seat after a blip: the key messages and the comings and goings sent meanwhile
  // were lost. Announce again (each answers with its key), and give everyone a fresh key of ours.
  async #resumed(joined) {
    const present = new Set(joined.participants.map((p) => p.id));
    for (const participant of [...this.publicKeys.keys()]) if (!present.has(participant)) this.#forget(participant);
    for (const [participant, key] of Object.entries(joined.e2ee?.public_keys ?? {})) {
      await this.#announced(participant, key, { give: false });
    }
    await this.#announce();
    await this.#renew(null);
  }

  #enqueue(step) {
    this.queue = this.queue.then(step).catch((error) => console.warn("e2ee:", error));
  }

  // ------------------------------------------------------------------------- frames
  /** Encrypt what `transceiver` sends (the SFU takes VP8 before H.264, and the worker sends
   * nothing of another codec: it knows where VP8's and Opus's headers end). */
  protectSender(transceiver) {
    const { sender } = transceiver;
    if (this.protected.has(sender)) return;
    this.protected.add(sender);
    this.#attach(sender, "encrypt", sender.track?.kind ?? transceiver.receiver.track.kind);
  }

  /** Decrypt what `receiver` receives (frames that cannot be decrypted are dropped). */
  protectReceiver(receiver) {
    if (this.protected.has(receiver)) return;
    this.protected.add(receiver);
    this.#attach(receiver, "decrypt", receiver.track.kind);
  }

  #attach(endpoint, operation, kind) {
    if (scriptTransform()) {
      endpoint.transform = new RTCRtpScriptTransform(this.worker, { operation, kind });
      return;
    }
    const { readable, writable } = endpoint.createEncodedStreams();
    this.worker.postMessage({ type: "streams", operation, kind, readable, writable }, [readable, writable]);
  }

  // ------------------------------------------------------------------------- keys
  #tellWorker(delay) {
    const { generation, index, raw } = this.key;
    this.worker.postMessage({ type: "send", generation, index, raw: raw.slice(), delay });
  }

  /** The key both ends of a pair wrap frame keys with (the same either way round). */
  async #wrappingKey(publicKey) {
    const shared = await crypto.subtle.deriveBits({ name: "ECDH", public: publicKey }, this.pair.privateKey, 256);
    const base = await crypto.subtle.importKey("raw", shared, "HKDF", false, ["deriveKey"]);
    return crypto.subtle.deriveKey({ name: "HKDF", hash: "SHA-256", salt: new TextEncoder().encode(this.meeting),
                                     info: WRAP_INFO }, base, { name: "AES-GCM", length: 256 }, false,
                                   ["encrypt", "decrypt"]);
  }

  // Bound to who sends to whom, and which key it is: a wrapped key cannot be passed off as another.
  #context(from, to, keyId) { return new TextEncoder().encode(`${this.meeting}|${from}|${to}|${keyId}`); }

  async #give(participant) {
    const publicKey = this.publicKeys.get(participant);
    if (!publicKey) return;
    const { generation, index, raw } = this.key;
    const keyId = ((generation << 8) | index) >>> 0;
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const sealed = await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: this.#context(this.me, participant, keyId) },
                                               await this.#wrappingKey(publicKey), raw);
    const wrapped = new Uint8Array(12 + sealed.byteLength);
    wrapped.set(iv);
    wrapped.set(new Uint8Array(sealed), 12);
    await this.signaling.request("e2ee_key", { to: participant, key_id: keyId, wrapped: b64(wrapped) })
      .catch((error) => { if (error.code !== "not_found") throw error; });  // gone meanwhile
  }

  async #announced(participant, publicKey, { give = true } = {}) {
    this.publicKeys.set(participant, await crypto.subtle.importKey(
      "raw", unb64(publicKey), { name: "ECDH", namedCurve: "P-256" }, false, []));
    if (give) await this.#give(participant);
    for (const message of this.waiting.get(participant) ?? []) await this.#unwrap(message);
    this.waiting.delete(participant);
  }

  async #received(message) {
    if (message.public_key) await this.#announced(message.from, message.public_key);
    else if (this.publicKeys.has(message.from)) await this.#unwrap(message);
    else this.waiting.set(message.from, [...(this.waiting.get(message.from) ?? []), message].slice(-8));
  }

  async #unwrap({ from, key_id: keyId, wrapped }) {
    const bytes = unb64(wrapped);
    let raw;
    try {
      raw = await crypto.subtle.decrypt({ name: "AES-GCM", iv: bytes.subarray(0, 12), additionalData: this.#context(from, this.me, keyId) },
                                        await this.#wrappingKey(this.publicKeys.get(from)), bytes.subarray(12));
    } catch {
      console.warn("e2ee: a key from", from, "could not be unwrapped");
      return;
    }
    const generation = keyId >>> 8;
    this.generations.set(from, new Set([...(this.generations.get(from) ?? []), generation]));
    this.worker.postMessage({ type: "key", generation, index: keyId & 0xff, raw: new Uint8Array(raw) });
  }

  /** Someone joined: our key moves one step on; they get the new one when their public key comes. */
  async #ratchet() {
    if (this.key.index === 255) { await this.#renew(null); return; }
    const base = await crypto.subtle.importKey("raw", this.key.raw, "HKDF", false, ["deriveBits"]);
    const bits = await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: new Uint8Array(32),
                                                  info: new TextEncoder().encode("confmeet e2ee ratchet") }, base, 256);
    this.key = { ...this.key, index: this.key.index + 1, raw: new Uint8Array(bits) };
    this.#tellWorker(0);
  }

  /** Someone left (`gone`): a fresh key, given to everyone who remains, used a moment later. */
  async #renew(gone) {
    if (gone) this.#forget(gone);
    this.key = { generation: randomGeneration(), index: 0, raw: crypto.getRandomValues(new Uint8Array(32)) };
    for (const participant of this.publicKeys.keys()) await this.#give(participant);
    this.#tellWorker(SWITCH_AFTER_MS);
  }

  #forget(participant) {
    this.publicKeys.delete(participant);
    this.waiting.delete(participant);
    this.worker.postMessage({ type: "forget", generations: [...(this.generations.get(participant) ?? [])] });
    this.generations.delete(participant);
  }

  // ------------------------------------------------------------------------- the badge
  #badge() {
    this.info = el("p", { id: "e2ee-info", className: "e2ee-info", role: "note", hidden: true });
    this.button = el("button", { id: "e2ee-badge", className: "e2ee-badge", type: "button", "aria-expanded": "false",
                                 "aria-controls": "e2ee-info", onclick: () => this.#toggleInfo() },
                     icon("lock"), el("span", {}));
    this.button.addEventListener("keydown", (event) => { if (event.key === "Escape") this.#toggleInfo(false); });
    // Over the stage's top left corner: the control bar has no room to spare, least of all on a phone.
    this.box = el("div", { className: "e2ee" }, this.button, this.info);
    $("#stage-main").append(this.box);
    this.relabel = () => this.#label();
    window.addEventListener("languagechange", this.relabel);
    this.#label();
  }

  #label() {
    $("span", this.button).textContent = t("e2ee.badge");
    this.button.title = t("e2ee.badge_title");
    this.button.setAttribute("aria-label", t("e2ee.badge"));
    this.info.textContent = t("e2ee.info");
  }

  #toggleInfo(open = this.info.hidden) {
    this.info.hidden = !open;
    this.button.setAttribute("aria-expanded", String(open));
  }

  close() {
    for (const stop of this.stop) stop();
    if (this.relabel) window.removeEventListener("languagechange", this.relabel);
    this.box?.remove();
    this.worker.terminate();
  }
}
