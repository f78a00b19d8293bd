-- Topic history with --redis: positions assigned by Redis (one order for every
-- process), recovery from Redis with no gap or duplicate while publications go on,
-- epochs that change when Redis loses the keys, trimming, paced replays, a backend
-- publishing with positions. Two switchboard processes, one real redis-server.
local server = require "server"
local cjson = require "cjson"
local redis_srv = require "redis"
local socket = require "socket"
local h = require "hclient"
local client, send, until_op, until_n = h.client, h.send, h.until_op, h.until_n
local pub, sub, read, positions, range = h.pub, h.sub, h.read, h.positions, h.range

local APP = "spec/apps/history"

local numsub = redis_srv.numsub

local function decode_all(frames)
    local out = {}
    for i, p in ipairs(frames) do out[i] = cjson.decode(p) end
    return out
end

describe("history with --redis", function()
    local rport, redis, a, b
    local clients = {}

    local function track(c)
        clients[#clients + 1] = c
        return c
    end

    local function start(extra)
        local args = { "--redis", "redis://127.0.0.1:" .. rport }
        for _, x in ipairs(extra or {}) do args[#args + 1] = x end
        local s = server.start{ app = APP, args = args }
        s:wait_log("redis: connected")
        return s
    end

    lazy_setup(function()
        rport = redis_srv.free_port()
        redis = redis_srv.start(rport)
        a = start()
        b = start()
    end)

    lazy_teardown(function()
        for _, c in ipairs(clients) do c:close() end
        redis_srv.stop_all(redis, { a, b })
    end)

    it("gives the same increasing positions in both processes under concurrent publishers",
        function()
        local sa, sb = track(client(a)), track(client(b))
        sub(sa, "big:p", 0, "-")
        sub(sb, "big:p", 0, "-")
        server.wait_for(function() return numsub(rport, "big:p") == 2 end, 10, "both subscribed")
        local pa, pb = track(client(a)), track(client(b))
        send(pa, { op = "spam", topic = "big:p", n = 150, every = 0.001, msg = "A" })
        send(pb, { op = "spam", topic = "big:p", n = 150, every = 0.001, msg = "B" })
        until_n(sa, 300)
        until_n(sb, 300)
        assert.are.same(range(1, 300), positions(sa.frames))
        -- same messages, same positions, same order
        assert.are.same(decode_all(sa.frames), decode_all(sb.frames))
        -- each publisher's messages in its order, both there
        local next_of = { A = 1, B = 1 }
        for _, m in ipairs(decode_all(sa.frames)) do
            local who, n = m.msg:match("^([AB])(%d+)$")
            assert.are.equal(next_of[who], tonumber(n))
            next_of[who] = next_of[who] + 1
        end
        assert.are.same({ A = 151, B = 151 }, next_of)
        local r = read(pa, "big:p", 290)
        assert.are.same(range(291, 300), (function()
            local out = {}
            for i, it in ipairs(r.items) do out[i] = it.pos end
            return out
        end)())
        assert.are.equal(decode_all(sa.frames)[1].epoch, r.epoch)
    end)

    it("recovers from Redis without gap or duplicate while publications continue", function()
        local p = track(client(a))
        pub(p, "room:long:r", "early", 20)
        local e = read(p, "room:long:r").epoch
        send(p, { op = "spam", topic = "room:long:r", n = 30, every = 0.003 })
        until_op(p, "spamming")
        socket.sleep(0.02)
        -- recoveries on the other process while the spam goes on, from several points
        for _, since in ipairs({ 5, 12, 20 }) do
            local c = track(client(b))
            send(c, { op = "sub", topic = "room:long:r", since = since, epoch = e })
            local m = until_op(c, "subbed")
            assert.is_true(m.recovered, "since " .. since)
            assert.are.equal(e, m.epoch)
            until_n(c, 50 - since)
            assert.are.same(range(since + 1, 50), positions(c.frames), "since " .. since)
        end
        -- and one on the publishing process itself
        local c = track(client(a))
        assert.is_true(sub(c, "room:long:r", 49, e).recovered)
        pub(p, "room:long:r", "last")
        until_n(c, 2)
        assert.are.same({ 50, 51 }, positions(c.frames))
    end)

    it("formats a publication once per process, however many recoveries replay it", function()
        local p = track(client(a))
        local q = track(client(b))
        pub(p, "room:long:k", "m", 20)
        local e = read(p, "room:long:k").epoch
        assert.are.equal(0, h.formats(q, e))
        local function recover(since)
            local c = track(client(b))
            assert.is_true(sub(c, "room:long:k", since, e).recovered)
            until_n(c, #range(since + 1, 20))
            return c
        end
        recover(0)
        assert.are.equal(20, h.formats(q, e)) -- not seen live here: formatted once
        recover(0)
        recover(7)
        assert.are.equal(20, h.formats(q, e))
        pub(p, "room:long:k", "n", 5)
        server.wait_for(function() return h.formats(q, e) == 25 end, 5, "5 live formats")
        local c = track(client(b))
        assert.is_true(sub(c, "room:long:k", 10, e).recovered)
        until_n(c, 15)
        assert.are.same(range(11, 25), positions(c.frames))
        assert.are.equal(25, h.formats(q, e))
    end)

    it("recovers without a duplicate or a second format when the channel lags behind the read",
        function()
        -- c's process hears the channel 0.3 s late: a publication made just before the
        -- read is in the read's reply and still on its way on the channel
        local lag = redis_srv.lag(rport, 0.3)
        local s = server.start{ app = APP, args = { "--redis", "redis://127.0.0.1:" .. lag.port } }
        local ok, err = pcall(function()
            s:wait_log("redis: connected")
            local p = client(a)
            pub(p, "room:long:lag", "early", 10)
            local e = read(p, "room:long:lag").epoch
            send(p, { op = "spam", topic = "room:long:lag", n = 40, every = 0.02 })
            until_op(p, "spamming")
            local c = client(s)
            local m = sub(c, "room:long:lag", 5, e)
            assert.is_true(m.recovered)
            until_n(c, 45)
            -- 0.3 s more: a duplicate would arrive in it
            local d = client(s)
            server.wait_for(function() return h.formats(d, e) >= 45 end, 10, "45 formats")
            socket.sleep(0.4)
            c.timeout = 0.05
            while true do
                local f = c:recv_frame()
                if not f then break end
                c.frames[#c.frames + 1] = f.payload
            end
            assert.are.same(range(6, 50), positions(c.frames))
            assert.are.equal(45, h.formats(d, e)) -- once per publication in this process
            p:close() c:close() d:close()
        end)
        s:stop()
        redis_srv.stop(lag)
        assert(ok, err)
    end)

    it("delivers a publication made as soon as Redis is back to the subscribers", function()
        -- the process's subscriber connection reaches Redis 0.3 s late: its channels are
        -- subscribed again only then, and Redis is not "back" for publications before it
        local port3 = redis_srv.free_port()
        local r3 = redis_srv.start(port3)
        local lag = redis_srv.lag(port3, 0.3, true)
        local s = server.start{ app = APP, args = { "--redis", "redis://127.0.0.1:" .. lag.port } }
        local ok, err = pcall(function()
            s:wait_log("redis: connected")
            local c = client(s)
            send(c, { op = "live", topic = "room:long:rc" })
            until_op(c, "subbed")
            server.wait_for(function() return numsub(port3, "room:long:rc") == 1 end, 10, "subscribed")
            local p = client(s)
            pub(p, "room:long:rc", "a", 1)
            until_n(c, 1)
            redis_srv.stop(r3)
            s:wait_log("redis: connection to .* lost")
            r3 = redis_srv.start(port3)
            s:wait_log("redis: reconnected")
            assert.are.equal(0, pub(p, "room:long:rc", "b", 1).n)
            until_n(c, 2)
            local got = cjson.decode(c.frames[2])
            assert.are.same({ 1, "b1" }, { got.pos, got.msg })
            p:close() c:close()
        end)
        s:stop()
        redis_srv.stop(lag)
        redis_srv.stop(r3)
        assert(ok, err)
    end)

    it("says recovered=false past the history, for bad since/epoch, with the kept history", function()
        local p = track(client(a))
        pub(p, "room:f", "m", 12) -- size 5: 8..12 kept
        local e = read(p, "room:f").epoch
        local other = read(p, "room:other").epoch
        assert.are_not.equal(e, other)
        for _, case in ipairs({
            { "past the history", 3, e }, { "another epoch", 10, "nope" },
            { "another topic's epoch", 10, other }, { "from the future", 13, e },
            { "malformed since", "x", e }, { "no epoch", 10, nil },
            { "a huge since", 1e15, e }, { "a long epoch", 10, string.rep("e", 200) },
        }) do
            local c = track(client(b))
            local m = sub(c, "room:f", case[2], case[3])
            assert.is_false(m.recovered, case[1])
            assert.are.equal(e, m.epoch, case[1])
            until_n(c, 5)
            assert.are.same(range(8, 12), positions(c.frames), case[1])
        end
        local c = track(client(b))
        assert.is_true(sub(c, "room:f", 7, e).recovered)
        assert.is_nil(next(read(p, "room:f", 1e15).items))
    end)

    it("starts a new epoch when Redis loses the keys (FLUSHALL)", function()
        local p = track(client(a))
        pub(p, "room:x", "m", 3)
        local e = read(p, "room:x").epoch
        assert.are.equal("+OK", redis_srv.cmd(rport, "FLUSHALL"))
        pub(p, "room:x", "n", 2)
        local c = track(client(b))
        local m = sub(c, "room:x", 3, e)
        assert.is_false(m.recovered)
        assert.are_not.equal(e, m.epoch)
        until_n(c, 2)
        local got = decode_all(c.frames)
        assert.are.same({ 1, 2 }, { got[1].pos, got[2].pos })
        assert.are.same({ "n1", "n2" }, { got[1].msg, got[2].msg })
    end)

    it("trims to the size, and the keys expire with the ttl", function()
        local p = track(client(a))
        pub(p, "room:s", "m", 8)
        local r = read(p, "room:s")
        assert.are.equal(5, #r.items)
        assert.are.same({ 4, "m4", 8, "m8" }, { r.items[1].pos, r.items[1].msg, r.items[5].pos,
            r.items[5].msg })
        assert.are.equal(7, read(p, "room:s", nil, 2).items[1].pos)
        assert.are.equal(5, read(p, "room:s", 4, 1).items[1].pos)
        local pttl = tonumber(redis_srv.cmd(rport, "PTTL sb:history:room:s"):match(":(%d+)"))
        assert.is_true(pttl > 3590000 and pttl <= 3600000, tostring(pttl))
        pub(p, "short:t", "x", 3) -- ttl 1 s
        local e = read(p, "short:t").epoch
        assert.are.equal(3, #read(p, "short:t").items)
        server.wait_for(function()
            return redis_srv.cmd(rport, "EXISTS sb:history:short:t") == ":0"
                and redis_srv.cmd(rport, "EXISTS sb:history-meta:short:t") == ":0"
        end, 5, "the ttl to expire short:t's keys")
        local r2 = read(p, "short:t")
        assert.is_nil(next(r2.items))
        assert.are_not.equal(e, r2.epoch)
    end)

    it("paces a replay from Redis bigger than --out-high by drain", function()
        local s = start{ "--out-high", "16k", "--out-low", "4k", "--out-max", "64k" }
        local ok, err = pcall(function()
            local p = client(s)
            local pad = string.rep("p", 1000)
            for _ = 1, 3 do pub(p, "big:d", pad, 400) end -- 1200 publications
            local e = read(p, "big:d", nil, 1).epoch
            local c = client(s, { rcvbuf = 4096 })
            send(c, { op = "sub", topic = "big:d", since = 0, epoch = e })
            send(p, { op = "spam", topic = "big:d", n = 100, every = 0.002 })
            socket.sleep(0.3)
            local subbed
            while #c.frames < 1300 do
                local f = assert(c:recv_frame())
                local m = cjson.decode(f.payload)
                if m.op == "subbed" then subbed = m else c.frames[#c.frames + 1] = f.payload end
            end
            assert.are.same(range(1, 1300), positions(c.frames))
            if not subbed then subbed = until_op(c, "subbed") end
            assert.is_true(subbed.recovered)
            p:close() c:close()
        end)
        s:stop()
        assert(ok, err)
    end)

    it("gives a backend's FCALL sb_publish a position and delivers it formatted", function()
        local c = track(client(b))
        local m = sub(c, "room:long:be", 0, "-")
        server.wait_for(function() return numsub(rport, "room:long:be") == 1 end, 10, "subscribed")
        local reply = redis_srv.cmd(rport, "FCALL sb_publish 1 room:long:be hello")
        assert.truthy(reply:match(":1"), reply)
        until_n(c, 1)
        local got = cjson.decode(c.frames[1])
        assert.are.same({ 1, "hello", m.epoch }, { got.pos, got.msg, got.epoch })
    end)

    it("refuses a malformed history payload on the channel, and goes on", function()
        local c = track(client(b))
        sub(c, "room:long:z", 0, "-")
        server.wait_for(function() return numsub(rport, "room:long:z") == 1 end, 10, "subscribed")
        local bad = { "\255p", "\255pX1 e - m", "\255p0 e - m", "\255p01 - m",
            "\255p01 " .. ("e"):rep(100) .. " - m", "\255p01 e abc m",
            "\255p0" .. ("9"):rep(30) .. " e - m", "\255p01 e - \255\254", "\255p01 e -" }
        local r = assert(redis_srv.client(rport))
        for _, payload in ipairs(bad) do
            local chan = "sb:room:long:z"
            r:send(("*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n")
                :format(#chan, chan, #payload, payload))
            assert.are.equal(":1", r:receive("*l"))
        end
        r:close()
        assert.truthy(b:wait_log("redis: refused a message on sb:room:long:z: a history "
            .. "publication"))
        local reply = redis_srv.cmd(rport, "FCALL sb_publish 1 room:long:z fine")
        assert.truthy(reply:match(":1"), reply)
        until_n(c, 1)
        local got = cjson.decode(c.frames[1])
        assert.are.same({ 1, "fine" }, { got.pos, got.msg })
    end)

    it("refuses a history payload longer than --max-message, or with an epoch a stream cannot "
        .. "keep, and goes on", function()
        local s = start { "--max-message", "64" }
        local ok, err = pcall(function()
            local c = client(s)
            sub(c, "room:long:m", 0, "-")
            server.wait_for(function() return numsub(rport, "room:long:m") == 1 end, 10,
                "subscribed")
            local r = assert(redis_srv.client(rport))
            -- one refusal is logged a second: the two are a second apart
            for _, case in ipairs { { "\255p01 e - " .. ("x"):rep(65), "longer than" },
                { "\255p01 " .. ("e"):rep(32) .. " - m", "a history publication" } } do
                local chan, payload = "sb:room:long:m", case[1]
                r:send(("*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n")
                    :format(#chan, chan, #payload, payload))
                assert.are.equal(":1", r:receive("*l"))
                assert.truthy(s:wait_log("redis: refused a message on sb:room:long:m: " .. case[2]))
                socket.sleep(1.1)
            end
            r:close()
            local reply = redis_srv.cmd(rport, "FCALL sb_publish 1 room:long:m fine")
            assert.truthy(reply:match(":1"), reply)
            until_n(c, 1)
            local got = cjson.decode(c.frames[1])
            assert.are.same({ 1, "fine" }, { got.pos, got.msg })
            c:close()
        end)
        s:stop()
        assert(ok, err)
    end)

    it("keeps ws:publish's everyone-but-the-sender across processes", function()
        local sa, sb2 = track(client(a)), track(client(b))
        sub(sa, "room:w", 0, "-")
        sub(sb2, "room:w", 0, "-")
        server.wait_for(function() return numsub(rport, "room:w") == 2 end, 10, "both subscribed")
        send(sa, { op = "wspub", topic = "room:w", msg = "hi" })
        until_op(sa, "pubbed")
        until_n(sb2, 1)
        assert.are.same({ 1 }, positions(sb2.frames))
        pub(sb2, "room:w", "x")
        until_n(sa, 1)
        assert.are.same({ 2 }, positions(sa.frames)) -- not "hi": it was the sender
    end)

    it("recovers nothing while Redis is away, says so, and starts a new epoch after", function()
        local port2 = redis_srv.free_port()
        local r2 = redis_srv.start(port2)
        local s = server.start{ app = APP, args = { "--redis", "redis://127.0.0.1:" .. port2 } }
        local ok, err = pcall(function()
            s:wait_log("redis: connected")
            local p = client(s)
            pub(p, "room:long:d", "m", 5)
            local e = read(p, "room:long:d").epoch
            redis_srv.stop(r2)
            s:wait_log("redis: connection to .* lost")
            local c = client(s)
            local m = sub(c, "room:long:d", 2, e)
            assert.is_false(m.recovered)
            assert.is_nil(m.epoch)
            assert.truthy(read(p, "room:long:d").err:match("^redis: "))
            -- a publication that cannot get a position is not made, and the script is told
            local r = pub(p, "room:long:d", "lost")
            assert.is_nil(r.n)
            assert.are.equal("redis: not connected", r.err)
            send(p, { op = "wspub", topic = "room:long:d", msg = "lost" })
            assert.are.equal("redis: not connected", until_op(p, "pubbed").err)
            -- a topic without history is delivered in the process as before
            local l = client(s)
            send(l, { op = "live", topic = "nohist" })
            until_op(l, "subbed")
            assert.are.equal(1, pub(p, "nohist", "here").n)
            until_n(l, 1)
            assert.are.equal("here", l.frames[1])
            -- the connection is fine, and when Redis is back (empty) a new epoch starts
            r2 = redis_srv.start(port2)
            s:wait_log("redis: reconnected")
            assert.are.equal(0, pub(p, "room:long:d", "n", 1).n)
            until_n(c, 1)
            local got = cjson.decode(c.frames[1])
            assert.are.same({ 1, "n1" }, { got.pos, got.msg })
            assert.are_not.equal(e, got.epoch)
            p:close() c:close() l:close()
        end)
        s:stop()
        redis_srv.stop(r2)
        assert(ok, err)
    end)
end)
