-- --workers N: a supervisor, N worker processes sharing the listeners, restarts,
-- signals forwarded.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local proc = require "sbt_proc"

local APP = server.root .. "/spec/apps/scale"

local function ready_pids(s, n)
    local pids = {}
    server.wait_for(function()
        pids = {}
        for pid in s:log():gmatch("worker w%d+ ready %(pid (%d+)%)") do pids[#pids + 1] = tonumber(pid) end
        return #pids >= n
    end, 15, n .. " workers ready")
    return pids
end

-- Open WebSockets until `want` distinct worker pids answered (at most `max`).
-- Returns pid -> list of clients.
local function spread(s, want, max)
    local by_pid, distinct = {}, 0
    for _ = 1, max do
        local c = rawws.open(s.port, "/node")
        local f = assert(c:recv_frame())
        local pid = tonumber(f.payload:match("^pid:(%d+)$"))
        assert(pid, "unexpected first message " .. f.payload)
        if not by_pid[pid] then
            by_pid[pid] = {}
            distinct = distinct + 1
        end
        table.insert(by_pid[pid], c)
        if distinct >= want then break end
    end
    return by_pid, distinct
end

local function close_all(by_pid)
    for _, cs in pairs(by_pid or {}) do
        for _, c in ipairs(cs) do c:close() end
    end
end

local function parent_of(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return nil end
    local line = f:read("l")
    f:close()
    return tonumber(line:match("^%d+ %b() %S+ (%d+)"))
end

describe("--workers 2", function()
    local s, clients

    before_each(function()
        s = server.start { app = APP, args = { "--workers", "2" } }
    end)

    after_each(function()
        close_all(clients)
        clients = nil
        if s then s:stop() end
        s = nil
    end)

    it("announces each address once and starts two workers that are the supervisor's children", function()
        local pids = ready_pids(s, 2)
        assert.are_not.equal(pids[1], pids[2])
        for _, pid in ipairs(pids) do assert.equal(s.pid, parent_of(pid)) end
        local n = 0
        for _ in s:log():gmatch("listening on 127%.0%.0%.1:%d+") do n = n + 1 end
        assert.equal(1, n)
    end)

    it("lands connections on both processes, WebSocket and plain HTTP", function()
        local pids = ready_pids(s, 2)
        local distinct
        clients, distinct = spread(s, 2, 60)
        assert.equal(2, distinct)
        for _, pid in ipairs(pids) do assert.truthy(clients[pid], "no connection on worker " .. pid) end
        local seen = {}
        for _ = 1, 60 do
            local c = rawws.connect(s.port)
            c:send("GET /node HTTP/1.1\r\nHost: x\r\n\r\n")
            local status, _, body = c:http()
            c:close()
            assert.equal(200, status)
            seen[tonumber(body)] = true
            if seen[pids[1]] and seen[pids[2]] then break end
        end
        assert.truthy(seen[pids[1]] and seen[pids[2]])
    end)

    it("restarts a worker killed with SIGKILL and leaves the other's connections alone", function()
        local pids = ready_pids(s, 2)
        clients = spread(s, 2, 60)
        local victim, survivor = pids[1], pids[2]
        assert(proc.kill(victim, proc.SIGKILL))
        s:wait_log("worker w%d %(pid " .. victim .. "%) killed by signal 9 %(Killed%); restarting in")
        local after = ready_pids(s, 3)
        local new = after[3]
        assert.are_not.equal(victim, new)
        assert.equal(s.pid, parent_of(new))
        -- the survivor's clients still talk
        for i, c in ipairs(clients[survivor]) do
            assert.equal("still here " .. i, c:echo("echo:still here " .. i))
        end
        -- the victim's clients saw their connection drop
        for _, c in ipairs(clients[victim]) do assert.truthy(c:eof(5)) end
        -- new connections reach the restarted worker too
        local more = spread(s, 2, 60)
        assert.truthy(more[new], "no connection reached the restarted worker")
        assert.truthy(more[survivor])
        close_all(more)
    end)

    it("forwards SIGHUP: every worker reloads its scripts", function()
        ready_pids(s, 2)
        s:signal(proc.SIGHUP)
        s:wait_log("%[w1%] reloaded every script")
        s:wait_log("%[w2%] reloaded every script")
    end)

    it("stops every worker on SIGTERM and exits 0", function()
        local pids = ready_pids(s, 2)
        clients = spread(s, 2, 60)
        s:signal(proc.SIGTERM)
        -- every client, on either worker, is told 1001 and answers the close
        for _, cs in pairs(clients) do
            for _, c in ipairs(cs) do
                assert.equal(1001, (c:recv_close()))
                c:send(wsframe.close(1001))
            end
        end
        local how, code = s:wait_exit(15)
        assert.equal("exited", how)
        assert.equal(0, code)
        for _, pid in ipairs(pids) do assert.is_nil(parent_of(pid)) end
        assert.matches("supervisor: every worker has exited", s:log())
    end)
end)

describe("--workers with a worker that cannot start", function()
    it("stops and exits non-zero instead of restarting it forever", function()
        local s = server.start { app = APP, args = { "--workers", "2", "--lua-memory", "1k" },
                                 expect_exit = true }
        local ok, err = pcall(function()
            local how, code = s:wait_exit(15)
            assert.equal("exited", how)
            assert.equal(1, code)
            assert.matches("before it was ready; stopping", s:log())
        end)
        s:stop()
        assert(ok, err)
    end)
end)
