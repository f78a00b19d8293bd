-- Out of file descriptors: every listener (the main one and --metrics) sheds new
-- connections through the same accept path, without spinning, logs it at most
-- once a second, and serves again once descriptors come back.
local server = require "server"
local rawws = require "rawws"
local socket = require "socket"
local proc = require "sbt_proc"

local CLK_TCK = tonumber(io.popen("getconf CLK_TCK"):read("l")) or 100

-- CPU seconds (user + system) the process has used so far.
local function cpu_seconds(pid)
    local stat = server.read_file("/proc/" .. pid .. "/stat")
    local rest = assert(stat:match("%) (.*)$"), "no /proc/" .. pid .. "/stat")
    local f = {}
    for w in rest:gmatch("%S+") do f[#f + 1] = w end
    -- after "(comm)": state is field 3, utime 14 and stime 15 of the whole line
    return (tonumber(f[12]) + tonumber(f[13])) / CLK_TCK
end

local function open_fds(pid)
    local n = 0
    local p = io.popen("ls /proc/" .. pid .. "/fd")
    for _ in p:lines() do n = n + 1 end
    p:close()
    return n
end

local function count(s, plain)
    local n, i = 0, 1
    while true do
        local a, b = s:find(plain, i, true)
        if not a then return n end
        n, i = n + 1, b + 1
    end
end

local function connect(port)
    local c = assert(socket.tcp())
    c:settimeout(5)
    assert(c:connect("127.0.0.1", port))
    return c
end

-- True when the server closed c (EOF or reset) within `timeout` seconds.
local function dropped(c, timeout)
    c:settimeout(timeout)
    local _, err = c:receive(1)
    return err == "closed" or err == "connection reset by peer"
end

describe("out of file descriptors", function()
    local s, held, metrics_port
    before_each(function()
        held = {}
        s = server.start{ app = "spec/apps/core",
                          args = { "--metrics", "127.0.0.1:0", "--handshake-timeout", "120" } }
        metrics_port = tonumber(s:wait_log("metrics on http://127%.0%.0%.1:(%d+)/metrics"))
    end)
    after_each(function()
        for _, c in ipairs(held) do c:close() end
        s:stop()
    end)

    -- Lower the running server's descriptor limit to what it has open now plus
    -- `room`, then fill that room with idle connections it accepts and keeps.
    local function exhaust(room)
        local limit = open_fds(s.pid) + room
        assert(os.execute(("prlimit --pid %d --nofile=%d:%d"):format(s.pid, limit, limit)))
        for _ = 1, room + 4 do held[#held + 1] = connect(s.port) end
        s:wait_log("out of file descriptors", 10)
    end

    it("does not spin on a pending --metrics connection and serves it once descriptors are back",
        function()
            exhaust(8)
            local waiting = {}
            for i = 1, 4 do waiting[i] = connect(metrics_port) end
            -- each is shed through the spare descriptor, not left to wake the loop forever
            for i = 1, 4 do
                assert.is_true(dropped(waiting[i], 5), "metrics connection " .. i .. " was not shed")
                waiting[i]:close()
            end
            local t0, c0 = proc.now(), cpu_seconds(s.pid)
            local extra = connect(metrics_port) -- arrives while still out of descriptors
            -- a bounded window: a spinning loop burns most of it
            proc.sleep(1.0)
            local used = cpu_seconds(s.pid) - c0
            local spent = proc.now() - t0
            assert.is_true(used < 0.3 * spent,
                ("server used %.2f s of CPU in %.2f s while out of descriptors"):format(used, spent))
            extra:close()
            for _, c in ipairs(held) do c:close() end
            held = {}
            -- descriptors are back: both listeners answer again
            local status = server.wait_for(function()
                local ok, st = pcall(rawws.get, metrics_port, "/metrics")
                if ok and st == 200 then return st end
            end, 10, "the metrics listener to answer again")
            assert.are.equal(200, status)
            local c = rawws.open(s.port, "/echo")
            assert.are.equal("back", c:echo("back"))
            c:close()
            assert.is_true(s:running())
        end)

    it("logs the connections it drops at most once a second, with their count", function()
        exhaust(8)
        local t0 = proc.now()
        local shed = 0
        for _ = 1, 40 do
            local c = connect(s.port)
            if dropped(c, 5) then shed = shed + 1 end
            c:close()
        end
        local spent = proc.now() - t0
        assert.are.equal(40, shed)
        local log = s:log()
        local lines = count(log, "out of file descriptors")
        -- the first drop is logged at once; then one line a second at most
        assert.is_true(lines <= 2 + math.floor(spent), ("%d lines in %.1f s:\n%s"):format(lines, spent, log))
        assert.truthy(log:find("out of file descriptors: dropped %d+ new connection%(s%) on 127%.0%.0%.1:"))
    end)
end)

describe("the --metrics listener", function()
    it("counts against --max-connections like every listener", function()
        local s = server.start{ app = "spec/apps/core",
                                args = { "--metrics", "127.0.0.1:0", "--max-connections", "2",
                                         "--handshake-timeout", "60" } }
        local held = {}
        local ok, err = pcall(function()
            local mport = tonumber(s:wait_log("metrics on http://127%.0%.0%.1:(%d+)/metrics"))
            assert.are.equal(200, (rawws.get(mport, "/metrics")))
            held[1] = rawws.open(s.port, "/echo")
            held[2] = rawws.open(s.port, "/echo")
            assert.are.equal(503, (rawws.get(mport, "/metrics")))
            held[1]:close()
            table.remove(held, 1)
            assert.are.equal(200, server.wait_for(function()
                local st = rawws.get(mport, "/metrics")
                return st == 200 and st
            end, 10, "a scrape once a connection is free"))
        end)
        for _, c in ipairs(held) do c:close() end
        s:stop()
        assert(ok, err)
    end)
end)
