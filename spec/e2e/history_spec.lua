-- Topic history in one process (no --redis): positions, recovery with
-- ws:subscribe{since, epoch}, trimming, the byte bound, paced replays, format errors.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local cjson = require "cjson"

local APP = "spec/apps/history"

local h = require "hclient"
local client, send, until_op, until_n = h.client, h.send, h.until_op, h.until_n
local pub, sub, read, positions, range = h.pub, h.sub, h.read, h.positions, h.range

describe("history in process", function()
    local s

    after_each(function()
        if s then s:stop() end
        s = nil
    end)

    it("numbers publications 1, 2, 3 per topic and formats them with position and epoch", function()
        s = server.start{ app = APP }
        local c = client(s)
        local live = sub(c, "room:a", 0, "none")
        assert.is_false(live.recovered)
        assert.is_string(live.epoch)
        pub(c, "room:a", "m", 3)
        pub(c, "room:b", "x", 1)
        until_n(c, 3)
        local got = {}
        for i, p in ipairs(c.frames) do got[i] = cjson.decode(p) end
        assert.are.same({ 1, 2, 3 }, positions(c.frames))
        assert.are.same({ "m1", "m2", "m3" }, { got[1].msg, got[2].msg, got[3].msg })
        assert.are.equal(live.epoch, got[1].epoch)
        assert.are.equal(cjson.null, read(c, "room:never").epoch) -- a read makes no stream
        local r = read(c, "room:b")
        assert.are.equal(1, r.items[1].pos)
        assert.are.equal("x1", r.items[1].msg)
        assert.are_not.equal(live.epoch, r.epoch) -- each topic its own epoch
        c:close()
    end)

    it("recovers exactly what was missed, then goes live, without gap or duplicate", function()
        s = server.start{ app = APP }
        local p = client(s)
        pub(p, "room:long:r", "a", 10)
        local e = read(p, "room:long:r").epoch
        local c = client(s)
        local m = sub(c, "room:long:r", 4, e)
        assert.is_true(m.recovered)
        assert.are.equal(e, m.epoch)
        pub(p, "room:long:r", "b", 3)
        until_n(c, 9)
        assert.are.same(range(5, 13), positions(c.frames))
        assert.is_true(c:eof(0.2) == false or #c.buf == 0) -- nothing more
        -- a subscriber that is up to date gets nothing but the live ones
        local d = client(s)
        assert.is_true(sub(d, "room:long:r", 13, e).recovered)
        pub(p, "room:long:r", "c", 1)
        until_n(d, 1)
        assert.are.same({ 14 }, positions(d.frames))
        -- one format per publication, replays included
        assert.are.equal(14, h.formats(p))
        p:close() c:close() d:close()
    end)

    it("says recovered=false and sends the kept history when it cannot recover", function()
        s = server.start{ app = APP }
        local p = client(s)
        pub(p, "room:t", "m", 12) -- size 5: positions 8..12 kept
        local e = read(p, "room:t").epoch
        pub(p, "room:long:o", "o", 1)
        local other = read(p, "room:long:o").epoch
        assert.is_string(other)
        local cases = {
            { "past the history", 3, e },
            { "another epoch", 10, e .. "x" },
            { "another topic's epoch", 10, other },
            { "from the future", 13, e },
            { "malformed since", "abc", e },
            { "negative since", -1, e },
            { "fractional since", 9.5, e },
            { "no epoch", 10, nil },
            { "a huge since", 1e15, e },
            { "a long epoch", 10, string.rep("e", 200) },
        }
        for _, case in ipairs(cases) do
            local c = client(s)
            local m = sub(c, "room:t", case[2], case[3])
            assert.is_false(m.recovered, case[1])
            assert.are.equal(e, m.epoch, case[1])
            until_n(c, 5)
            assert.are.same(range(8, 12), positions(c.frames), case[1])
            c:close()
        end
        -- the edge: since = first kept - 1 recovers
        local c = client(s)
        assert.is_true(sub(c, "room:t", 7, e).recovered)
        assert.is_nil(next(read(c, "room:t", 1e15).items))
        until_n(c, 5)
        assert.are.same(range(8, 12), positions(c.frames))
        c:close() p:close()
    end)

    it("starts a new epoch after a restart", function()
        s = server.start{ app = APP }
        local p = client(s)
        pub(p, "room:e", "m", 3)
        local e = read(p, "room:e").epoch
        p:close()
        s:stop()
        s = server.start{ app = APP }
        p = client(s)
        pub(p, "room:e", "n", 4)
        local c = client(s)
        local m = sub(c, "room:e", 3, e)
        assert.is_false(m.recovered)
        assert.are_not.equal(e, m.epoch)
        until_n(c, 4)
        assert.are.same({ 1, 2, 3, 4 }, positions(c.frames))
        p:close() c:close()
    end)

    it("trims to the size and drops what is older than the ttl", function()
        s = server.start{ app = APP }
        local p = client(s)
        pub(p, "room:s", "m", 8)
        local r = read(p, "room:s")
        assert.are.equal(5, #r.items)
        assert.are.equal(4, r.items[1].pos)
        assert.are.equal("m8", r.items[5].msg)
        -- limit: the last n; with since, the first n after it
        assert.are.same({ 7, 8 }, { read(p, "room:s", nil, 2).items[1].pos,
            read(p, "room:s", nil, 2).items[2].pos })
        assert.are.equal(5, read(p, "room:s", 4, 1).items[1].pos)
        pub(p, "short:t", "x", 3) -- ttl 1 s
        local r3 = read(p, "short:t")
        assert.are.equal(3, #r3.items)
        server.wait_for(function() return next(read(p, "short:t").items) == nil end, 5,
            "the ttl to drop short:t")
        -- positions go on while the topic is known; once forgotten (nothing kept and no
        -- publication for its ttl) it starts again at 1 in a new epoch
        pub(p, "short:t", "y", 1)
        local r4 = read(p, "short:t")
        if r4.epoch == r3.epoch then
            assert.are.equal(4, r4.items[1].pos)
        else
            assert.are.equal(1, r4.items[1].pos)
        end
        p:close()
    end)

    it("bounds every topic's history by --history-max-bytes, counted in the metrics", function()
        s = server.start{ app = APP, args = { "--history-max-bytes", "20000",
            "--metrics-path", "/metrics" } }
        local p = client(s)
        local big = string.rep("x", 1000)
        for i = 1, 20 do pub(p, "plain:" .. (i % 3), big .. i) end
        local _, _, body = rawws.get(s.port, "/metrics")
        local bytes = tonumber(body:match("\nswitchboard_history_bytes (%d+)"))
        local evictions = tonumber(body:match("\nswitchboard_history_evictions_total (%d+)"))
        assert.is_true(bytes > 10000 and bytes <= 20000, "bytes " .. tostring(bytes))
        assert.is_true(evictions > 0)
        -- the oldest went first: what is left is the newest publications
        local kept = {}
        for i = 0, 2 do
            for _, it in ipairs(read(p, "plain:" .. i).items) do
                kept[#kept + 1] = tonumber(it.msg:sub(1001))
            end
        end
        table.sort(kept)
        assert.are.same(range(21 - #kept, 20), kept)
        -- a flood of topics: their streams count and go with their history
        for i = 1, 400 do pub(p, "plain:flood" .. i, "f") end
        _, _, body = rawws.get(s.port, "/metrics")
        bytes = tonumber(body:match("\nswitchboard_history_bytes (%d+)"))
        assert.is_true(bytes <= 20000, "bytes " .. tostring(bytes))
        assert.are.equal(1, #read(p, "plain:flood400").items)
        assert.is_true(#kept < 20)
        p:close()
    end)

    it("paces a replay bigger than --out-high by drain, live ones after it, none lost", function()
        s = server.start{ app = APP, args = { "--out-high", "16k", "--out-low", "4k",
            "--out-max", "64k" } }
        local p = client(s)
        local pad = string.rep("p", 1000)
        for _ = 1, 4 do pub(p, "big:r", pad, 500) end -- 2000 publications, ~2 MB
        local e = read(p, "big:r", nil, 1).epoch
        local c = client(s, { rcvbuf = 4096 })
        send(c, { op = "sub", topic = "big:r", since = 0, epoch = e })
        send(p, { op = "spam", topic = "big:r", n = 200, every = 0.002 })
        until_op(p, "spamming")
        local socket = require "socket"
        socket.sleep(0.3) -- let the server's queue fill up against the small window
        local subbed
        while #c.frames < 2200 do
            local f, ferr = c:recv_frame()
            assert(f, tostring(ferr) .. " after " .. #c.frames .. " publications, last "
                .. tostring(c.frames[#c.frames]) .. (subbed and " (subbed)" or ""))
            assert.are.equal(1, f.opcode)
            local m = cjson.decode(f.payload)
            if m.op == "subbed" then subbed = m else c.frames[#c.frames + 1] = f.payload end
        end
        assert.are.same(range(1, 2200), positions(c.frames))
        if not subbed then subbed = until_op(c, "subbed") end
        assert.is_true(subbed.recovered)
        local log = s:log()
        assert.is_nil(log:find("out%-max"))
        p:close() c:close()
    end)

    it("never drops a history publication for --out-high: it waits for the drain", function()
        s = server.start{ app = APP, args = { "--out-high", "16k", "--out-low", "4k",
            "--out-max", "1m", "--metrics-path", "/metrics" } }
        local c = client(s, { rcvbuf = 4096 })
        send(c, { op = "live", topic = "big:q" })
        until_op(c, "subbed")
        local p = client(s)
        pub(p, "big:q", string.rep("q", 1000), 300) -- ~300 KB to a reader that does not read
        until_n(c, 300)
        assert.are.same(range(1, 300), positions(c.frames))
        local _, _, body = rawws.get(s.port, "/metrics")
        assert.are.equal("0", body:match("\nswitchboard_deliveries_dropped_total (%d+)"))
        assert.truthy(tonumber(body:match("\nswitchboard_backpressure_events_total (%d+)")) > 0)
        p:close() c:close()
    end)

    it("closes with 1008 a subscriber whose waiting publications pass --out-max", function()
        s = server.start{ app = APP, args = { "--out-high", "16k", "--out-low", "4k",
            "--out-max", "64k", "--metrics-path", "/metrics" } }
        local c = client(s, { rcvbuf = 4096 })
        send(c, { op = "live", topic = "big:m" })
        until_op(c, "subbed")
        local p = client(s)
        pub(p, "big:m", string.rep("m", 1000), 300) -- ~300 KB, never read meanwhile
        local code, reason, seen = c:recv_close()
        assert.are.equal(1008, code)
        assert.are.equal("too slow to read", reason)
        -- what it got before the close has no gap
        assert.are.same(range(1, #seen), positions((function()
            local out = {}
            for i, f in ipairs(seen) do out[i] = f.payload end
            return out
        end)()))
        local _, _, body = rawws.get(s.port, "/metrics")
        assert.are.equal("1", body:match("\nswitchboard_slow_consumers_closed_total (%d+)"))
        p:close() c:close()
    end)

    it("logs a format that raises or returns no string and sends the message as published",
        function()
        s = server.start{ app = APP }
        local c = client(s)
        send(c, { op = "live", topic = "bad:f" })
        until_op(c, "subbed")
        pub(c, "bad:f", "fine")
        pub(c, "bad:f", "boom")
        pub(c, "bad:f", "nil")
        pub(c, "bad:f", "after")
        assert.are.same({ "ok:fine", "boom", "nil", "ok:after" }, c.frames)
        -- a format that adds rules while it runs
        send(c, { op = "live", topic = "grow:x" })
        until_op(c, "subbed")
        pub(c, "grow:x", "a")
        pub(c, "grow:x", "b")
        assert.are.same({ "g1:a", "g2:b" }, { c.frames[5], c.frames[6] })
        s:wait_log("history format of 'bad:' failed on bad:f at position 2: .*boom at 2")
        s:wait_log("history format of 'bad:' failed on bad:f at position 3: it returned nil")
        -- kept with their positions all the same
        local r = read(c, "bad:f")
        assert.are.same({ 1, 2, 3, 4 }, { r.items[1].pos, r.items[2].pos, r.items[3].pos,
            r.items[4].pos })
        c:close()
    end)

    it("takes the new format from a reload, and keeps the positions", function()
        local dir = server.tmpname("-app")
        assert(os.execute("mkdir -p '" .. dir .. "'"))
        local src = [[
local sb = require "switchboard"
sb.history.keep("r:", { format = function(msg, pos) return "%s" .. pos .. ":" .. msg end })
return { message = function(ws, msg)
    if msg == "sub" then ws:subscribe("r:x") ws:send("subbed") else sb.publish("r:x", msg) end
end }
]]
        server.write_file(dir .. "/f.lua", src:format("v1 "))
        s = server.start{ app = dir }
        s:wait_log("reload: watching")
        local c = rawws.open(s.port, "/f")
        assert(c:send(wsframe.text("sub")))
        assert.are.equal("subbed", c:recv_frame().payload)
        assert(c:send(wsframe.text("a")))
        assert.are.equal("v1 1:a", c:recv_frame().payload)
        server.write_file(dir .. "/f.lua", src:format("v2 "))
        s:wait_log("reloaded %S*/f%.lua %(route /f, version 2%)")
        assert(c:send(wsframe.text("b")))
        assert.are.equal("v2 2:b", c:recv_frame().payload)
        c:close()
        os.execute("rm -rf '" .. dir .. "'")
    end)

    it("recovers over permessage-deflate (Python websockets)", function()
        s = server.start{ app = APP, args = { "--deflate-min-size", "0" } }
        local p = client(s)
        pub(p, "room:long:z", string.rep("z", 200), 10)
        local e = read(p, "room:long:z").epoch
        local res = server.python([=[
port, epoch = int(sys.argv[1]), sys.argv[2]
async def main():
    async with websockets.connect("ws://127.0.0.1:%d/h" % port) as ws:
        ext = ws.response_headers.get("Sec-WebSocket-Extensions", "")
        await ws.send(json.dumps({"op": "sub", "topic": "room:long:z", "since": 4,
                                  "epoch": epoch}))
        got, subbed = [], None
        while len(got) < 8 or subbed is None:
            m = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if m.get("op") == "subbed":
                subbed = m
                await ws.send(json.dumps({"op": "pub", "topic": "room:long:z", "msg": "live",
                                          "n": 2}))
            elif m.get("op") != "pubbed":
                got.append([m["pos"], m["msg"][:4]])
        print(json.dumps({"ext": ext, "recovered": subbed["recovered"], "got": got}))
asyncio.run(main())
]=], s.port, e)
        assert.truthy(res.ext:find("permessage-deflate", 1, true))
        assert.is_true(res.recovered)
        local want = {}
        for i = 5, 10 do want[#want + 1] = { i, "zzzz" } end
        want[#want + 1] = { 11, "live" }
        want[#want + 1] = { 12, "live" }
        assert.are.same(want, res.got)
        p:close()
    end)

    it("ws:publish on a history topic reaches every subscriber but the sender", function()
        s = server.start{ app = APP }
        local a, b = client(s), client(s)
        sub(a, "room:w", 0, "-")
        sub(b, "room:w", 0, "-")
        send(a, { op = "wspub", topic = "room:w", msg = "hi" })
        until_op(a, "pubbed")
        until_n(b, 1)
        assert.are.same({ 1 }, positions(b.frames))
        pub(a, "room:w", "x")
        assert.are.same({ 2 }, positions(a.frames))
        a:close() b:close()
    end)
end)
