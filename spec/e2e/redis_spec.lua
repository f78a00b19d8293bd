-- --redis: publish reaches subscribers in every process through a real
-- redis-server on a free loopback port.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local proc = require "sbt_proc"
local redis_srv = require "redis"

local APP = server.root .. "/spec/apps/scale"

local numsub = redis_srv.numsub

local function wait_numsub(port, topic, n)
    server.wait_for(function() return numsub(port, topic) == n end, 10,
        ("%d process(es) subscribed to sb:%s"):format(n, topic))
end

local function open(s, topic)
    local c = rawws.open(s.port, "/node" .. (topic and ("?topic=" .. topic) or ""))
    local f = assert(c:recv_frame())
    assert(f.payload:match("^pid:%d+$"))
    return c
end

-- Read exactly n data frames.
local function recv_n(c, n)
    local got = {}
    for i = 1, n do
        local f, err = c:recv_frame()
        assert(f, ("frame %d of %d: %s"):format(i, n, tostring(err)))
        got[i] = f
    end
    return got
end

describe("--redis", function()
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
        a = server.start { app = APP, args = { "--redis", url } }
        b = server.start { app = APP, args = { "--redis", url } }
        a:wait_log("redis: connected")
        b:wait_log("redis: connected")
    end)

    lazy_teardown(function()
        for _, c in ipairs(clients) do c:close() end
        redis_srv.stop_all(redis, { a, b })
    end)

    it("delivers every publish exactly once on both processes, in order per publisher", function()
        local sa, sb = track(open(a, "t")), track(open(b, "t"))
        local pa, pb = track(open(a)), track(open(b))
        wait_numsub(rport, "t", 2)
        local N = 50
        for i = 1, N do
            assert(pa:send(wsframe.text("pub:t:A" .. i)))
            assert(pb:send(wsframe.text("pub:t:B" .. i)))
        end
        for name, c in pairs { a = sa, b = sb } do
            local next_a, next_b = 1, 1
            for _, f in ipairs(recv_n(c, 2 * N)) do
                assert.equal(1, f.opcode)
                local who, i = f.payload:match("^([AB])(%d+)$")
                i = tonumber(i)
                if who == "A" then
                    assert.equal(next_a, i, name .. " got A" .. i .. " out of order")
                    next_a = next_a + 1
                else
                    assert.equal(next_b, i, name .. " got B" .. i .. " out of order")
                    next_b = next_b + 1
                end
            end
            assert.equal(N + 1, next_a)
            assert.equal(N + 1, next_b)
        end
        assert.truthy(sa:quiet(0.3), "a subscriber on a got a message twice")
        assert.truthy(sb:quiet(0.3), "a subscriber on b got a message twice")
    end)

    it("carries binary messages intact", function()
        local sa, sb = track(open(a, "bin")), track(open(b, "bin"))
        local pa = track(open(a, "bin"))
        wait_numsub(rport, "bin", 2)
        local bytes = {}
        for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
        local payload = table.concat(bytes) .. "\0\r\n\255" .. string.rep("\0\1\2", 20000)
        assert(pa:send(wsframe.binary(payload)))
        for _, c in ipairs { sa, sb, pa } do
            local f = assert(c:recv_frame())
            assert.equal(2, f.opcode)
            assert.equal(#payload, #f.payload)
            assert.equal(payload, f.payload)
        end
    end)

    it("subscribes a Redis channel only while the process has a subscriber to the topic", function()
        assert.equal(0, numsub(rport, "u"))
        local c1 = open(a, "u")
        wait_numsub(rport, "u", 1)
        local c2 = open(b, "u")
        wait_numsub(rport, "u", 2)
        c1:close()
        wait_numsub(rport, "u", 1)
        c2:close()
        wait_numsub(rport, "u", 0)
        -- and again: a topic that comes back is subscribed again
        local c3 = track(open(a, "u"))
        wait_numsub(rport, "u", 1)
        local p = track(open(b))
        assert(p:send(wsframe.text("pub:u:back")))
        assert.equal("back", assert(c3:recv_frame()).payload)
    end)

    it("keeps local delivery while Redis is down and crosses again once it is back", function()
        local sa, sb = track(open(a, "r")), track(open(b, "r"))
        local pa = track(open(a))
        wait_numsub(rport, "r", 2)
        redis_srv.stop(redis)
        redis = nil
        a:wait_log("redis: connection to 127%.0%.0%.1:%d+ lost")
        b:wait_log("redis: connection to 127%.0%.0%.1:%d+ lost")
        assert(pa:send(wsframe.text("pub:r:local")))
        assert.equal("local", assert(sa:recv_frame()).payload)
        redis = redis_srv.start(rport)
        a:wait_log("redis: reconnected")
        b:wait_log("redis: reconnected")
        wait_numsub(rport, "r", 2)
        assert(pa:send(wsframe.text("pub:r:crossed")))
        assert.equal("crossed", assert(sa:recv_frame()).payload)
        -- the one published while Redis was away did not cross; this one did
        assert.equal("crossed", assert(sb:recv_frame()).payload)
        assert.truthy(a:running() and b:running())
    end)

    it("treats a Redis that stops answering as lost, and crosses again once it answers", function()
        local sa, sb = track(open(a, "h")), track(open(b, "h"))
        local pa = track(open(a))
        wait_numsub(rport, "h", 2)
        proc.kill(redis.pid, proc.SIGSTOP) -- alive, connected, silent
        local ok, err = pcall(function()
            assert(pa:send(wsframe.text("pub:h:stuck"))) -- a PUBLISH that gets no answer
            assert.equal("stuck", assert(sa:recv_frame()).payload) -- local delivery goes on
            a:wait_log("redis: connection to 127%.0%.0%.1:%d+ lost %(no answer for %d+ s%)", 15)
        end)
        proc.kill(redis.pid, proc.SIGCONT)
        assert(ok, err)
        a:wait_log("redis: reconnected", 15)
        wait_numsub(rport, "h", 2)
        assert(pa:send(wsframe.text("pub:h:again")))
        assert.equal("again", assert(sa:recv_frame()).payload)
        local f = assert(sb:recv_frame())
        -- what b got while a was cut off may include "stuck" (Redis delivered it
        -- late); "again" must come, in order
        if f.payload == "stuck" then f = assert(sb:recv_frame()) end
        assert.equal("again", f.payload)
    end)
end)

