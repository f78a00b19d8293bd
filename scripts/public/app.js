// switchboard chat: the browser side of scripts/chat.lua.
// Everything the server or another user sent is put on the page with textContent,
// never as HTML.

const $ = (id) => document.getElementById(id);
const list = (x) => (Array.isArray(x) ? x : []); // a list, whatever an older server sent

const STORE_NICK = 'sb.chat.nick';
const STORE_ROOMS = 'sb.chat.rooms';
const TYPING_SEND_EVERY = 3000; // ms between "typing: true" while typing
const TYPING_IDLE = 4000;       // ms without a key before "typing: false"
const TYPING_SHOW = 6000;       // ms a typing indicator stays without an update
const GROUP_WINDOW = 5 * 60;    // s: consecutive messages from one nick are grouped

const state = {
  ws: null,
  status: 'connecting',
  attempt: 0,
  retryTimer: 0,
  countdownTimer: 0,
  nick: null,            // acknowledged by the server
  wantNick: localStorage.getItem(STORE_NICK) || '',
  rooms: new Map(),      // name -> { members: Set, items: [], lastId, unread, typing: Map }
  current: null,
  allRooms: [],
  pmTarget: null,
  pendingJoin: null,     // room the login form asked for
  node: null,            // the server process serving us (switchboard.node)
  typingSentAt: 0,
  typingIdleTimer: 0,
};

function savedRooms() {
  try { return list(JSON.parse(localStorage.getItem(STORE_ROOMS) || '[]')); } catch { return []; }
}

function saveRooms() {
  localStorage.setItem(STORE_ROOMS, JSON.stringify([...state.rooms.keys()]));
}

// ---- connection -----------------------------------------------------------------

function url() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/chat`;
}

function connect() {
  clearTimeout(state.retryTimer);
  clearInterval(state.countdownTimer);
  setStatus('connecting', state.attempt ? 'Reconnecting…' : 'Connecting…');
  let ws;
  try {
    ws = new WebSocket(url(), ['chat.v1']);
  } catch {
    scheduleReconnect();
    return;
  }
  state.ws = ws;
  ws.addEventListener('message', (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    if (msg && typeof msg.type === 'string' && handlers[msg.type]) handlers[msg.type](msg);
  });
  ws.addEventListener('close', () => {
    if (state.ws !== ws) return;
    state.ws = null;
    state.nick = null;
    for (const room of state.rooms.values()) room.typing.clear();
    renderTyping();
    scheduleReconnect();
  });
}

// Exponential backoff with jitter: 0.5 s, 1 s, 2 s … up to 15 s.
function scheduleReconnect() {
  const base = Math.min(15000, 500 * 2 ** state.attempt);
  const delay = Math.round(base / 2 + Math.random() * base / 2);
  state.attempt += 1;
  const until = Date.now() + delay;
  const tick = () => {
    const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
    setStatus('offline', left > 0 ? `Offline · retrying in ${left}s` : 'Offline · retrying…');
  };
  tick();
  state.countdownTimer = setInterval(tick, 250);
  state.retryTimer = setTimeout(connect, delay);
}

function send(msg) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
  state.ws.send(JSON.stringify(msg));
  return true;
}

function setStatus(kind, text) {
  state.status = kind;
  $('status').dataset.state = kind;
  $('status-text').textContent = text;
  $('send-btn').disabled = kind !== 'online';
}

// ---- server messages --------------------------------------------------------------

const handlers = {
  welcome(msg) {
    state.attempt = 0;
    clearInterval(state.countdownTimer);
    setStatus('online', 'Connected');
    state.node = msg.node;
    setAllRooms(list(msg.rooms));
    if (msg.limits) {
      if (msg.limits.text) $('message').maxLength = msg.limits.text;
      if (msg.limits.nick) $('nick').maxLength = msg.limits.nick;
    }
    // After a restart or a reload of the script: pick up where we were.
    const nick = state.wantNick;
    if (nick && (state.rooms.size > 0 || state.pendingJoin || savedRooms().length > 0)) {
      send({ type: 'nick', nick });
    }
  },

  nick(msg) {
    const first = state.nick === null;
    state.nick = msg.nick;
    state.wantNick = msg.nick;
    localStorage.setItem(STORE_NICK, msg.nick);
    renderMe();
    if (!first) return;
    const rooms = new Set([...state.rooms.keys(), ...(state.rooms.size ? [] : savedRooms())]);
    if (state.pendingJoin) rooms.add(state.pendingJoin);
    if (rooms.size === 0) rooms.add('lobby');
    for (const room of rooms) send({ type: 'join', room });
  },

  joined(msg) {
    const fresh = !state.rooms.has(msg.room);
    const room = ensureRoom(msg.room);
    room.members = new Set(list(msg.members));
    const history = list(msg.history);
    const newest = history.length ? history[history.length - 1].id : 0;
    if (newest < room.lastId) room.lastId = 0; // the server restarted: ids start over
    for (const m of history) addItem(msg.room, m, false);
    addItem(msg.room, { type: 'notice', text: fresh ? `You joined #${msg.room}` : `Back in #${msg.room}`,
      ts: Date.now() / 1000 }, false);
    saveRooms();
    const wanted = state.pendingJoin === msg.room;
    if (wanted) state.pendingJoin = null;
    showView('chat');
    if (wanted || !state.current) { selectRoom(msg.room); return; }
    renderRooms();
    renderMembers();
    renderMessages();
  },

  left(msg) {
    state.rooms.delete(msg.room);
    saveRooms();
    if (state.current === msg.room) selectRoom(state.rooms.keys().next().value || null);
    renderRooms();
    if (state.rooms.size === 0) {
      showView('login');
      $('room').value = '';
      $('room').focus();
    }
  },

  message(msg) {
    const room = state.rooms.get(msg.room);
    if (!room) return;
    room.typing.delete(msg.nick);
    addItem(msg.room, msg, true);
    renderTyping();
  },

  pm(msg) {
    const room = state.rooms.get(msg.room);
    if (!room) return;
    room.typing.delete(msg.from);
    renderTyping();
    addItem(msg.room, msg, true);
  },

  join(msg) {
    const room = state.rooms.get(msg.room);
    if (!room) return;
    room.members.add(msg.nick);
    addItem(msg.room, { type: 'notice', text: `${msg.nick} joined`, ts: msg.ts }, true);
    if (msg.room === state.current) renderMembers();
    // Served by another process (--workers, --redis): its member list lacks us.
    if (msg.node && state.node && msg.node !== state.node) {
      send({ type: 'here', room: msg.room, node: msg.node, id: msg.id });
    }
  },

  present(msg) {
    const room = state.rooms.get(msg.room);
    if (!room) return;
    room.members.add(msg.nick);
    if (msg.room === state.current) renderMembers();
  },

  leave(msg) {
    const room = state.rooms.get(msg.room);
    if (!room) return;
    room.members.delete(msg.nick);
    room.typing.delete(msg.nick);
    addItem(msg.room, { type: 'notice', text: `${msg.nick} left`, ts: msg.ts }, true);
    if (msg.room === state.current) { renderMembers(); renderTyping(); }
    if (state.pmTarget === msg.nick && msg.room === state.current) setPmTarget(null);
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
    toast(capitalize(text), msg.code === 'rate_limited' ? 'warn' : 'error');
  },

  pong() {},
};

