-- The switchboard module and pub/sub on the real server (spec/apps/api):
-- publish, subscribers, topics, timers, shared, log, now, json; Python
-- websockets clients as the independent side; 10,000 subscribers via sbload.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local cjson = require "cjson"
local proc = require "sbt_proc"

local PYTHON = "/usr/bin/python3"

local function cmd(c, t)
    assert(c:send(wsframe.text(cjson.encode(t))))
    local f = assert(c:recv_frame())
    return cjson.decode(f.payload)
end

local PUBSUB = [[
import asyncio, json, sys
import websockets

URL = "ws://127.0.0.1:%s/probe" % sys.argv[1]

class C:
    async def start(self):
        self.ws = await websockets.connect(URL)
        self.got = []
        return self

    async def cmd(self, **c):
        # anything that arrives before the answer was published to us
        await self.ws.send(json.dumps(c))
        while True:
            m = await asyncio.wait_for(self.ws.recv(), 10)
            if isinstance(m, str) and m.startswith("{"):
                return json.loads(m)
            self.got.append(m if isinstance(m, str) else "bin:" + m.hex())

    async def settle(self):
        await self.cmd(op="fields")
        got, self.got = self.got, []
        return got

async def main():
    a, b, c = [await C().start() for _ in range(3)]
    out = {}
    out["sub"] = [(await x.cmd(op="sub", topic="room"))["ret"] for x in (a, b, c)]
    out["resub"] = (await a.cmd(op="sub", topic="room"))["ret"]
    await a.cmd(op="sub", topic="other")
    out["count"] = (await c.cmd(op="count", topic="room"))["ret"]
    out["topics"] = (await c.cmd(op="topics"))["ret"]
    out["ws_publish"] = (await a.cmd(op="pub", topic="room", msg="from a"))["ret"]
    out["ws_publish_bin"] = (await a.cmd(op="pub", topic="room", msg="AB", binary=True))["ret"]
    out["after_ws_publish"] = [await x.settle() for x in (a, b, c)]
    out["sb_publish"] = (await c.cmd(op="spub", topic="room", msg="to all"))["ret"]
    out["after_sb_publish"] = [await x.settle() for x in (a, b, c)]
    out["unsub"] = (await b.cmd(op="unsub", topic="room"))["ret"]
    out["unsub_again"] = (await b.cmd(op="unsub", topic="room"))["ret"]
    out["count_after_unsub"] = (await c.cmd(op="count", topic="room"))["ret"]
    await c.cmd(op="spub", topic="room", msg="no b")
    out["after_unsub"] = [await x.settle() for x in (a, b, c)]
    out["nobody"] = (await c.cmd(op="spub", topic="nobody", msg="x"))["ret"]
    await a.ws.close()
    await c.ws.close()
    # closed connections leave their topics; empty topics are gone
    for _ in range(100):
        r = await b.cmd(op="topics")
        if r["ret"] == []:
            break
        await asyncio.sleep(0.02)
    out["topics_at_end"] = r["ret"]
    out["count_at_end"] = (await b.cmd(op="count", topic="room"))["ret"]
    await b.ws.close()
    print(json.dumps(out))

asyncio.run(main())
]]

