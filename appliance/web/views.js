// Which of the others' cameras this page shows. The SFU sends nothing of a camera that is not
// shown (video_layer with max_layer -1): a tile scrolled out of sight or on another page of a
// phone's tiles (pages.js), every tile while the page is in the background, and in low-bandwidth
// mode every camera but the last speaker's. Shown again, the picture comes back from a keyframe
// the SFU asks for at once.

export class Views {
  /** `send(publisher, trackId, maxLayer)` tells the SFU (maxLayer -1: none, null: any). */
  constructor(send) {
    this.send = send;
    this.cameras = new Map();   // participant -> {trackId, element, onScreen, sent: the max_layer asked}
    this.lowBandwidth = false;
    this.speaker = null;        // the last other participant who had the floor
    this.scheduled = false;
    this.observer = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        const camera = [...this.cameras.values()].find((c) => c.element === entry.target);
        if (camera) camera.onScreen = entry.isIntersecting;
      }
      this.update();
    });
    document.addEventListener("visibilitychange", () => this.update());
  }

  /** A camera received from `participant`, shown in `element` (its tile). */
  track(participant, trackId, element) {
    const known = this.cameras.get(participant);
    if (known?.trackId === trackId && known.element === element) return;
    if (known) this.observer.unobserve(known.element);
    this.cameras.set(participant, { trackId, element, onScreen: true, sent: null });
    this.observer.observe(element);
    this.update();
  }

  forget(participant) {
    const known = this.cameras.get(participant);
    if (!known) return;
    this.observer.unobserve(known.element);
    this.cameras.delete(participant);
  }

  clear() {
    for (const participant of [...this.cameras.keys()]) this.forget(participant);
  }

  setLowBandwidth(on) {
    this.lowBandwidth = on;
    this.update();
  }

  setSpeaker(participant) {
    this.speaker = participant;
    this.update();
  }

  /** Whether this page wants `participant`'s camera now. */
  wants(participant) {
    const camera = this.cameras.get(participant);
    if (!camera || document.visibilityState === "hidden" || !camera.onScreen) return false;
    return !this.lowBandwidth || participant === this.speaker;
  }

  /** Tell the SFU what changed, once for everything that changes in one task. */
  update() {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      for (const [participant, camera] of this.cameras) {
        const maxLayer = this.wants(participant) ? null : -1;
        if (maxLayer === camera.sent) continue;  // null at first: the SFU sends what is not refused
        camera.sent = maxLayer;
        this.send(participant, camera.trackId, maxLayer);
      }
    });
  }
}
