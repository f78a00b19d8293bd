"""Hot reload under load (spec/e2e/reload_spec.lua).

usage: reload_client.py PORT SCRIPT LOGFILE CONNS SAVES

CONNS clients on /tag send numbered messages in lockstep (one in flight each),
while this process saves SCRIPT SAVES times: two good versions alternating
(each good save gets a unique tag, "A3", "B4", ...) and every third save a
broken one (compile error, error at top level, handlers that are not
functions), with the editor save patterns: write in place, rename into place,
a burst of partial writes, delete then create. After each save it waits for
the server's log line, then for every client to see the new tag.

Checked as it runs (any failure is reported, not raised):
- every answer is for the message in flight (none lost, none twice) and its
  ws.data counter is the number of messages that connection sent;
- an answer's tag is never older than the version logged live before the
  message was sent, never newer than the last good save written before the
  answer arrived, and never a broken version's;
- after a connection got an answer with tag k, no timer tick older than k
  arrives on it (the old version's timers stopped), and ticks keep coming
  (subscriptions survive, the new version's timer runs);
- no connection closes.
Prints one JSON object.
"""
import asyncio
import json
import os
import re
import statistics
import sys
import time

import websockets

PORT, SCRIPT, LOGFILE = int(sys.argv[1]), sys.argv[2], sys.argv[3]
CONNS, SAVES = int(sys.argv[4]), int(sys.argv[5])
PACE = 0.02  # seconds between an answer and a connection's next message
STEP = 10    # deadline for any single wait

GOOD = {
    "A": """local sb = require "switchboard"
local TAG = "@TAG@"
local M = { tag = TAG }

sb.every(0.05, function() sb.publish("tick", "tick:" .. TAG) end)

function M.open(ws)
    ws.data.n = 0
    ws:subscribe("tick")
end

function M.message(ws, msg)
    ws.data.n = ws.data.n + 1
    ws:send(TAG .. ":" .. msg .. ":" .. ws.data.n)
end

return M
""",
    "B": """-- the other good version: written differently, with a reload(old) hook
local sb = require "switchboard"
local handlers = { tag = "@TAG@" }

local function tick()
    sb.publish("tick", string.format("tick:%s", handlers.tag))
end
sb.every(0.05, tick)

function handlers.reload(old)
    handlers.previous = old.tag
end

function handlers.open(ws)
    ws.data.n = 0
    ws:subscribe("tick")
end

function handlers.message(ws, msg)
    local d = ws.data
    d.n = d.n + 1
    ws:send(string.format("%s:%s:%d", handlers.tag, msg, d.n))
end

return handlers
""",
}

BROKEN = [
    # does not compile
    """local M = {}
function M.message(ws, msg)
    ws:send("BROKEN:" .. msg
end
return M
""",
    # fails at top level, after starting a timer that must die with it
    """local sb = require "switchboard"
sb.every(0.01, function() sb.publish("tick", "tick:BROKEN") end)
local M = {}
function M.message(ws, msg) ws:send("BROKEN:" .. msg) end
local cfg = nil
M.limit = cfg.limit
return M
""",
    # returns handlers that are not functions
    """return { message = "BROKEN", open = 42 }
""",
]


def write_in_place(text):
    with open(SCRIPT, "w") as f:
        f.write(text)