describe("the switchboard module", function()
    local s
    setup(function() s = server.start{ app = "spec/apps/api" } end)
    teardown(function() if s then s:stop() end end)

    it("publishes to every subscriber (sb.publish) or all but the sender (ws:publish)", function()
        local file = server.tmpname(".py")
        local f = assert(io.open(file, "w"))
        f:write(PUBSUB)
        f:close()
        local p = io.popen(("env -u LD_PRELOAD timeout 30 %s %s %d 2>&1"):format(PYTHON, file, s.port))
        local out = p:read("a")
        p:close()
        os.remove(file)
        local ok, r = pcall(cjson.decode, out:match("([^\n]*)\n?$"))
        assert(ok and type(r) == "table", "python client failed:\n" .. out)
        assert.same({ true, true, true }, r.sub)
        assert.is_false(r.resub)
        assert.equal(3, r.count)
        assert.same({ "other", "room" }, r.topics)
        assert.equal(2, r.ws_publish)
        assert.equal(2, r.ws_publish_bin)
        assert.same({ {}, { "from a", "bin:4142" }, { "from a", "bin:4142" } }, r.after_ws_publish)
        assert.equal(3, r.sb_publish)
        assert.same({ { "to all" }, { "to all" }, { "to all" } }, r.after_sb_publish)
        assert.is_true(r.unsub)
        assert.is_false(r.unsub_again)
        assert.equal(2, r.count_after_unsub)
        assert.same({ { "no b" }, {}, { "no b" } }, r.after_unsub)
        assert.equal(0, r.nobody)
        assert.same({}, r.topics_at_end)
        assert.equal(0, r.count_at_end)
    end)

    it("raises naming the function for an empty topic or invalid UTF-8 text", function()
        local c = rawws.open(s.port, "/probe")
        c:send(wsframe.text('{"op":"spub","topic":"","msg":"x"}'))
        assert.equal(1011, (c:recv_close()))
        c:close()
        s:wait_log("probe%.lua:%d+: bad argument #1 to 'publish' %(topic must not be empty%)")
        local d = rawws.open(s.port, "/probe")
        d:send(wsframe.text('{"op":"sub","topic":""}'))
        assert.equal(1011, (d:recv_close()))
        d:close()
        s:wait_log("probe%.lua:%d+: bad argument #1 to 'subscribe' %(topic must not be empty%)")
    end)

    it("runs after and every timers, and :cancel() stops them", function()
        local c = rawws.open(s.port, "/probe")
        local r = cmd(c, { op = "timers", secs = 0.2 })
        assert.same({ armed = 0, first = true, again = false }, r) -- nothing ran yet
        local t = cjson.decode(assert(c:recv_frame()).payload)
        assert.same({ "every 1", "every 2", "every 3", "after" }, t.fired)
        assert.is_true(t.elapsed >= 0.199 and t.elapsed < 2, "elapsed " .. t.elapsed)
        c:close()
    end)

    it("keeps switchboard.shared across connections and routes", function()
        local a = rawws.open(s.port, "/probe")
        local b = rawws.open(s.port, "/probe")
        local base = cmd(a, { op = "shared", add = 0 }).ret
        assert.equal(base + 5, cmd(a, { op = "shared", add = 5 }).ret)
        assert.equal(base + 7, cmd(b, { op = "shared", add = 2 }).ret)
        a:close()
        b:close()
        -- /stats (another route) reads the same table
        local h = rawws.connect(s.port)
        h:send("GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        local st, _, body = h:http()
        h:close()
        assert.equal(200, st)
        assert.is_table(cjson.decode(body).opened)
    end)

    it("logs info, warn and error to the server log with the script's file:line", function()
        local c = rawws.open(s.port, "/probe")
        assert.is_true(cmd(c, { op = "log", msg = "m1" }).ret)
        c:close()
        s:wait_log("error [^\n]*error says m1")
        local log = s:log()
        assert.matches("info  %[probe%.lua:%d+%] info says m1", log)
        assert.matches("warn  %[probe%.lua:%d+%] warn says m1 42", log)
        assert.matches("error %[probe%.lua:%d+%] error says m1", log)
    end)

    it("gives a monotonic, sub-millisecond now()", function()
        local c = rawws.open(s.port, "/probe")
        local r = cmd(c, { op = "now" })
        c:close()
        assert.is_true(r.b >= r.a and r.c > r.a)
        assert.is_true(r.c - r.a < 0.5)
        -- sub-millisecond: a 100k-iteration loop takes well under a millisecond of clock
        -- yet now() moved, or differs in the fractional part below 1e-3
        local frac = (r.c * 1e3) % 1
        assert.is_true(frac ~= 0 or (r.a * 1e3) % 1 ~= 0)
    end)

    it("has json: encode errors are Lua errors, decode and encode work", function()
        local c = rawws.open(s.port, "/probe")
        local r = cmd(c, { op = "json" })
        c:close()
        assert.is_false(r.enc.ok)
        assert.matches("bad argument #1 to .encode. %(cannot encode a function%)", r.enc.err)
        assert.equal(2, r.dec)
        assert.equal('{"k":"v"}', r.round)
    end)
end)

describe("fan-out", function()
    it("publishes to 10,000 subscribers with one Lua call, every message to every one (sbload fanout)", function()
        local s = server.start{ app = "spec/apps/api" }
        local ok, err = pcall(function()
            local out = server.tmpname(".json")
            local pid = assert(proc.spawn({ os.getenv("SB_BUILD") .. "/sbload", "fanout",
                "--url", ("ws://127.0.0.1:%d/fanout"):format(s.port), "-c", "10000", "-d", "4",
                "-s", "32", "-n", "20", "--timeout", "60", "--json" },
                { stdout = out, stderr = out .. ".err", env = { LD_PRELOAD = "" } }))
            server.wait_for(function() return proc.wait(pid, true) end, 90, "sbload")
            local text = server.read_file(out) .. server.read_file(out .. ".err")
            os.remove(out)
            os.remove(out .. ".err")
            local r = cjson.decode(text:match("(%b{})") or "{}")
            assert.is_table(r, text)
            s:wait_log("published to 10000 of 10000")
            assert.equal(20, r.published, text)
            assert.equal(10000 * 20, r.deliveries, text)
            print(("# 10,000 subscribers: %.0f deliveries/s"):format(r.deliveries_per_s))
        end)
        s:stop()
        assert(ok, err)
    end)
end)
