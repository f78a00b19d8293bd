// sbclient.js: a small reconnecting WebSocket client for switchboard apps that speak
// JSON objects. No dependencies, no build step: `import { SbClient } from './sbclient.js'`.
//
//   const c = new SbClient('/chat', {
//     protocols: ['chat.v1'],
//     onopen(c) { /* (re)subscribe: c.position(topic) gives { since, epoch } */ },
//     onmessage(msg, c) { /* one parsed JSON object */ },
//     onstatus(status, detail) { /* 'connecting' | 'online' | 'offline' (detail.retryIn ms) */ },
//   });
//   c.send({ type: 'say', text: 'hi' });   // 'sent', 'queued' (offline) or false (outbox full)
//
// What it does for an app:
// - Reconnects after any close: exponential backoff from `minDelay` (500 ms) doubling to
//   `maxDelay` (15 s), each wait drawn at random from its upper half (jitter), so a
//   restarted server is not hit by every page at once. The backoff resets once a
//   connection has stayed open for `stableAfter` ms (or the app calls `c.connected()`).
// - An outbox: what the app sends while offline is kept (up to `outboxMax` frames) and
//   sent, in order, right after `onopen` has sent its own frames (the resubscriptions).
//   A frame already written to a socket that then closed is not sent again: the app
//   cannot know whether the server saw it, and decides (see `position` below).
// - Positions: `c.seen(topic, pos, epoch)` records the newest position a page has seen
//   in a topic and answers whether `pos` is new (true) or a duplicate/older one (false);
//   `c.position(topic)` gives `{ since, epoch }` for a resubscription that asks the
//   server for exactly what was missed; `c.forget(topic)` drops it.
// - `c.later(frame, seconds)`: send a frame after a delay (a rate-limited request,
//   retried after the server's `retry_after`), through the outbox.
export class SbClient {
  constructor(path, opts = {}) {
    this.url = SbClient.url(path);
    this.protocols = opts.protocols || [];
    this.minDelay = opts.minDelay ?? 500;
    this.maxDelay = opts.maxDelay ?? 15000;
    this.stableAfter = opts.stableAfter ?? 5000;
    this.outboxMax = opts.outboxMax ?? 100;
    this.onopen = opts.onopen || (() => {});
    this.onmessage = opts.onmessage || (() => {});
    this.onstatus = opts.onstatus || (() => {});
    this.ws = null;
    this.attempt = 0;
    this.outbox = [];
    this.positions = new Map(); // topic -> { pos, epoch }
    this.timers = new Set();
    this.retryTimer = 0;
    this.stableTimer = 0;
    this.stopped = false;
    this.generation = 0;        // counts connections: frames remember which one sent them
  }

  // ws:// or wss:// (as the page was loaded) for a path on the page's own host.
  static url(path) {
    if (/^wss?:\/\//.test(path)) return path;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    return `${scheme}://${location.host}${path.startsWith('/') ? '' : '/'}${path}`;
  }

  get online() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  start() {
    this.stopped = false;
    this.open();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.stableTimer);
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
  }

  open() {
    clearTimeout(this.retryTimer);
    this.onstatus('connecting', { attempt: this.attempt });
    let ws;
    try {
      ws = new WebSocket(this.url, this.protocols);
    } catch {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.addEventListener('open', () => {
      if (this.ws !== ws) return;
      this.generation += 1;
      clearTimeout(this.stableTimer);
      this.stableTimer = setTimeout(() => this.connected(), this.stableAfter);
      this.onstatus('online', {});
      this.onopen(this);
      this.flush();
    });
    ws.addEventListener('message', (ev) => {
      if (this.ws !== ws) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg && typeof msg === 'object') this.onmessage(msg, this);
    });
    ws.addEventListener('close', (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearTimeout(this.stableTimer);
      if (!this.stopped) this.retry(ev);
    });
  }

  // The app saw the connection work (e.g. its welcome): the next loss starts the backoff over.
  connected() {
    this.attempt = 0;
  }

  retry(ev) {
    const base = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
    const delay = Math.round(base / 2 + Math.random() * base / 2);
    this.attempt += 1;
    this.onstatus('offline', { retryIn: delay, until: Date.now() + delay, code: ev && ev.code });
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  // Close the socket as a lost network would (for tests, or a page that knows better).
  drop() {
    if (this.ws) this.ws.close();
  }

  // Sends a JSON object now ('sent'), keeps it for the next connection ('queued'), or
  // refuses it when the outbox is full (false).
  send(frame) {
    if (this.online && this.outbox.length === 0) {
      this.ws.send(JSON.stringify(frame));
      return 'sent';
    }
    return this.queue(frame);
  }

  // Sends now if online, never queues: for frames that mean nothing later (typing, pings).
  sendNow(frame) {
    if (!this.online) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  queue(frame) {
    if (this.outbox.length >= this.outboxMax) return false;
    this.outbox.push(frame);
    return 'queued';
  }

  flush() {
    while (this.online && this.outbox.length) this.ws.send(JSON.stringify(this.outbox.shift()));
  }

  // Sends `frame` after `seconds` (through the outbox if the connection is down then).
  later(frame, seconds) {
    const t = setTimeout(() => { this.timers.delete(t); this.send(frame); }, Math.max(0, seconds * 1000));
    this.timers.add(t);
  }

  // Positions ------------------------------------------------------------------------

  // Records `pos` (and `epoch`) as seen in `topic`; true when it is newer than anything
  // seen there before, false for a duplicate or an older one. A different epoch starts
  // the topic over.
  seen(topic, pos, epoch) {
    const p = this.positions.get(topic);
    if (p && epoch !== undefined && p.epoch !== undefined && p.epoch !== epoch) {
      this.positions.set(topic, { pos, epoch });
      return true;
    }
    if (p && pos <= p.pos) return false;
    this.positions.set(topic, { pos, epoch: epoch ?? (p && p.epoch) });
    return true;
  }

  // Sets what was seen in `topic` outright (after a full reload of its history).
  reset(topic, pos, epoch) {
    this.positions.set(topic, { pos, epoch });
  }

  // { since, epoch } for a resubscription, or {} when nothing was seen yet.
  position(topic) {
    const p = this.positions.get(topic);
    return p ? { since: p.pos, epoch: p.epoch } : {};
  }

  forget(topic) {
    this.positions.delete(topic);
  }
}
