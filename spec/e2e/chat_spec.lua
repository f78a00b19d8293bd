-- The sample chat on the real server, driven by independent clients (Python
-- websockets, Debian python3-websockets under /usr/bin/python3).
local server = require "server"
local proc = require "sbt_proc"
local cjson = require "cjson"

local PYTHON = "/usr/bin/python3"

-- The clients. Each scenario prints one JSON object: what every client received.
-- Steps wait for the acting client's own answer before the next one, and every client
-- ends with a ping whose pong proves nothing else is on its way (the server answers
-- in order), so "exactly what they should" needs no sleeps.
local CLIENT = [=[
import asyncio, json, sys, urllib.request
import websockets

PORT = int(sys.argv[1])
URL = "ws://127.0.0.1:%d/chat" % PORT
STEP = 10

class Client:
    def __init__(self, name):
        self.name, self.got, self.cond = name, [], asyncio.Condition()

    async def connect(self, **kw):
        self.ws = await websockets.connect(URL, **kw)
        self.task = asyncio.create_task(self.reader())
        await self.wait("welcome")
        return self

    async def reader(self):
        try:
            async for raw in self.ws:
                msg = json.loads(raw) if isinstance(raw, str) else {"binary": raw.hex()}
                async with self.cond:
                    self.got.append(msg)
                    self.cond.notify_all()
        except websockets.ConnectionClosed:
            pass

    async def send(self, **msg):
        await self.ws.send(json.dumps(msg))

    async def wait(self, type_, **fields):
        def match():
            for m in self.got:
                if m.get("type") == type_ and all(m.get(k) == v for k, v in fields.items()):
                    return m
        async with self.cond:
            await asyncio.wait_for(self.cond.wait_for(match), STEP)
            return match()

    # The next message not seen by a wait_next before (any type but room lists).
    async def wait_next(self):
        self.next = getattr(self, "next", 0)
        def match():
            while self.next < len(self.got):
                m = self.got[self.next]
                self.next += 1
                if m.get("type") != "rooms":
                    return m
        async with self.cond:
            found = []
            def pred():
                m = match()
                if m is not None:
                    found.append(m)
                return bool(found)
            await asyncio.wait_for(self.cond.wait_for(pred), STEP)
            return found[0]

    async def wait_next_of(self, *types):
        while True:
            m = await self.wait_next()
            if m.get("type") in types:
                return m

    async def drain(self):
        await self.send(type="ping")
        await self.wait("pong")

    def seen(self):
        # Room lists and member lists are pushed on timers; the welcome was checked on connect.
        return [m for m in self.got if m.get("type") not in ("rooms", "members", "welcome", "pong")]

async def user(name, room=None):
    c = await Client(name).connect()
    await c.send(type="nick", nick=name)
    await c.wait("nick", nick=name)
    if room:
        await c.send(type="join", room=room)
        await c.wait("joined", room=room)
    return c

async def three_users():
    ann = await user("ann", "lobby")
    bob = await user("bob", "lobby")
    await ann.wait("join", nick="bob")
    cy = await user("cy", "dev")
    await ann.send(type="join", room="dev")
    await ann.wait("joined", room="dev")
    await cy.wait("join", nick="ann")

    await ann.send(type="say", room="lobby", text="hello lobby")
    await ann.wait("message", text="hello lobby")
    await bob.wait("message", text="hello lobby")
    await cy.send(type="say", room="dev", text="hello dev <b>")
    await cy.wait("message", text="hello dev <b>")
    await ann.wait("message", text="hello dev <b>")
    await bob.send(type="pm", room="lobby", to="ann", text="psst")
    await bob.wait("pm", text="psst")
    await ann.wait("pm", text="psst")
    await cy.send(type="pm", room="dev", to="bob", text="hi bob")
    await cy.wait("error", code="no_such_user")
    await bob.send(type="typing", room="lobby", typing=True)
    await ann.wait("typing", nick="bob")
    await bob.send(type="leave", room="lobby")
    await bob.wait("left", room="lobby")
    await ann.wait("leave", nick="bob", room="lobby")
    await cy.ws.close()
    await ann.wait("leave", nick="cy", room="dev")
    for c in (ann, bob):
        await c.drain()
    rooms = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/chat" % PORT, timeout=STEP).read())
    await ann.ws.close()
    await bob.ws.close()
    return {"ann": ann.seen(), "bob": bob.seen(), "cy": cy.seen(), "http": rooms}

async def history_and_limits():
    ann = await user("ann", "lobby")
    for i in range(3):
        await ann.send(type="say", room="lobby", text="m%d" % i)
    await ann.wait("message", text="m2")
    print("RELOAD_NOW", flush=True)
    sys.stdin.readline()  # the spec sent SIGHUP and saw the reload in the log
    bob = await user("bob")
    await bob.send(type="join", room="lobby")
    joined = await bob.wait("joined", room="lobby")
    # A flood: the 11th message in a burst is answered with an error, not a disconnect.
    for i in range(12):
        await bob.send(type="say", room="lobby", text="flood %d" % i, ref=i)
    limited = await bob.wait("error", code="rate_limited")
    await asyncio.sleep(0.3)  # the bucket refills at 5 per second: the connection still works
    await bob.drain()
    bad = Client("bad")
    await bad.connect()
    await bad.ws.send("not json")
    await bad.wait("error", code="bad_message")
    await bad.ws.send(b"\x00\x01")
    await bad.send(type="nick", nick="<script>")
    await bad.wait("error", code="nick_invalid")
    await bad.drain()
    errors = [m["code"] for m in bad.got if m.get("type") == "error"]
    bob_open, bad_open = bob.ws.open, bad.ws.open
    for c in (ann, bob, bad):
        await c.ws.close()
    return {"history": [m["text"] for m in joined["history"]], "members": joined["members"],
            "limited": limited, "bob_open": bob_open, "bad_errors": errors, "bad_open": bad_open}

async def budgets():
    # Typing flags do not spend the message budget: after 20 of them, 10 messages pass.
    ann = await user("ann", "lobby")
    bob = await user("bob", "lobby")
    await asyncio.sleep(0.5)  # ann's nick and join spent 2 of her 10: refilled at 5 a second
    for _ in range(20):
        await ann.send(type="typing", room="lobby", typing=True)
    for i in range(10):
        await ann.send(type="say", room="lobby", text="t%d" % i, ref="r%d" % i)
    await ann.send(type="say", room="lobby", text="over", ref="r10")
    limited = await ann.wait("error", code="rate_limited")
    await bob.wait("message", text="t9")
    said = [m["text"] for m in ann.got if m.get("type") == "message"]
    typing = len([m for m in bob.got if m.get("type") == "typing"])
    for c in (ann, bob):  # their lobby would count among this address's rooms
        await c.ws.close()
        await c.task
    # One address cannot take every room: its connections are in at most 20 rooms;
    # a client from another address (127.0.0.2) still gets a room.
    conns = [await user("u%d" % i) for i in range(3)]
    answers = []
    for i in range(21):
        c = conns[i // 10]
        await c.send(type="join", room="r%d" % i)
        await asyncio.sleep(0.21)  # under the rate limit
        while True:
            m = await c.wait_next()
            if m.get("type") in ("joined", "error"):
                break
        answers.append(m.get("code") or m["type"])
    other = Client("other")
    await other.connect(local_addr=("127.0.0.2", 0))
    await other.send(type="nick", nick="other")
    await other.wait("nick")
    await other.send(type="join", room="r20")
    other_joined = (await other.wait_next_of("joined", "error"))
    for c in [other] + conns:
        await c.ws.close()
    return {"said": said, "typing": typing, "limited": limited, "answers": answers,
            "other": other_joined.get("code") or other_joined["type"]}

async def bad_fields():
    # A join's since and epoch and a request's ref that are not what the protocol says
    # are ignored, never an error: the join gets the last messages, the error no ref.
    ann = await user("ann", "bf")
    for i in range(2):
        await ann.send(type="say", room="bf", text="b%d" % i)
    last = await ann.wait("message", text="b1")
    since, epoch = last["id"] - 1, last["epoch"]
    joins = []
    for i, (sn, ep) in enumerate([(since, epoch), (str(since), epoch), (-1, epoch),
                                  (since + 0.5, epoch), (since, 7), (since, epoch + "e" * 65)]):
        c = await user("j%d" % i)
        await c.send(type="join", room="bf", since=sn, epoch=ep)
        j = await c.wait("joined", room="bf")
        joins.append({"recovered": j["recovered"], "history": [m["text"] for m in j["history"]]})
        await c.ws.close()
    refs = []
    for ref in [{"a": 1}, "r" * 65, 1.5, [1], "r" * 64, 7]:
        await ann.send(type="say", room="nowhere", text="x", ref=ref)
        e = await ann.wait_next_of("error")
        refs.append([e["code"], e.get("ref", "absent")])
    await ann.ws.close()
    return {"joins": joins, "refs": refs}

print(json.dumps(asyncio.run(globals()[sys.argv[2]]())), flush=True)
]=]

local function strip(msgs)
    for _, m in ipairs(msgs) do
        if m.type == "message" or m.type == "joined" then
            assert(type(m.epoch) == "string", "no epoch in a " .. m.type)
        end
        m.ts, m.id, m.epoch = nil, nil, nil
        if m.type == "joined" then
            for _, h in ipairs(type(m.history) == "table" and m.history or {}) do
                h.ts, h.id, h.epoch = nil, nil, nil
            end
        end
    end
    return msgs
end

describe("the chat on the real server", function()
    local s, script, out, pid

    before_each(function()
        script = server.tmpname(".py")
        local f = assert(io.open(script, "w"))
        f:write(CLIENT)
        f:close()
        out = server.tmpname(".out")
        s = server.start{ app = "scripts" }
    end)

    after_each(function()
        if pid then
            proc.kill(pid, proc.SIGKILL)
            proc.wait(pid)
            pid = nil
        end
        if s then s:stop() end
        os.remove(script)
        os.remove(out)
        os.remove(out .. ".err")
    end)

    local function run(scenario)
        -- The sanitizer build preloads libasan into the spec runner: not into the client.
        local p = io.popen(("env -u LD_PRELOAD timeout 60 %s %s %d %s 2>%s"):format(
            PYTHON, script, s.port, scenario, out .. ".err"))
        local text = p:read("a")
        p:close()
        local ok, res = pcall(cjson.decode, text:match("([^\n]*)\n?$"))
        assert(ok and type(res) == "table", "client failed:\n" .. text .. server.read_file(out .. ".err"))
        return res
    end

    it("lets three users in two rooms chat and see exactly what they should", function()
        local r = run("three_users")
        assert.same({
            { type = "nick", nick = "ann" },
            { type = "joined", room = "lobby", members = { "ann" }, history = {}, recovered = false },
            { type = "join", room = "lobby", nick = "bob" },
            { type = "joined", room = "dev", members = { "ann", "cy" }, history = {}, recovered = false },
            { type = "message", room = "lobby", nick = "ann", text = "hello lobby" },
            { type = "message", room = "dev", nick = "cy", text = "hello dev <b>" },
            { type = "pm", room = "lobby", from = "bob", to = "ann", text = "psst" },
            { type = "typing", room = "lobby", nick = "bob", typing = true },
            { type = "leave", room = "lobby", nick = "bob" },
            { type = "leave", room = "dev", nick = "cy" },
        }, strip(r.ann))
        assert.same({
            { type = "nick", nick = "bob" },
            { type = "joined", room = "lobby", members = { "ann", "bob" }, history = {}, recovered = false },
            { type = "message", room = "lobby", nick = "ann", text = "hello lobby" },
            { type = "pm", room = "lobby", from = "bob", to = "ann", text = "psst" },
            { type = "left", room = "lobby" },
        }, strip(r.bob))
        local cy = strip(r.cy)
        assert.equal("no_such_user", cy[5].code)
        cy[5] = nil
        assert.same({
            { type = "nick", nick = "cy" },
            { type = "joined", room = "dev", members = { "cy" }, history = {}, recovered = false },
            { type = "join", room = "dev", nick = "ann" },
            { type = "message", room = "dev", nick = "cy", text = "hello dev <b>" },
        }, cy)
        -- Plain HTTP on the route: ann is still in two rooms, bob in none.
        assert.equal(2, r.http.online)
        assert.same({ { name = "dev", members = 1 }, { name = "lobby", members = 1 } }, r.http.rooms)
    end)

    it("keeps history across a reload, rate-limits with an error, and answers bad input with errors", function()
        local script_out = server.tmpname(".scenario")
        local fifo = server.tmpname(".fifo")
        assert(os.execute("mkfifo '" .. fifo .. "'"))
        pid = assert(proc.spawn({ "/bin/sh", "-c", ('exec %s %s %d history_and_limits <%s'):format(
            PYTHON, script, s.port, fifo) },
            { stdout = script_out, stderr = script_out .. ".err", env = { LD_PRELOAD = "" } }))
        local feed = assert(io.open(fifo, "w")) -- unblocks the shell's open of the fifo
        server.wait_for(function()
            if server.read_file(script_out):find("RELOAD_NOW", 1, true) then return true end
            assert(not proc.wait(pid, true), "client failed:\n" .. server.read_file(script_out .. ".err"))
        end, 30, "the first messages")
        s:signal(proc.SIGHUP)
        s:wait_log("reloaded [^\n]*chat%.lua")
        feed:write("go\n")
        feed:close()
        server.wait_for(function() return proc.wait(pid, true) end, 60, "the client to finish")
        pid = nil
        local text = server.read_file(script_out)
        local errs = server.read_file(script_out .. ".err")
        os.remove(script_out)
        os.remove(script_out .. ".err")
        os.remove(fifo)
        local ok, r = pcall(cjson.decode, text:match("([^\n]*)\n?$"))
        assert(ok and type(r) == "table", "client failed:\n" .. text .. errs)
        assert.same({ "m0", "m1", "m2" }, r.history)
        assert.same({ "ann", "bob" }, r.members)
        assert.equal("rate_limited", r.limited.code)
        assert.is_true(r.bob_open)
        assert.same({ "bad_message", "bad_message", "nick_invalid" }, r.bad_errors)
        assert.is_true(r.bad_open)
        assert.falsy(s:log():find("handler failed", 1, true))
    end)

    it("keeps typing off the message budget, names the refused text, keeps one address to 20 rooms", function()
        local r = run("budgets")
        local want = {}
        for i = 0, 9 do want[#want + 1] = "t" .. i end
        assert.same(want, r.said)
        assert.same({ "rate_limited", "say", "r10" }, { r.limited.code, r.limited.request, r.limited.ref })
        assert.truthy(r.limited.retry_after > 0 and r.limited.retry_after <= 1)
        assert.equal(5, r.typing) -- past their own burst, typing flags are dropped
        local answers = {}
        for i = 1, 20 do answers[i] = "joined" end
        answers[21] = "too_many_rooms"
        assert.same(answers, r.answers)
        assert.equal("joined", r.other)
    end)

    it("ignores a join's malformed since and epoch and a request's malformed ref", function()
        local r = run("bad_fields")
        local all = { recovered = false, history = { "b0", "b1" } }
        assert.same({ { recovered = true, history = { "b1" } }, all, all, all, all, all }, r.joins)
        local nir = "not_in_room"
        assert.same({ { nir, "absent" }, { nir, "absent" }, { nir, "absent" }, { nir, "absent" },
            { nir, ("r"):rep(64) }, { nir, 7 } }, r.refs)
    end)
end)