function ensureRoom(name) {
  let room = state.rooms.get(name);
  if (!room) {
    room = { members: new Set(), items: [], lastId: 0, unread: 0, typing: new Map() };
    state.rooms.set(name, room);
  }
  return room;
}

function addItem(roomName, item, live) {
  const room = ensureRoom(roomName);
  if (item.type === 'message' && typeof item.id === 'number') {
    if (item.id <= room.lastId) return;
    room.lastId = item.id;
  }
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

function timeOf(ts) {
  const d = new Date((typeof ts === 'number' ? ts : Date.now() / 1000) * 1000);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function itemNode(item, prev) {
  if (item.type === 'notice') {
    const n = el('div', 'notice');
    n.append(el('span', null, item.text), el('time', null, timeOf(item.ts)));
    return n;
  }
  const mine = item.type === 'pm' ? item.from === state.nick : item.nick === state.nick;
  const who = item.type === 'pm' ? item.from : item.nick;
  const grouped = prev && prev.type === item.type && item.type === 'message' && prev.nick === item.nick
    && Math.abs(item.ts - prev.ts) < GROUP_WINDOW;
  const n = el('article', `msg${mine ? ' mine' : ''}${item.type === 'pm' ? ' pm' : ''}${grouped ? ' grouped' : ''}`);
  n.append(grouped ? el('span', 'avatar-gap') : avatar(who));
  const body = el('div', 'msg-body');
  if (!grouped) {
    const head = el('div', 'msg-head');
    const name = el('span', 'nick', who);
    name.style.setProperty('--h', hue(who));
    head.append(name);
    if (item.type === 'pm') head.append(el('span', 'pm-tag', mine ? `private to ${item.to}` : 'private to you'));
    const t = el('time', null, timeOf(item.ts));
    t.dateTime = new Date(item.ts * 1000).toISOString();
    head.append(t);
    body.append(head);
  }
  body.append(el('div', 'text', item.text));
  n.append(body);
  return n;
}

function nearBottom(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function appendItem(item, prev) {
  const box = $('messages');
  const stick = nearBottom(box) || (item.type !== 'notice' && (item.nick === state.nick || item.from === state.nick));
  box.append(itemNode(item, prev));
  if (stick) box.scrollTop = box.scrollHeight;
}

function renderMessages() {
  const box = $('messages');
  const room = state.rooms.get(state.current);
  box.replaceChildren();
  if (!room) return;
  const intro = el('div', 'room-intro');
  intro.append(el('div', 'room-intro-hash', '#'), el('h2', null, `Welcome to #${state.current}`),
    el('p', 'muted', 'Everyone in this room sees what you write here. New members get the last 100 messages.'));
  box.append(intro);
  room.items.forEach((item, i) => box.append(itemNode(item, room.items[i - 1])));
  box.scrollTop = box.scrollHeight;
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
  joined.replaceChildren(...[...state.rooms.keys()].sort().map((name) =>
    roomButton(name, counts.get(name), { joined: true, unread: state.rooms.get(name).unread })));
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

function stopTyping() {
  clearTimeout(state.typingIdleTimer);
  if (state.typingSentAt && state.current) send({ type: 'typing', room: state.current, typing: false });
  state.typingSentAt = 0;
}

function onType() {
  const box = $('message');
  box.style.height = 'auto';
  box.style.height = `${Math.min(box.scrollHeight, 160)}px`;
  if (!state.current || !box.value.trim()) { stopTyping(); return; }
  const now = Date.now();
  if (now - state.typingSentAt > TYPING_SEND_EVERY) {
    if (send({ type: 'typing', room: state.current, typing: true })) state.typingSentAt = now;
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
  let ok;
  if (cmd) ok = send({ type: 'pm', room: state.current, to: cmd[1], text: cmd[2] });
  else if (state.pmTarget) ok = send({ type: 'pm', room: state.current, to: state.pmTarget, text });
  else ok = send({ type: 'say', room: state.current, text });
  if (!ok) { toast('Not connected — your message is still in the box', 'warn'); return; }
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

$('nick').value = state.wantNick;
bind();
connect();
if (state.wantNick) $('room').focus(); else $('nick').focus();