describe("--redis at start-up", function()
    it("exits non-zero with a clear error when Redis cannot be reached", function()
        local port = redis_srv.free_port()
        local s = server.start { app = APP, args = { "--redis", "redis://127.0.0.1:" .. port },
                                 expect_exit = true }
        local ok, err = pcall(function()
            local how, code = s:wait_exit(10)
            assert.equal("exited", how)
            assert.equal(1, code)
            assert.matches("cannot reach Redis at 127%.0%.0%.1:" .. port, s:log())
            assert.matches("--redis%-optional", s:log())
        end)
        s:stop()
        assert(ok, err)
    end)

    it("starts local-only with a warning under --redis-optional", function()
        local port = redis_srv.free_port()
        local s = server.start { app = APP,
                                 args = { "--redis", "redis://127.0.0.1:" .. port, "--redis-optional" } }
        local ok, err = pcall(function()
            assert.matches("warn .*cannot reach Redis.*publishing locally only", s:log())
            local sub = open(s, "x")
            local pub = open(s)
            assert(pub:send(wsframe.text("pub:x:hi")))
            assert.equal("hi", assert(sub:recv_frame()).payload)
            sub:close()
            pub:close()
        end)
        s:stop()
        assert(ok, err)
    end)

    it("refuses a URL that is not redis://host:port[/db]", function()
        local s = server.start { app = APP, args = { "--redis", "http://x" }, expect_exit = true }
        local how, code = s:wait_exit(10)
        s:stop()
        assert.equal("exited", how)
        assert.equal(2, code)
    end)
end)

describe("the chat with --workers 2 --redis", function()
    local cjson = require "cjson"
    local rport, redis, a, b

    lazy_setup(function()
        rport = redis_srv.free_port()
        redis = redis_srv.start(rport)
        local url = "redis://127.0.0.1:" .. rport
        a = server.start { args = { "--workers", "2", "--redis", url } }
        b = server.start { args = { "--redis", url } }
        server.wait_for(function()
            local n = 0
            for _ in a:log():gmatch("redis: connected") do n = n + 1 end
            return n == 2
        end, 10, "both workers connected to Redis")
        b:wait_log("redis: connected")
    end)

    lazy_teardown(function()
        redis_srv.stop_all(redis, { a, b })
    end)

    local function send(c, t) assert(c:send(wsframe.text(cjson.encode(t)))) end
    -- Next message of the given type (others, such as room lists, are skipped).
    local function expect(c, typ)
        for _ = 1, 50 do
            local f = assert(c:recv_frame())
            local m = cjson.decode(f.payload)
            if m.type == typ then return m end
        end
        error("no " .. typ .. " message")
    end
    local function user(s, nick, room)
        local c = rawws.open(s.port, "/chat")
        expect(c, "welcome")
        send(c, { type = "nick", nick = nick })
        expect(c, "nick")
        send(c, { type = "join", room = room })
        return c, expect(c, "joined")
    end

    it("lets users on different processes talk in one room and see each other join and leave", function()
        local ann = user(b, "ann", "crossroom")
        wait_numsub(rport, "room:crossroom", 1)
        local bob, joined = user(a, "bob", "crossroom")
        -- the room's presence spans the processes: bob's list has ann at once
        assert.same({ "ann", "bob" }, joined.members)
        local j = expect(ann, "join")
        assert.equal("bob", j.nick)
        send(bob, { type = "say", room = "crossroom", text = "hi ann" })
        local m = expect(ann, "message")
        assert.same({ "bob", "hi ann" }, { m.nick, m.text })
        assert.equal("hi ann", expect(bob, "message").text)
        send(ann, { type = "say", room = "crossroom", text = "hi bob" })
        assert.equal("hi bob", expect(bob, "message").text)
        bob:close()
        assert.equal("bob", expect(ann, "leave").nick)
        ann:close()
    end)
end)
