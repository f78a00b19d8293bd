-- A real redis-server on a free loopback port for end-to-end specs.
--
--   local redis = require "redis"
--   local r = redis.start([port])   -- { pid, port, log }; waits for PING
--   redis.cmd(port, "PUBSUB NUMSUB sb:x") -> raw reply, or nil when it is down
--   redis.resp(port, ...) -> first reply line of one binary-safe command (RESP array)
--   redis.numsub(port, topic) -> processes subscribed to sb:<topic> (nil when down)
--   redis.client(port) -> a connected luasocket, or nil
--   redis.stop(r)                    -- also from a frozen (SIGSTOP) state
--   redis.stop_all(r, { a, b })      -- stops every switchboard, then r; raises what they raised
--   redis.lag(port, delay, up) -> { pid, port }: a proxy (spec/support/redis_lag.py)
--                               whose subscriber connections hear Redis `delay` s late
--                               (up: and are heard that late); redis.stop(l) ends it
local server = require "server"
local proc = require "sbt_proc"
local socket = require "socket"

local redis = {}

redis.BIN = "/usr/bin/redis-server"

function redis.free_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
end

function redis.client(port)
    local c = assert(socket.tcp())
    c:settimeout(2)
    if not c:connect("127.0.0.1", port) then return nil end
    return c
end

-- One inline command; returns the raw reply, or nil when Redis is down.
function redis.cmd(port, cmd)
    local c = redis.client(port)
    if not c then return nil end
    c:send(cmd .. "\r\n")
    local reply = {}
    local line = c:receive("*l")
    while line do
        reply[#reply + 1] = line
        if line:match("^[+:%-]") and #reply == 1 then break end
        if line:match("^:") then break end
        line = c:receive("*l")
    end
    c:close()
    return table.concat(reply, "\n")
end

-- One command as a RESP array (binary-safe); returns the raw first reply line.
function redis.resp(port, ...)
    local args = { ... }
    local out = { ("*%d\r\n"):format(#args) }
    for _, a in ipairs(args) do out[#out + 1] = ("$%d\r\n%s\r\n"):format(#a, a) end
    local c = assert(redis.client(port))
    assert(c:send(table.concat(out)))
    local line = c:receive("*l")
    c:close()
    return line
end

-- Processes subscribed to the Redis channel of a topic.
function redis.numsub(port, topic)
    local reply = redis.cmd(port, "PUBSUB NUMSUB sb:" .. topic) or ""
    return tonumber(reply:match(":(%d+)$"))
end

function redis.start(port)
    port = port or redis.free_port()
    local logf = server.tmpname(".redis.log")
    local pid = assert(proc.spawn({ redis.BIN, "--port", tostring(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no" }, { stdout = logf, stderr = logf, env = { LD_PRELOAD = "" } }))
    server.wait_for(function()
        if proc.wait(pid, true) then error("redis-server exited:\n" .. server.read_file(logf)) end
        return redis.cmd(port, "PING") == "+PONG"
    end, 10, "redis-server to answer PING")
    return { pid = pid, log = logf, port = port }
end

function redis.lag(port, delay, up)
    local out = server.tmpname(".lag")
    local argv = { "/usr/bin/env", "-u", "LD_PRELOAD", server.PYTHON,
        server.root .. "/spec/support/redis_lag.py", "--redis", tostring(port), "--delay",
        tostring(delay or 0.3) }
    if up then argv[#argv + 1] = "--up" end
    local pid = assert(proc.spawn(argv, { stdout = out, stderr = out .. ".err" }))
    local l = { pid = pid, log = out }
    local ok, err = pcall(server.wait_for, function()
        local p = server.read_file(out):match("port (%d+)")
        if p then l.port = tonumber(p) return true end
        if proc.wait(pid, true) then error("redis_lag.py exited:\n" .. server.read_file(out .. ".err")) end
    end, 15, "redis_lag.py to listen")
    if not ok then redis.stop(l) error(err, 2) end
    return l
end

function redis.stop(r)
    if not r then return end
    proc.kill(r.pid, proc.SIGCONT)
    proc.kill(r.pid, proc.SIGKILL)
    proc.wait(r.pid)
    os.remove(r.log)
end

-- A teardown: stops each switchboard server (all of them even when one raises: a crash or
-- a sanitizer report), then Redis, then raises what the servers raised.
function redis.stop_all(r, servers)
    local errs = {}
    for _, s in ipairs(servers) do
        local ok, e = pcall(s.stop, s)
        if not ok then errs[#errs + 1] = e end
    end
    redis.stop(r)
    assert(#errs == 0, table.concat(errs, "\n"))
end

return redis
