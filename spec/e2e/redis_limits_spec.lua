-- --redis against a real redis-server: the URL's db is SELECTed on both links, and
-- what Redis has not answered is bounded by --redis-out-max (a frozen Redis does
-- not make the server buffer every publish).
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local proc = require "sbt_proc"
local redis_srv = require "redis"


-- Everything readable on c within `timeout` seconds, appended to buf.
local function drain(c, buf, timeout)
    c:settimeout(timeout)
    local data, _, partial = c:receive(65536)
    return buf .. (data or partial or "")
end

local function vm_rss_kib(pid)
    return tonumber(server.read_file("/proc/" .. pid .. "/status"):match("VmRSS:%s*(%d+) kB"))
end

-- A route that floods publishes on request: "flood:N" publishes N messages of
-- 100 KiB to a topic nobody here subscribes; "pub:T:M" publishes M to T.
local FLOOD = [[
local sb = require "switchboard"
local big = string.rep("x", 100 * 1024)
local flood = {}
function flood.open(ws)
    if ws.query.topic then ws:subscribe(ws.query.topic) end
    ws:send("open")
end
function flood.message(ws, msg)
    local n = msg:match("^flood:(%d+)$")
    if n then
        for _ = 1, tonumber(n) do sb.publish("nobody", big) end
        ws:send("flooded")
        return
    end
    local topic, body = msg:match("^pub:([^:]*):(.*)$")
    if topic then sb.publish(topic, body) end
end
return flood
]]

local function open(s, topic)
    local c = rawws.open(s.port, "/flood" .. (topic and ("?topic=" .. topic) or ""))
    assert.are.equal("open", assert(c:recv_frame()).payload)
    return c
end

describe("--redis limits", function()
    local redis, s, app
    local clients
    before_each(function()
        clients = {}
        app = server.tmpname(".app")
        assert(os.execute("mkdir -p " .. app))
        server.write_file(app .. "/flood.lua", FLOOD)
        redis = redis_srv.start()
    end)
    after_each(function()
        for _, c in ipairs(clients) do c:close() end
        if s then s:stop() end
        s = nil
        redis_srv.stop(redis)
        os.remove(app .. "/flood.lua")
        os.remove(app)
    end)

    it("SELECTs the URL's db on the publishing and the subscribing connection", function()
        local mon = assert(redis_srv.client(redis.port))
        clients[#clients + 1] = mon
        mon:send("MONITOR\r\n")
        assert.are.equal("+OK", mon:receive("*l"))
        s = server.start{ app = app, args = { "--redis", ("redis://127.0.0.1:%d/3"):format(redis.port) } }
        s:wait_log("redis: connected")
        local sub = open(s, "here")
        clients[#clients + 1] = sub
        local pub = open(s)
        clients[#clients + 1] = pub
        local seen = ""
        server.wait_for(function()
            seen = drain(mon, seen, 0.2)
            return seen:find('"SUBSCRIBE" "sb:here"', 1, true)
        end, 10, "the subscription to reach Redis")
        assert(pub:send(wsframe.text("pub:here:hi")))
        assert.are.equal("hi", assert(sub:recv_frame()).payload)
        server.wait_for(function()
            seen = drain(mon, seen, 0.2)
            return seen:find('"PUBLISH" "sb:here"', 1, true)
        end, 10, "the publish to reach Redis")
        -- MONITOR prefixes each command with [db client]
        assert.truthy(seen:find('%[3 [%d%.:]+%] "SUBSCRIBE" "sb:here"'), seen)
        assert.truthy(seen:find('%[3 [%d%.:]+%] "PUBLISH" "sb:here"'), seen)
        local selects = 0
        for _ in seen:gmatch('"SELECT" "3"') do selects = selects + 1 end
        assert.is_true(selects >= 2, seen)
    end)

    it("refuses to start when Redis refuses the db", function()
        s = server.start{ app = app, expect_exit = true,
                          args = { "--redis", ("redis://127.0.0.1:%d/99"):format(redis.port) } }
        local how, code = s:wait_exit(10)
        assert.are.same({ "exited", 1 }, { how, code })
        assert.truthy(s:log():find("refuses SELECT 99", 1, true), s:log())
    end)

    it("keeps publishes local past --redis-out-max while Redis is frozen, and crosses again after",
        function()
            -- a small ASan quarantine, so freed memory does not count as held
            local asan = "detect_leaks=1:abort_on_error=1:quarantine_size_mb=16"
            s = server.start{ app = app, env = { ASAN_OPTIONS = asan },
                              args = { "--redis", ("redis://127.0.0.1:%d"):format(redis.port),
                                       "--redis-out-max", "4m", "--metrics-path", "/metrics" } }
            s:wait_log("redis: connected")
            local local_sub = open(s, "lobby")
            clients[#clients + 1] = local_sub
            local pub = open(s)
            clients[#clients + 1] = pub
            local rss0 = vm_rss_kib(s.pid)
            assert(proc.kill(redis.pid, proc.SIGSTOP))
            -- 3,000 x 100 KiB = 293 MiB offered while Redis takes nothing
            assert(pub:send(wsframe.text("flood:3000")))
            assert.are.equal("flooded", assert(pub:recv_frame()).payload)
            local grown = vm_rss_kib(s.pid) - rss0
            assert.is_true(grown < 64 * 1024, ("resident memory grew by %d KiB"):format(grown))
            -- local delivery goes on while Redis is frozen
            assert(pub:send(wsframe.text("pub:lobby:still here")))
            assert.are.equal("still here", assert(local_sub:recv_frame()).payload)
            local _, _, metrics = rawws.get(s.port, "/metrics")
            local dropped = tonumber(metrics:match("\nswitchboard_redis_dropped_total (%d+)"))
            assert.is_true(dropped and dropped >= 2900, metrics)
            s:wait_log("publish%(es%) kept local", 5)

            assert(proc.kill(redis.pid, proc.SIGCONT))
            local rsub = assert(redis_srv.client(redis.port))
            clients[#clients + 1] = rsub
            rsub:send("SUBSCRIBE sb:after\r\n")
            local got = ""
            server.wait_for(function()
                got = drain(rsub, got, 0.5)
                return got:find("subscribe", 1, true)
            end, 10, "the Redis subscription")
            -- once Redis has caught up (or the link was renewed), publishes cross again
            server.wait_for(function()
                assert(pub:send(wsframe.text("pub:after:crossed")))
                got = drain(rsub, got, 0.5)
                return got:find("crossed", 1, true)
            end, 20, "a publish to reach Redis after SIGCONT")
            local lines = 0
            for _ in s:log():gmatch("kept local") do lines = lines + 1 end
            assert.is_true(lines <= 10, s:log())
        end)
end)
