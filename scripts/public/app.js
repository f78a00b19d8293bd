// switchboard chat: the browser side of scripts/chat.lua.
// Everything the server or another user sent is put on the page with textContent (links
// are built with DOM calls from checked http(s) URLs), never as HTML.
import { SbClient } from './sbclient.js';

const $ = (id) => document.getElementById(id);
const list = (x) => (Array.isArray(x) ? x : []); // a list, whatever an older server sent

// Who this tab is lives in sessionStorage: two tabs of one browser are two people.
// localStorage only remembers the last nick used, to fill in a new tab's login form.
const STORE_NICK = 'sb.chat.nick';
const STORE_ROOMS = 'sb.chat.rooms';
const STORE_LAST_NICK = 'sb.chat.last-nick';
const TYPING_SEND_EVERY = 3000; // ms between "typing: true" while typing
const TYPING_IDLE = 4000;       // ms without a key before "typing: false"
const TYPING_SHOW = 6000;       // ms a typing indicator stays without an update
const GROUP_WINDOW = 5 * 60;    // s: consecutive messages from one nick are grouped

function load(store, key) {
  try { return store.getItem(key); } catch { return null; }
}

function save(store, key, value) {
  try { store.setItem(key, value); } catch { /* private mode, full: the tab still works */ }
}

const state = {
  status: 'connecting',
  nick: null,            // acknowledged by the server
  wantNick: load(sessionStorage, STORE_NICK) || '',
  rooms: new Map(),      // name -> { members: Set, items: [], unread, typing: Map, live, epoch }
  current: null,
  allRooms: [],
  pmTarget: null,
  pendingJoin: null,     // room the login form asked for
  typingSentAt: 0,
  typingIdleTimer: 0,
  limits: { burst: 10, rate: 5 },
  // What the user wrote that the server has not shown back yet, in order:
  // { ref, room, kind: 'say'|'pm', to, text, state: 'queued'|'sent' }.
  outbox: [],
  nextRef: 1,
  tokens: 10,            // a mirror of the server's rate limit bucket
  tokensAt: 0,
  holdUntil: 0,          // rate-limited by the server until then (ms)
  holdWhy: '',           // why: 'rate_limited', or 'unavailable' (the server could not store text)
  pumpTimer: 0,
  noticeTimer: 0,
};

function savedRooms() {
  try { return list(JSON.parse(load(sessionStorage, STORE_ROOMS) || '[]')); } catch { return []; }
}

function saveRooms() {
  save(sessionStorage, STORE_ROOMS, JSON.stringify([...state.rooms.keys()]));
}

// ---- connection -----------------------------------------------------------------

const client = new SbClient('/chat', {
  protocols: ['chat.v1'],
  onopen: resubscribe,
  onmessage(msg) {
    if (typeof msg.type === 'string' && Object.hasOwn(handlers, msg.type)) handlers[msg.type](msg);
  },
  onstatus(kind, detail) {
    clearInterval(state.countdownTimer);
    if (kind === 'connecting') setStatus('connecting', detail.attempt ? 'Reconnecting…' : 'Connecting…');
    else if (kind === 'online') setStatus('connecting', 'Connecting…');
    else {
      connectionLost();
      const tick = () => {
        const left = Math.max(0, Math.ceil((detail.until - Date.now()) / 1000));
        setStatus('offline', left > 0 ? `Offline · retrying in ${left}s` : 'Offline · retrying…');
      };
      tick();
      state.countdownTimer = setInterval(tick, 250);
    }
  },
});

// A new connection: say who we are and rejoin every room, each with the last message
// id seen there, so the server sends only what was missed.
function resubscribe() {
  state.tokens = state.limits.burst;
  state.tokensAt = Date.now();
  const nick = state.wantNick;
  const rooms = new Set([...state.rooms.keys(), ...(state.rooms.size ? [] : savedRooms())]);
  if (!nick || (rooms.size === 0 && !state.pendingJoin)) return;
  spend(); client.sendNow({ type: 'nick', nick });
  for (const name of rooms) {
    spend(); client.sendNow({ type: 'join', room: name, ...client.position(name) });
  }
}