def rename_into_place(text):
    tmp = os.path.join(os.path.dirname(SCRIPT), ".tag.lua.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, SCRIPT)


def burst(text):
    # three writes, each closing the file: the first two leave it half-written
    third = len(text) // 3
    write_in_place(text[:third])
    for part in (text[third:2 * third], text[2 * third:]):
        time.sleep(0.005)
        with open(SCRIPT, "a") as f:
            f.write(part)


def delete_then_create(text):
    os.unlink(SCRIPT)
    write_in_place(text)


PATTERNS = [write_in_place, rename_into_place, burst, delete_then_create]


def tag_order(tag):
    return int(tag[1:])


class State:
    def __init__(self):
        self.live = 0        # order of the version last logged live
        self.written = 0     # order of the last good version written
        self.errors = []
        self.answers = 0
        self.ticks = 0
        self.running = True

    def error(self, msg):
        if len(self.errors) < 20:
            self.errors.append(msg)


class Client:
    def __init__(self, st, i):
        self.st, self.i = st, i
        self.seq = 0
        self.reply = None
        self.seen = 0          # highest tag order answered on this connection
        self.tick_seen = -1    # highest tick tag order seen
        self.ticks_since = 0   # ticks since the last new tag
        self.closed = None

    async def connect(self):
        self.ws = await websockets.connect("ws://127.0.0.1:%d/tag" % PORT,
                                           ping_interval=None, max_queue=None)
        self.reader_task = asyncio.create_task(self.reader())
        self.sender_task = asyncio.create_task(self.sender())

    async def reader(self):
        st = self.st
        try:
            async for raw in self.ws:
                if raw.startswith("tick:"):
                    st.ticks += 1
                    tag = raw[5:]
                    if tag == "BROKEN":
                        st.error("conn %d: tick from a broken version" % self.i)
                        continue
                    k = tag_order(tag)
                    if k < self.seen:
                        st.error("conn %d: tick %s after an answer with tag order %d"
                                 % (self.i, tag, self.seen))
                    if k > self.tick_seen:
                        self.tick_seen, self.ticks_since = k, 0
                    self.ticks_since += 1
                    continue
                fut, self.reply = self.reply, None
                if fut is None:
                    st.error("conn %d: unexpected answer %r" % (self.i, raw))
                else:
                    fut.set_result((raw, time.monotonic()))
        except websockets.ConnectionClosed as e:
            self.closed = "%s %s" % (getattr(e, "code", "?"), getattr(e, "reason", ""))
            if st.running:
                st.error("conn %d closed: %s" % (self.i, self.closed))

    async def sender(self):
        st = self.st
        loop = asyncio.get_running_loop()
        while st.running and self.closed is None:
            self.seq += 1
            live_at_send = st.live
            self.reply = loop.create_future()
            fut = self.reply
            await self.ws.send("m%d" % self.seq)
            try:
                raw, _ = await asyncio.wait_for(fut, STEP)
            except asyncio.TimeoutError:
                st.error("conn %d: no answer to m%d" % (self.i, self.seq))
                return
            st.answers += 1
            parts = raw.split(":")
            if len(parts) != 3 or parts[1] != "m%d" % self.seq or parts[2] != str(self.seq):
                st.error("conn %d: answer %r to m%d" % (self.i, raw, self.seq))
                return
            if parts[0] == "BROKEN":
                st.error("conn %d: answer from a broken version" % self.i)
                return
            k = tag_order(parts[0])
            if k < live_at_send or k > st.written or k < self.seen:
                st.error("conn %d: tag %s (live at send %d, written %d, seen %d)"
                         % (self.i, parts[0], live_at_send, st.written, self.seen))
            if k > self.seen:
                self.seen = k
                st.first_seen.setdefault(k, time.monotonic())
            await asyncio.sleep(PACE)


def log_count(pattern):
    try:
        with open(LOGFILE) as f:
            return len(re.findall(pattern, f.read()))
    except OSError:
        return 0


async def wait_until(pred, what, st):
    deadline = time.monotonic() + STEP
    while not pred():
        if time.monotonic() > deadline:
            st.error("timed out waiting for " + what)
            return False
        await asyncio.sleep(0.002)
    return True


async def main():
    st = State()
    st.first_seen = {}
    clients = [Client(st, i) for i in range(CONNS)]
    for c in clients:
        await c.connect()
    ok_re = r"reloaded \S*/tag\.lua \(route /tag"
    fail_re = r"reload of \S*/tag\.lua failed"
    lat, saves = [], []
    await wait_until(lambda: all(c.seq > 1 for c in clients), "first answers", st)
    good_n = 0
    for i in range(1, SAVES + 1):
        pattern = PATTERNS[i % len(PATTERNS)]
        ok0, fail0 = log_count(ok_re), log_count(fail_re)
        if i % 3 == 0:
            text = BROKEN[(i // 3 - 1) % len(BROKEN)]
            pattern(text)
            saved = time.monotonic()
            await wait_until(lambda: log_count(fail_re) > fail0, "broken save %d logged" % i, st)
            saves.append({"save": i, "broken": True, "pattern": pattern.__name__,
                          "logged_ms": (time.monotonic() - saved) * 1e3})
            # answers keep the live tag (checked per answer); let every client answer once more
            marks = [c.seq for c in clients]
            await wait_until(lambda: all(c.seq > m + 1 for c, m in zip(clients, marks)),
                             "answers after broken save %d" % i, st)
        else:
            good_n += 1
            tag = ("B" if good_n % 2 else "A") + str(i)
            st.written = i
            pattern(GOOD[tag[0]].replace("@TAG@", tag))
            saved = time.monotonic()
            await wait_until(lambda: log_count(ok_re) > ok0, "save %d logged" % i, st)
            logged = time.monotonic()
            st.live = i
            await wait_until(lambda: all(c.seen >= i for c in clients),
                             "every client to see %s" % tag, st)
            first = st.first_seen.get(i, float("nan"))
            lat.append((first - saved) * 1e3)
            saves.append({"save": i, "tag": tag, "pattern": pattern.__name__,
                          "logged_ms": (logged - saved) * 1e3,
                          "first_answer_ms": (first - saved) * 1e3})
        if st.errors:
            break
    # ticks of the final version reach every client: subscriptions and the new timer live
    final = st.live
    await wait_until(lambda: all(c.tick_seen == final and c.ticks_since >= 2 for c in clients),
                     "ticks of the final version", st)
    st.running = False
    await asyncio.gather(*(c.sender_task for c in clients), return_exceptions=True)
    open_at_end = sum(1 for c in clients if c.closed is None)
    for c in clients:
        await c.ws.close()
    await asyncio.gather(*(c.reader_task for c in clients), return_exceptions=True)
    return {
        "errors": st.errors,
        "answers": st.answers,
        "ticks": st.ticks,
        "open_at_end": open_at_end,
        "saves": saves,
        "reloads_logged": log_count(ok_re),
        "failures_logged": log_count(fail_re),
        "latency_ms": {"median": statistics.median(lat) if lat else None,
                       "worst": max(lat) if lat else None, "n": len(lat)},
    }


print(json.dumps(asyncio.run(main())), flush=True)
