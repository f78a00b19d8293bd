-- Backpressure against the real server (spec/apps/core: /sub subscribes to
-- "flood", /pub publishes to it, GET /admin reports switchboard.stats()): a
-- subscriber that stops reading keeps the server's memory bounded, its
-- publishes are dropped and counted, ws:send says false past --out-high and
-- drain(ws) fires when it reads again; --slow-policy close drops it with 1008.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local cjson = require "cjson"
local proc = require "sbt_proc"

local APP = "spec/apps/core"
local HIGH, LOW = 256 * 1024, 64 * 1024
-- ASan's quarantine would keep freed buffers resident: keep it small here.
local ENV = { ASAN_OPTIONS = "detect_leaks=1:abort_on_error=1:quarantine_size_mb=4" }

local function rss_kib(pid)
    local status = server.read_file("/proc/" .. pid .. "/status")
    return tonumber(status:match("VmRSS:%s*(%d+) kB"))
end

local function admin(s)
    local h = rawws.connect(s.port)
    h:send("GET /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    local status, _, body = h:http()
    h:close()
    assert.are.equal(200, status)
    return cjson.decode(body)
end

-- Publish rounds of n messages of size bytes until the subscriber is backed
-- up for good (publishes dropped, its queue past the low mark); returns rounds.
local function flood_until_backed_up(s, pub, n, size)
    for round = 1, 400 do
        pub:send(wsframe.text(n .. " " .. size))
        assert.are.equal("published " .. n, pub:recv_frame().payload)
        local a = admin(s)
        if a.stats.dropped_deliveries > 0 and a.subs[1] and a.subs[1].buffered > LOW then
            return round
        end
    end
    error("the subscriber never backed up")
end

describe("backpressure", function()
    local s, clients
    before_each(function() clients = {} end)
    after_each(function()
        for _, c in ipairs(clients) do c:close() end
        if s then s:stop() end
        s = nil
    end)
    local function open(path, opts)
        local c = rawws.open(s.port, path, nil, opts)
        clients[#clients + 1] = c
        return c
    end

    it("drops and counts publishes to a reader that stalls, bounds memory, and drains", function()
        s = server.start{ app = APP, env = ENV,
                          args = { "--out-high", tostring(HIGH), "--out-low", tostring(LOW) } }
        local sub = open("/sub", { rcvbuf = 4096 })
        -- ws:send in one handler: false once the queue passes --out-high, still
        -- queued. A frame this large with nothing queued before it goes to the
        -- kernel at once (conn.c, send_direct): the first ones fill the socket's
        -- buffers, the rest queue; the one that passes the mark is the last.
        sub:send(wsframe.text("fill 65000"))
        local fill = server.wait_for(function() return admin(s).fill end, 5, "the fill")
        assert.is_false(fill.ok)
        assert.is_true(fill.sends >= 5, "sends " .. fill.sends)
        assert.is_true(fill.buffered > HIGH and fill.buffered <= HIGH + 65004,
            "buffered " .. fill.buffered)
        -- read them all: drain(ws) fires once the queue is below --out-low
        local fills, drained = 0, 0
        while fills < fill.sends or drained == 0 do
            local f = assert(sub:recv_frame())
            if f.opcode == 1 then
                assert.truthy(f.payload:match("^drained %d+$"), f.payload)
                drained = drained + 1
            else
                assert.are.equal(("f"):rep(65000), f.payload)
                fills = fills + 1
            end
        end
        assert.are.equal(fill.sends, fills)

        local pub = open("/pub")
        flood_until_backed_up(s, pub, 100, 16384)
        local before = admin(s)
        local rss0 = rss_kib(s.pid)
        for _ = 1, 100 do -- 10,000 more publishes of 16 KiB: 160 MiB if nothing were dropped
            pub:send(wsframe.text("100 16384"))
            assert.are.equal("published 100", pub:recv_frame().payload)
        end
        local rss1 = rss_kib(s.pid)
        local a = admin(s)
        assert.is_true(rss1 - rss0 < 16 * 1024, ("VmRSS grew %d KiB"):format(rss1 - rss0))
        assert.are.equal(a.stats.publishes, a.stats.deliveries + a.stats.dropped_deliveries)
        assert.is_true(a.stats.dropped_deliveries - before.stats.dropped_deliveries >= 9900)
        assert.is_true(a.stats.backpressure_events >= 1)
        -- at most one message past the high mark is ever queued
        assert.is_true(a.subs[1].buffered > LOW and a.subs[1].buffered <= HIGH + 16388,
            "buffered " .. a.subs[1].buffered)
        local drains_before = a.drains

        -- The subscriber reads again: every delivered message arrives intact
        -- and drain(ws) fires; then a marker published after that arrives too.
        local floods = 0
        local function take(f)
            if f.opcode == 1 then
                assert.truthy(f.payload:match("^drained %d+$"), f.payload)
                drained = drained + 1
            elseif #f.payload == 16384 then
                assert.are.equal(("p"):rep(16384), f.payload)
                floods = floods + 1
            else
                assert.are.same({ opcode = 2, payload = "ppppp" }, { opcode = f.opcode, payload = f.payload })
                return true
            end
        end
        for _ = 1, 100000 do
            if floods == a.stats.deliveries then break end
            take(assert(sub:recv_frame()))
        end
        assert.are.equal(a.stats.deliveries, floods)
        pub:send(wsframe.text("1 5"))
        assert.are.equal("published 1", pub:recv_frame().payload)
        for _ = 1, 100 do
            if take(assert(sub:recv_frame())) then break end
        end
        a = admin(s)
        assert.is_true(a.drains > drains_before, "drain(ws) did not fire after the reader caught up")
        assert.are.equal(a.drains, drained)
        assert.are.equal(0, a.subs[1].buffered)
    end)

    it("closes a subscriber past --out-high for --slow-grace with 1008 (--slow-policy close)", function()
        s = server.start{ app = APP, env = ENV,
                          args = { "--out-high", tostring(HIGH), "--out-low", tostring(LOW),
                                   "--slow-policy", "close", "--slow-grace", "1" } }
        local sub = open("/sub", { rcvbuf = 4096 })
        local bystander = open("/echo")
        local pub = open("/pub")
        flood_until_backed_up(s, pub, 100, 16384)
        local t0 = proc.now()
        server.wait_for(function() return admin(s).stats.slow_closed == 1 end, 5, "the slow close")
        assert.is_true(proc.now() - t0 > 0.5, "closed before the grace time")
        -- reading again, the subscriber finds its queued messages, then the close
        local code, reason, seen = sub:recv_close()
        assert.are.equal(1008, code)
        assert.are.equal("too slow to read", reason)
        assert.is_true(#seen > 0)
        assert.is_true(sub:eof(5))
        sub:close()
        table.remove(clients, 1)
        server.wait_for(function() return admin(s).last_close == 1008 end, 5, "the close handler")
        assert.are.equal("still here", bystander:echo("still here"))
        assert.are.equal(1, admin(s).stats.slow_closed)
    end)

    it("delivers what a close handler sends at once, not at the next event", function()
        s = server.start{ app = APP, args = { "--ping-interval", "0" } }
        local watcher = open("/notify")
        assert.truthy(watcher:recv_frame().payload:match("^id %d+$"))
        for _ = 1, 5 do
            local c = rawws.open(s.port, "/notify")
            local id = c:recv_frame().payload:match("^id (%d+)$")
            local t0 = proc.now()
            c:send(wsframe.close(1000))
            assert.are.equal(1000, (c:recv_close()))
            c:close()
            assert.are.equal("gone " .. id .. " 1000", watcher:recv_frame().payload)
            local dt = proc.now() - t0
            assert.is_true(dt < 0.25, ("the close handler's publish took %.3f s"):format(dt))
        end
    end)
end)