function connectionLost() {
  state.nick = null;
  for (const room of state.rooms.values()) { room.typing.clear(); room.live = false; }
  renderTyping();
}

function send(msg) {
  if (!client.online) return false;
  spend();
  return client.sendNow(msg);
}

function setStatus(kind, text) {
  state.status = kind;
  $('status').dataset.state = kind;
  $('status-text').textContent = text;
  $('send-btn').disabled = kind !== 'online';
}

// ---- the outbox: text is never lost to a rate limit or a lost connection ---------

// The page keeps to the server's limit itself (a burst, then `rate` per second); what
// it cannot send yet waits in the outbox, shown in the room as "waiting".
function refill() {
  const now = Date.now();
  state.tokens = Math.min(state.limits.burst, state.tokens + (now - state.tokensAt) / 1000 * state.limits.rate);
  state.tokensAt = now;
}

function spend() {
  refill();
  state.tokens -= 1;
}

function queueText(kind, room, text, to) {
  const item = { ref: `m${state.nextRef++}`, room, kind, to, text, state: 'queued', ts: Date.now() / 1000 };
  state.outbox.push(item);
  pump();
  renderPending();
}

function pump() {
  clearTimeout(state.pumpTimer);
  state.pumpTimer = 0;
  for (const item of state.outbox) {
    if (item.state !== 'queued') continue;
    if (!client.online) break;
    const room = state.rooms.get(item.room);
    if (!room || !room.live) continue; // its room is not rejoined yet: the others go on
    refill();
    const wait = Math.max(state.holdUntil - Date.now(), state.tokens >= 1 ? 0 : (1 - state.tokens) / state.limits.rate * 1000);
    if (wait > 0) { state.pumpTimer = setTimeout(pump, wait + 20); break; }
    const frame = item.kind === 'pm'
      ? { type: 'pm', room: item.room, to: item.to, text: item.text, ref: item.ref }
      : { type: 'say', room: item.room, text: item.text, ref: item.ref };
    send(frame);
    item.state = 'sent';
    item.gen = client.generation;
  }
  renderNotice();
}

// The server showed us our own message: it is sent.
function delivered(kind, room, text, to) {
  const i = state.outbox.findIndex((it) => it.state === 'sent' && it.kind === kind && it.room === room
    && it.text === text && (kind !== 'pm' || it.to === to));
  if (i < 0) return false;
  state.outbox.splice(i, 1);
  renderPending();
  renderNotice();
  return true;
}

// After a rejoin: what was sent on a lost connection and is not in what the server
// replayed never arrived. Send it again.
function resendLost(roomName) {
  for (const item of state.outbox) {
    if (item.room === roomName && item.state === 'sent' && item.gen !== client.generation) item.state = 'queued';
  }
  pump();
}

function outboxError(msg) {
  const i = state.outbox.findIndex((it) => it.ref === msg.ref);
  if (i < 0) return false;
  const item = state.outbox[i];
  if (msg.code === 'rate_limited' || msg.code === 'unavailable') {
    // Keep it and everything after it in order; try again when the server says
    // (unavailable: the server could not store it, e.g. its Redis is away).
    const retry = typeof msg.retry_after === 'number' ? msg.retry_after : 1;
    state.holdUntil = Math.max(state.holdUntil, Date.now() + retry * 1000);
    state.holdWhy = msg.code;
    for (const it of state.outbox.slice(i)) if (it.state === 'sent') it.state = 'queued';
    if (msg.code === 'rate_limited') {
      state.tokens = 0;
      state.tokensAt = Date.now();
    }
    pump();
    renderPending();
    return true;
  }
  // Refused for good (too long, not in the room…): the text goes back to the box.
  state.outbox.splice(i, 1);
  if (!$('message').value.trim()) { $('message').value = item.text; onType(); }
  renderPending();
  renderNotice();
  return false;
}

