-- Graceful shutdown on the real server: SIGTERM/SIGINT close every WebSocket
-- with 1001 after what was queued for it, run every close handler once, answer
-- late upgrades with 503, drop a silent peer at --drain-timeout, exit 0; a
-- second signal exits at once. The app (spec/apps/shutdown) notes each close
-- handler call in the file named by $SB_CLOSE_LOG.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local proc = require "sbt_proc"
local socket = require "socket"

local APP = "spec/apps/shutdown"

local function closes(path)
    local out = {}
    for line in server.read_file(path):gmatch("[^\n]+") do
        local route, id, code = line:match("^(%S+) (%d+) (%d+)$")
        out[#out + 1] = { route = route, id = tonumber(id), code = tonumber(code) }
    end
    return out
end

-- Answer the server's close (masked, as a client must) and expect TCP to end.
local function answer_close(c, code)
    assert(c:send(wsframe.close(code)))
    assert.is_true(c:eof(5), "server should close TCP after the closing handshake")
    c:close()
end

describe("graceful shutdown", function()
    local s, closelog
    before_each(function() closelog = server.tmpname(".closes") end)
    after_each(function()
        if s then s:stop() end
        s = nil
        os.remove(closelog)
    end)

    it("SIGTERM: every client gets its queued messages, then 1001; every close handler runs once; exit 0",
    function()
        s = server.start{ app = APP, env = { SB_CLOSE_LOG = closelog },
                          args = { "--drain-timeout", "10", "--out-high", "64m", "--out-max", "128m" } }
        local clients = {}
        for i = 1, 3 do
            local c = rawws.open(s.port, "/a")
            assert.are.equal("a" .. i, c:echo("a" .. i))
            clients[#clients + 1] = c
        end
        local b1, b2 = rawws.open(s.port, "/b"), rawws.open(s.port, "/b")
        assert(b1:send(wsframe.text("hi from b1")))
        assert.are.equal("hi from b1", assert(b2:recv_frame()).payload)
        clients[#clients + 1], clients[#clients + 2] = b1, b2

        -- 200 x 32 KiB that the client does not read yet: most of it is still
        -- queued in the server when the signal comes.
        local N, SIZE = 200, 32768
        local burst = rawws.open(s.port, "/burst")
        assert(burst:send(wsframe.text(("burst %d %d"):format(N, SIZE))))
        assert(burst:send(wsframe.text("report")))
        local queued = tonumber(s:wait_log("burst: (%d+) bytes queued"))
        assert.is_true(queued > 0, "the spec needs output still queued at the signal")

        local t0 = proc.now()
        s:signal(proc.SIGTERM)
        for _, c in ipairs(clients) do
            local code, reason, seen = c:recv_close()
            assert.are.equal(1001, code)
            assert.are.equal("server shutting down", reason)
            assert.are.equal(0, #seen)
            answer_close(c, 1001)
        end
        local code, reason, seen = burst:recv_close()
        assert.are.equal(1001, code, reason)
        assert.are.equal(N, #seen, "every queued message arrives before the close")
        for i, f in ipairs(seen) do
            assert.are.equal(1, f.opcode)
            assert.are.equal(SIZE, #f.payload)
            assert.are.equal(("%06d:"):format(i), f.payload:sub(1, 7))
        end
        answer_close(burst, 1001)

        local how, status = s:wait_exit(10)
        assert.are.same({ "exited", 0 }, { how, status })
        assert.is_true(proc.now() - t0 < 5, "shutdown should not wait for the drain timeout")

        local got = closes(closelog)
        assert.are.equal(6, #got, server.read_file(closelog))
        local ids, per_route = {}, {}
        for _, e in ipairs(got) do
            assert.is_nil(ids[e.id], "close handler ran twice for ws " .. e.id)
            ids[e.id] = true
            assert.are.equal(1001, e.code)
            per_route[e.route] = (per_route[e.route] or 0) + 1
        end
        assert.are.same({ ["/a"] = 3, ["/b"] = 2, ["/burst"] = 1 }, per_route)
        assert.truthy(s:log():find("6 WebSocket connection(s) closed cleanly, 0 dropped", 1, true), s:log())
    end)

    it("SIGINT: answers a late upgrade with 503, refuses new connections, drops a silent peer at --drain-timeout",
    function()
        s = server.start{ app = APP, env = { SB_CLOSE_LOG = closelog }, args = { "--drain-timeout", "1.5" } }
        local silent = rawws.open(s.port, "/a")
        local http = rawws.connect(s.port)
        assert(http:send("GET /a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
        local status, _, body = http:http()
        assert.are.equal(200, status)
        assert.are.equal("a", body)

        local t0 = proc.now()
        s:signal(proc.SIGINT)
        assert.are.equal(1001, (silent:recv_close())) -- and never answered

        assert(http:send(rawws.request("/a")))
        status, _, body = http:http()
        assert.are.equal(503, status)
        assert.are.equal("server is shutting down\n", body)
        assert.is_true(http:eof(5))
        http:close()

        local late = socket.tcp()
        late:settimeout(2)
        local ok, err = late:connect("127.0.0.1", s.port)
        late:close()
        assert.is_nil(ok, "the listener should be closed")
        assert.are.equal("connection refused", err)

        local how, code = s:wait_exit(10)
        local took = proc.now() - t0
        assert.are.same({ "exited", 0 }, { how, code })
        assert.is_true(took >= 1.4 and took < 4, ("exited after %.2f s, drain timeout 1.5 s"):format(took))
        assert.is_true(silent:eof(1))
        silent:close()
        assert.are.equal(1, #closes(closelog))
        assert.truthy(s:log():find("0 WebSocket connection(s) closed cleanly, 1 dropped (drain timeout passed)",
            1, true), s:log())
    end)

    it("a second signal exits at once", function()
        s = server.start{ app = APP, env = { SB_CLOSE_LOG = closelog }, args = { "--drain-timeout", "60" } }
        local silent = rawws.open(s.port, "/b")
        s:signal(proc.SIGTERM)
        assert.are.equal(1001, (silent:recv_close()))
        local t0 = proc.now()
        s:signal(proc.SIGTERM)
        local how, code = s:wait_exit(5)
        assert.are.same({ "exited", 1 }, { how, code })
        assert.is_true(proc.now() - t0 < 2)
        assert.truthy(s:log():find("second signal: exiting now", 1, true))
        assert.are.equal(1, #closes(closelog), "the close handler still runs once")
        silent:close()
    end)
end)
