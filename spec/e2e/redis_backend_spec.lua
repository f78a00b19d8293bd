-- A backend publishes through Redis: a plain PUBLISH sb:<topic> from any Redis
-- client reaches the subscribers unchanged (README "Publishing from a
-- backend"), binary goes tagged, and what is neither is refused with a log
-- line and a counter, never mangled.
local server = require "server"
local rawws = require "rawws"
local redis_srv = require "redis"

local APP = server.root .. "/spec/apps/backend"

local resp, numsub = redis_srv.resp, redis_srv.numsub

local function open(s, topic)
    local c = rawws.open(s.port, "/room?topic=" .. topic)
    assert.equal("ready", assert(c:recv_frame()).payload)
    return c
end

describe("a backend publishing through Redis", function()
    local rport, redis, a, b
    local clients = {}

    local function track(c)
        clients[#clients + 1] = c
        return c
    end

    lazy_setup(function()
        rport = redis_srv.free_port()
        redis = redis_srv.start(rport)
        local url = "redis://127.0.0.1:" .. rport
        local args = { "--redis", url, "--metrics-path", "/metrics", "--max-message", "100000" }
        a = server.start { app = APP, args = args }
        b = server.start { app = APP, args = args }
        a:wait_log("redis: connected")
        b:wait_log("redis: connected")
    end)

    lazy_teardown(function()
        for _, c in ipairs(clients) do c:close() end
        redis_srv.stop_all(redis, { a, b })
    end)

    it("reaches every subscriber with a plain PUBLISH sb:<topic> text, unchanged", function()
        local ca, cb = track(open(a, "room")), track(open(b, "room"))
        server.wait_for(function() return numsub(rport, "room") == 2 end, 10, "2 subscribers")
        for _, text in ipairs { "hello", "h", "", "héllo wörld ✓", string.rep("x", 70000) } do
            assert.equal(":2", resp(rport, "PUBLISH", "sb:room", text))
            for _, c in ipairs { ca, cb } do
                local f = assert(c:recv_frame())
                assert.equal(1, f.opcode)
                assert.equal(#text, #f.payload)
                assert.equal(text, f.payload)
            end
        end
        assert.truthy(ca:quiet(0.2))
    end)

    it("delivers binary published with the documented \\xFF b tag, byte for byte", function()
        local ca, cb = track(open(a, "bin")), track(open(b, "bin"))
        server.wait_for(function() return numsub(rport, "bin") == 2 end, 10, "2 subscribers")
        local bytes = {}
        for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
        for _, payload in ipairs { table.concat(bytes), "", "\255b\255m", "\0" } do
            assert.equal(":2", resp(rport, "PUBLISH", "sb:bin", "\255b" .. payload))
            for _, c in ipairs { ca, cb } do
                local f = assert(c:recv_frame())
                assert.equal(2, f.opcode)
                assert.equal(payload, f.payload)
            end
        end
    end)

    it("refuses a text that is not UTF-8 and an unknown tag: a log line and a counter", function()
        local ca = track(open(a, "bad"))
        server.wait_for(function() return numsub(rport, "bad") == 1 end, 10, "a subscriber")
        local before = a:metric("switchboard_redis_refused_total") or 0
        for _ = 1, 20 do
            resp(rport, "PUBLISH", "sb:bad", "caf\233") -- Latin-1, not UTF-8
        end
        resp(rport, "PUBLISH", "sb:bad", "\255z future kind")
        resp(rport, "PUBLISH", "sb:bad", "\255") -- a tag without its kind
        resp(rport, "PUBLISH", "sb:bad", "\255m1234") -- a switchboard tag cut short
        resp(rport, "PUBLISH", "sb:bad", ("x"):rep(100001)) -- past --max-message
        resp(rport, "PUBLISH", "sb:bad", "\255b" .. ("\0"):rep(100001))
        assert.equal(":1", resp(rport, "PUBLISH", "sb:bad", ("y"):rep(100000)))
        local f = assert(ca:recv_frame())
        assert.equal(("y"):rep(100000), f.payload) -- nothing mangled reached it first
        server.wait_for(function()
            return a:metric("switchboard_redis_refused_total") == before + 25
        end, 5, "25 refused")
        a:wait_log("redis: refused a message on sb:bad")
        -- one line per second at most, however many were refused
        local _, lines = a:log():gsub("redis: refused a message on", "")
        assert.is_true(lines <= 3, a:log())
    end)

    it("refuses a plain PUBLISH on a topic that keeps history (it has no position)", function()
        local c = track(rawws.open(a.port, "/room?topic=kept:b"))
        assert.equal("ready", assert(c:recv_frame()).payload)
        server.wait_for(function() return numsub(rport, "kept:b") == 1 end, 10, "a subscriber")
        local before = a:metric("switchboard_redis_refused_total") or 0
        resp(rport, "PUBLISH", "sb:kept:b", "no position")
        resp(rport, "PUBLISH", "sb:kept:b", "\255bno position")
        server.wait_for(function()
            return a:metric("switchboard_redis_refused_total") == before + 2
        end, 5, "2 refused")
        assert.truthy(c:quiet(0.2))
    end)

    it("delivers a switchboard process's publish to the other process unchanged", function()
        local ca, cb = track(open(a, "x")), track(open(b, "x"))
        server.wait_for(function() return numsub(rport, "x") == 2 end, 10, "2 subscribers")
        -- texts that the old 9-byte header would have misread
        for _, text in ipairs { "123456789hello", "ok" } do
            assert(cb:send(require("wsframe").text("pub:" .. text)))
            for _, c in ipairs { ca, cb } do
                local f = assert(c:recv_frame())
                assert.equal(text, f.payload)
            end
        end
        assert.truthy(cb:quiet(0.2), "a message came back twice to its own process")
    end)
end)