// One line above the composer while messages wait, instead of a toast per message.
function renderNotice() {
  const waiting = state.outbox.filter((it) => it.state === 'queued').length;
  const bar = $('send-notice');
  clearTimeout(state.noticeTimer);
  if (!waiting) { bar.hidden = true; bar.textContent = ''; return; }
  const left = Math.ceil(Math.max(0, state.holdUntil - Date.now()) / 1000);
  const what = waiting === 1 ? '1 message' : `${waiting} messages`;
  let text;
  if (!client.online) text = `Offline: ${what} will be sent when the connection is back`;
  else if (left > 0 && state.holdWhy === 'unavailable') {
    text = `Not sent: the server cannot store messages right now; ${what} waiting, sending again in ${left}s`;
  } else if (left > 0) text = `Sending too fast: ${what} waiting, sending again in ${left}s`;
  else text = `Sending too fast: ${what} waiting`;
  bar.textContent = text;
  bar.hidden = false;
  state.noticeTimer = setTimeout(renderNotice, 500);
}

// ---- server messages --------------------------------------------------------------

const handlers = {
  welcome(msg) {
    client.connected();
    setStatus('online', 'Connected');
    setAllRooms(list(msg.rooms));
    if (msg.limits) {
      if (msg.limits.text) $('message').maxLength = msg.limits.text;
      if (msg.limits.nick) $('nick').maxLength = msg.limits.nick;
      if (msg.limits.burst > 0 && msg.limits.rate > 0) {
        state.limits = { burst: msg.limits.burst, rate: msg.limits.rate };
      }
    }
  },

  nick(msg) {
    const first = state.nick === null;
    state.nick = msg.nick;
    state.wantNick = msg.nick;
    save(sessionStorage, STORE_NICK, msg.nick);
    save(localStorage, STORE_LAST_NICK, msg.nick);
    renderMe();
    if (!first) return;
    // The first nick of a connection from the login form: join what it asked for.
    if (state.pendingJoin && !state.rooms.has(state.pendingJoin)) send({ type: 'join', room: state.pendingJoin });
  },

  joined(msg) {
    const fresh = !state.rooms.has(msg.room);
    const room = ensureRoom(msg.room);
    room.members = new Set(list(msg.members));
    room.live = true;
    const history = list(msg.history).filter((m) => m && typeof m.id === 'number');
    const epoch = typeof msg.epoch === 'string' ? msg.epoch : undefined;
    const before = client.position(msg.room);
    let notice = fresh ? `You joined #${msg.room}` : `Back in #${msg.room}`;
    const known = room.epoch ?? before.epoch;
    if (!fresh && known !== undefined && epoch !== undefined && known !== epoch) {
      // The server lost the room's history (a restart without Redis): start over.
      resetRoom(msg.room);
      notice = `The history of #${msg.room} was reset`;
    } else if (!fresh && epoch === undefined && (history.length ? history[history.length - 1].id : 0) < (before.since || 0)) {
      client.forget(msg.room); // a server without epochs restarted: ids start over
    } else if (!fresh && msg.recovered === false && before.since !== undefined && history.length
      && history[0].id > before.since + 1) {
      notice = `Back in #${msg.room} · some earlier messages were missed`;
    }
    if (epoch !== undefined) room.epoch = epoch;
    for (const m of history) addMessage(msg.room, m, false);
    addItem(msg.room, { type: 'notice', text: notice, ts: Date.now() / 1000, local: true }, false);
    saveRooms();
    const wanted = state.pendingJoin === msg.room;
    if (wanted) state.pendingJoin = null;
    showView('chat');
    resendLost(msg.room);
    if (wanted || !state.current) { selectRoom(msg.room); return; }
    if (msg.room === state.current) renderMessages();
    renderRooms();
    renderMembers();
  },

  left(msg) {
    if (state.rooms.has(msg.room)) dropRoom(msg.room);
  },

  message(msg) {
    const room = state.rooms.get(msg.room);
    if (!room) return;
    room.typing.delete(msg.nick);
    addMessage(msg.room, msg, true);
    renderTyping();
  },

  pm(msg) {
    const room = state.rooms.get(msg.room);
    if (!room) return;
    room.typing.delete(msg.from);
    renderTyping();
    if (msg.from === state.nick) delivered('pm', msg.room, msg.text, msg.to);
    addItem(msg.room, msg, true);
  },

  join(msg) {
    const room = state.rooms.get(msg.room);
    if (!room) return;
    room.members.add(msg.nick);
    addItem(msg.room, { type: 'notice', text: `${msg.nick} joined`, ts: msg.ts }, true);
    if (msg.room === state.current) renderMembers();
    renderRooms();
  },

  leave(msg) {
    const room = state.rooms.get(msg.room);
    if (!room) return;
    room.members.delete(msg.nick);
    room.typing.delete(msg.nick);
    addItem(msg.room, { type: 'notice', text: `${msg.nick} left`, ts: msg.ts }, true);
    if (msg.room === state.current) { renderMembers(); renderTyping(); }
    renderRooms();
    if (state.pmTarget === msg.nick && msg.room === state.current) setPmTarget(null);
  },

  // The room's members on every process, when they changed in a way no join or leave
  // said (a server process died).
  members(msg) {
    const room = state.rooms.get(msg.room);
    if (!room) return;
    room.members = new Set(list(msg.members));
    if (msg.room === state.current) renderMembers();
    renderRooms();
  },

  rename(msg) {
    const room = state.rooms.get(msg.room);
    if (!room) return;
    room.members.delete(msg.from);
    room.members.add(msg.to);
    addItem(msg.room, { type: 'notice', text: `${msg.from} is now ${msg.to}`, ts: msg.ts }, true);
    if (msg.room === state.current) renderMembers();
    if (state.pmTarget === msg.from) setPmTarget(msg.to);
  },

  typing(msg) {
    const room = state.rooms.get(msg.room);
    if (!room) return;
    clearTimeout(room.typing.get(msg.nick));
    if (msg.typing) {
      room.typing.set(msg.nick, setTimeout(() => { room.typing.delete(msg.nick); renderTyping(); }, TYPING_SHOW));
    } else {
      room.typing.delete(msg.nick);
    }
    renderTyping();
  },

  rooms(msg) {
    setAllRooms(list(msg.rooms));
  },

  error(msg) {
    if (msg.ref !== undefined && outboxError(msg)) return;
    if (msg.code === 'rate_limited') {
      // Not a message of ours (a join, a nick): the notice line says it, once.
      state.holdUntil = Math.max(state.holdUntil, Date.now() + (Number(msg.retry_after) || 1) * 1000);
      return;
    }
    const text = typeof msg.message === 'string' ? msg.message : 'Something went wrong';
    const fromLogin = $('app').dataset.view === 'login';
    if (fromLogin && (msg.request === 'nick' || msg.request === 'join')) {
      $('login-error').textContent = capitalize(text);
      $('join-btn').disabled = false;
      if (msg.code === 'nick_taken' || msg.code === 'nick_invalid') {
        state.nick = null;
        $('nick').focus();
      }
      return;
    }
    if (msg.request === 'join' && msg.code === 'nick_taken' && state.rooms.has(msg.room)) {
      // A rejoin after a reconnect: someone took our nick in that room meanwhile.
      dropRoom(msg.room);
      if (state.rooms.size === 0) { $('login-error').textContent = capitalize(text); return; }
    }
    if (msg.request === 'nick') state.wantNick = state.nick || state.wantNick;
    toast(capitalize(text), 'error');
  },

  pong() {},
};

// We are out of a room (we left it, or could not rejoin it).
function dropRoom(name) {
  state.rooms.delete(name);
  client.forget(name);
  state.outbox = state.outbox.filter((it) => it.room !== name);
  saveRooms();
  if (state.current === name) selectRoom(state.rooms.keys().next().value || null);
  renderRooms();
  renderNotice();
  if (state.rooms.size === 0) {
    showView('login');
    $('room').value = '';
    $('room').focus();
  }
}

function ensureRoom(name) {
  let room = state.rooms.get(name);
  if (!room) {
    room = { members: new Set(), items: [], unread: 0, typing: new Map(), live: false, epoch: undefined };
    state.rooms.set(name, room);
  }
  return room;
}

// The room's history was lost on the server: its old ids mean nothing any more.
function resetRoom(roomName) {
  const room = state.rooms.get(roomName);
  room.items = room.items.filter((it) => it.type !== 'message');
  client.forget(roomName);
  if (roomName === state.current) renderMessages();
}

// A room message: shown once, whatever way it came (live, or in a join's history).
function addMessage(roomName, msg, live) {
  const room = state.rooms.get(roomName);
  if (typeof msg.epoch === 'string' && room.epoch !== undefined && msg.epoch !== room.epoch) {
    // A new history while we were connected (Redis lost its data): start the room over.
    resetRoom(roomName);
    room.epoch = msg.epoch;
    addItem(roomName, { type: 'notice', text: `The history of #${roomName} was reset`, ts: Date.now() / 1000 }, live);
  }
  if (typeof msg.id === 'number' && !client.seen(roomName, msg.id, room.epoch)) return;
  if (msg.nick === state.nick) delivered('say', roomName, msg.text);
  addItem(roomName, msg, live);
}

function addItem(roomName, item, live) {
  const room = ensureRoom(roomName);
  room.items.push(item);
  if (room.items.length > 500) room.items.splice(0, room.items.length - 500);
  if (!live) return;
  if (roomName === state.current) {
    appendItem(item, room.items[room.items.length - 2]);
  } else if (item.type !== 'notice') {
    room.unread += 1;
    renderRooms();
  }
}

// ---- rendering ---------------------------------------------------------------------

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function hue(nick) {
  let h = 0;
  for (const ch of String(nick).toLowerCase()) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function avatar(nick) {
  const a = el('span', 'avatar', String(nick).slice(0, 1).toUpperCase());
  a.style.setProperty('--h', hue(nick));
  a.setAttribute('aria-hidden', 'true');
  return a;
}

function dateOf(ts) {
  return new Date((typeof ts === 'number' ? ts : Date.now() / 1000) * 1000);
}

function timeOf(ts) {
  return dateOf(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function dayKey(ts) {
  const d = dateOf(ts);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

function dayLabel(ts) {
  const d = dateOf(ts);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(ts) === dayKey(today.getTime() / 1000)) return 'Today';
  if (dayKey(ts) === dayKey(yesterday.getTime() / 1000)) return 'Yesterday';
  return d.toLocaleDateString([], { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
}

function daySeparator(ts) {
  const n = el('div', 'day');
  n.setAttribute('role', 'separator');
  n.append(el('span', null, dayLabel(ts)));
  return n;
}

// Links: http(s) URLs only, checked by the URL parser, built as DOM nodes. Trailing
// punctuation stays text ("see https://x.org/a." links https://x.org/a).
const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;

function linkify(text) {
  const out = [];
  let at = 0;
  for (const m of text.matchAll(URL_RE)) {
    let raw = m[0];
    while (/[.,;:!?)\]}]$/.test(raw) && !(raw.endsWith(')') && raw.split('(').length >= raw.split(')').length)) {
      raw = raw.slice(0, -1);
    }
    let url;
    try { url = new URL(raw); } catch { continue; }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') continue;
    if (m.index > at) out.push(document.createTextNode(text.slice(at, m.index)));
    const a = el('a', null, raw);
    a.href = url.href;
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
    out.push(a);
    at = m.index + raw.length;
  }
  if (at < text.length) out.push(document.createTextNode(text.slice(at)));
  return out;
}

function itemNode(item, prev) {
  if (item.type === 'notice') {
    const n = el('div', 'notice');
    n.append(el('span', null, item.text), el('time', null, timeOf(item.ts)));
    return n;
  }
  const pending = item.type === 'pending';
  const kind = pending ? item.kind : item.type;
  const mine = pending || (kind === 'pm' ? item.from === state.nick : item.nick === state.nick);
  const who = pending ? state.nick || state.wantNick : kind === 'pm' ? item.from : item.nick;
  const grouped = !pending && prev && prev.type === item.type && item.type === 'message' && prev.nick === item.nick
    && Math.abs(item.ts - prev.ts) < GROUP_WINDOW && dayKey(item.ts) === dayKey(prev.ts);
  const n = el('article', `msg${mine ? ' mine' : ''}${kind === 'pm' ? ' pm' : ''}${grouped ? ' grouped' : ''}`
    + `${pending ? ' pending' : ''}`);
  if (typeof item.id === 'number') n.dataset.id = String(item.id);
  n.append(grouped ? el('span', 'avatar-gap') : avatar(who));
  const body = el('div', 'msg-body');
  if (!grouped) {
    const head = el('div', 'msg-head');
    const name = el('span', 'nick', who);
    name.style.setProperty('--h', hue(who));
    head.append(name);
    if (kind === 'pm') head.append(el('span', 'pm-tag', mine ? `private to ${item.to}` : 'private to you'));
    if (pending) head.append(el('span', 'pending-tag', item.state === 'queued' ? 'waiting' : 'sending…'));
    else {
      const t = el('time', null, timeOf(item.ts));
      t.dateTime = dateOf(item.ts).toISOString();
      head.append(t);
    }
    body.append(head);
  }
  const text = el('div', 'text');
  text.append(...linkify(String(item.text)));
  body.append(text);
  n.append(body);
  return n;
}

function nearBottom(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

// Items of the current room, with a date line wherever the day changes.
function appendItem(item, prev) {
  const box = $('messages');
  const stick = nearBottom(box) || (item.type !== 'notice' && (item.nick === state.nick || item.from === state.nick));
  const pending = $('pending');
  if (!prev || dayKey(prev.ts) !== dayKey(item.ts)) box.insertBefore(daySeparator(item.ts), pending);
  box.insertBefore(itemNode(item, prev), pending);
  if (stick) scrollToBottom();
  else if (item.type !== 'notice') showNewMarker(1);
}

function renderMessages() {
  const box = $('messages');
  const room = state.rooms.get(state.current);
  box.replaceChildren();
  hideNewMarker();
  if (!room) return;
  const intro = el('div', 'room-intro');
  intro.append(el('div', 'room-intro-hash', '#'), el('h2', null, `Welcome to #${state.current}`),
    el('p', 'muted', 'Everyone in this room sees what you write here. New members get the last 100 messages.'));
  box.append(intro);
  room.items.forEach((item, i) => {
    const prev = room.items[i - 1];
    if (!prev || dayKey(prev.ts) !== dayKey(item.ts)) box.append(daySeparator(item.ts));
    box.append(itemNode(item, prev));
  });
  const pending = el('div', 'pending-list');
  pending.id = 'pending';
  box.append(pending);
  renderPending();
  box.scrollTop = box.scrollHeight;
}

// What the user wrote in this room that is not back from the server yet.
function renderPending() {
  const box = $('pending');
  if (!box) return;
  const mine = state.outbox.filter((it) => it.room === state.current);
  box.replaceChildren(...mine.map((it) => itemNode({ ...it, type: 'pending' })));
  if (mine.length && nearBottom($('messages'))) scrollToBottom();
}

function scrollToBottom() {
  const box = $('messages');
  box.scrollTop = box.scrollHeight;
  hideNewMarker();
}

// "New messages" while the reader is scrolled up; it goes when they reach the bottom.
function showNewMarker(n) {
  const b = $('new-marker');
  state.newCount = (b.hidden ? 0 : state.newCount || 0) + n;
  b.textContent = state.newCount === 1 ? '1 new message ↓' : `${state.newCount} new messages ↓`;
  b.hidden = false;
}

function hideNewMarker() {
  state.newCount = 0;
  $('new-marker').hidden = true;
}

function roomButton(name, count, { joined, unread }) {
  const li = el('li');
  const b = el('button', `room${name === state.current ? ' active' : ''}`);
  b.type = 'button';
  b.append(el('span', 'hash', '#'), el('span', 'room-name', name));
  if (unread) b.append(el('span', 'badge', String(unread)));
  else if (count !== undefined) b.append(el('span', 'count', String(count)));
  b.title = joined ? `Open #${name}` : `Join #${name}`;
  b.addEventListener('click', () => {
    if (joined) selectRoom(name);
    else send({ type: 'join', room: name });
    closeDrawers();
  });
  li.append(b);
  return li;
}

function renderRooms() {
  const counts = new Map(state.allRooms.map((r) => [r.name, r.members]));
  const joined = $('joined-rooms');
  // In our own rooms we know everyone, on every process; the server's counts are its own.
  joined.replaceChildren(...[...state.rooms.keys()].sort().map((name) => {
    const room = state.rooms.get(name);
    return roomButton(name, room.members.size || counts.get(name), { joined: true, unread: room.unread });
  }));
  const others = state.allRooms.filter((r) => !state.rooms.has(r.name));
  const all = $('all-rooms');
  all.replaceChildren(...others.map((r) => roomButton(r.name, r.members, { joined: false })));
  if (others.length === 0) all.append(el('li', 'muted small', 'No other rooms yet'));
  const options = $('room-options');
  options.replaceChildren(...state.allRooms.map((r) => {
    const o = el('option');
    o.value = r.name;
    o.label = `${r.members} online`;
    return o;
  }));
}

function setAllRooms(rooms) {
  state.allRooms = rooms.filter((r) => r && typeof r.name === 'string');
  renderRooms();
}

function renderMembers() {
  const room = state.rooms.get(state.current);
  const ul = $('member-list');
  const members = room ? [...room.members].sort((a, b) => a.localeCompare(b)) : [];
  $('member-count').textContent = members.length ? String(members.length) : '';
  ul.replaceChildren(...members.map((nick) => {
    const li = el('li');
    const b = el('button', 'member');
    b.type = 'button';
    b.append(avatar(nick), el('span', 'member-nick', nick));
    if (nick === state.nick) {
      b.append(el('span', 'you', 'you'));
      b.disabled = true;
    } else {
      b.title = `Send ${nick} a private message`;
      b.addEventListener('click', () => { setPmTarget(nick); closeDrawers(); });
    }
    li.append(b);
    return li;
  }));
}

function renderTyping() {
  const room = state.rooms.get(state.current);
  const names = room ? [...room.typing.keys()].filter((n) => n !== state.nick) : [];
  const t = $('typing');
  t.replaceChildren();
  if (names.length === 0) return;
  let text;
  if (names.length === 1) text = `${names[0]} is typing`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing`;
  else text = 'Several people are typing';
  t.append(el('span', 'dots', ''), el('span', null, text));
}

function renderMe() {
  $('me-nick').textContent = state.nick || '';
  $('me-avatar').replaceChildren();
  if (state.nick) {
    $('me-avatar').textContent = state.nick.slice(0, 1).toUpperCase();
    $('me-avatar').style.setProperty('--h', hue(state.nick));
  }
}

function selectRoom(name) {
  state.current = name;
  const room = state.rooms.get(name);
  if (room) room.unread = 0;
  $('room-title').textContent = name ? `#${name}` : '';
  document.title = name ? `#${name} · switchboard chat` : 'switchboard chat';
  if (state.pmTarget && !(room && room.members.has(state.pmTarget))) setPmTarget(null);
  renderRooms();
  renderMembers();
  renderMessages();
  renderTyping();
}

function setPmTarget(nick) {
  state.pmTarget = nick;
  $('pm-chip').hidden = !nick;
  $('pm-target').textContent = nick || '';
  $('message').placeholder = nick ? `Private message to ${nick}` : 'Message';
  $('composer').classList.toggle('private', !!nick);
  if (nick) $('message').focus();
}

function showView(view) {
  $('app').dataset.view = view;
}

function toast(text, kind = 'error') {
  const t = el('div', `toast ${kind}`, text);
  t.setAttribute('role', 'alert');
  $('toasts').append(t);
  setTimeout(() => t.classList.add('out'), 3500);
  setTimeout(() => t.remove(), 4000);
}

function capitalize(s) {
  return s ? s[0].toUpperCase() + s.slice(1) : s;
}

// ---- drawers (phone width) ---------------------------------------------------------

function openDrawer(which) {
  $('app').dataset.drawer = which;
  $('scrim').hidden = false;
  $('rooms-toggle').setAttribute('aria-expanded', String(which === 'rooms'));
  $('members-toggle').setAttribute('aria-expanded', String(which === 'members'));
}

function closeDrawers() {
  delete $('app').dataset.drawer;
  $('scrim').hidden = true;
  $('rooms-toggle').setAttribute('aria-expanded', 'false');
  $('members-toggle').setAttribute('aria-expanded', 'false');
}

// ---- user input --------------------------------------------------------------------

// Typing flags have their own budget on the server and never wait in the outbox.
function sendTyping(typing) {
  return state.current && client.sendNow({ type: 'typing', room: state.current, typing });
}

function stopTyping() {
  clearTimeout(state.typingIdleTimer);
  if (state.typingSentAt) sendTyping(false);
  state.typingSentAt = 0;
}

function onType() {
  const box = $('message');
  box.style.height = 'auto';
  box.style.height = `${Math.min(box.scrollHeight, 160)}px`;
  if (!state.current || !box.value.trim()) { stopTyping(); return; }
  const now = Date.now();
  if (now - state.typingSentAt > TYPING_SEND_EVERY) {
    if (sendTyping(true)) state.typingSentAt = now;
  }
  clearTimeout(state.typingIdleTimer);
  state.typingIdleTimer = setTimeout(stopTyping, TYPING_IDLE);
}

function submitMessage() {
  const box = $('message');
  const text = box.value;
  if (!text.trim() || !state.current) return;
  // "/msg nick text" is a shortcut for a private message.
  const cmd = text.match(/^\/(?:msg|pm)\s+(\S+)\s+([\s\S]+)$/);
  if (cmd) queueText('pm', state.current, cmd[2], cmd[1]);
  else if (state.pmTarget) queueText('pm', state.current, text, state.pmTarget);
  else queueText('say', state.current, text);
  // A room message ends "typing" for the others; a private one does not reach them.
  if (cmd || state.pmTarget) stopTyping();
  state.typingSentAt = 0;
  clearTimeout(state.typingIdleTimer);
  box.value = '';
  onType();
}

function bind() {
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const nick = $('nick').value.trim();
    const room = $('room').value.trim().replace(/^#/, '').toLowerCase() || 'lobby';
    $('login-error').textContent = '';
    if (!nick) { $('login-error').textContent = 'Pick a nickname first'; $('nick').focus(); return; }
    if (state.status !== 'online') { $('login-error').textContent = 'Not connected yet — hold on a second'; return; }
    state.wantNick = nick;
    state.pendingJoin = room;
    if (state.nick === nick) send({ type: 'join', room });
    else if (state.nick) { send({ type: 'nick', nick }); send({ type: 'join', room }); }
    else send({ type: 'nick', nick });
  });

  $('new-room-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = $('new-room').value.trim().replace(/^#/, '').toLowerCase();
    if (!name) return;
    if (state.rooms.has(name)) selectRoom(name);
    else { state.pendingJoin = name; send({ type: 'join', room: name }); }
    $('new-room').value = '';
    closeDrawers();
  });

  $('composer').addEventListener('submit', (ev) => { ev.preventDefault(); submitMessage(); });
  $('message').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submitMessage(); }
    if (ev.key === 'Escape' && state.pmTarget) setPmTarget(null);
  });
  $('message').addEventListener('input', onType);
  $('pm-cancel').addEventListener('click', () => setPmTarget(null));
  $('messages').addEventListener('scroll', () => { if (nearBottom($('messages'))) hideNewMarker(); });
  $('new-marker').addEventListener('click', scrollToBottom);

  $('rename-btn').addEventListener('click', () => {
    const nick = prompt('New nickname', state.nick || '');
    if (nick && nick.trim() && nick.trim() !== state.nick) {
      state.wantNick = nick.trim();
      send({ type: 'nick', nick: nick.trim() });
    }
  });

  $('rooms-toggle').addEventListener('click', () =>
    ($('app').dataset.drawer === 'rooms' ? closeDrawers() : openDrawer('rooms')));
  $('members-toggle').addEventListener('click', () =>
    ($('app').dataset.drawer === 'members' ? closeDrawers() : openDrawer('members')));
  $('scrim').addEventListener('click', closeDrawers);

  const leave = el('button', 'leave-btn', 'Leave');
  leave.type = 'button';
  leave.title = 'Leave this room';
  leave.addEventListener('click', () => state.current && send({ type: 'leave', room: state.current }));
  $('room-title').after(leave);
}

$('nick').value = state.wantNick || load(localStorage, STORE_LAST_NICK) || '';
bind();
client.start();
window.sbChat = { client, state }; // for the browser specs and the curious
if ($('nick').value) $('room').focus(); else $('nick').focus();
