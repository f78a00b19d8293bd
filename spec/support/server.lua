-- Starts the real switchboard binary on a free loopback port for an
-- end-to-end spec, and stops it (even when the spec failed: call s:stop() in
-- a finally/teardown). start{ raw_args = true, expect_exit = true, args = {...} }
-- runs the binary with exactly those arguments (command-line specs).
--
--   local server = require "server"
--   local s = server.start{ app = "scripts", args = { "--idle-timeout", "5" } }
--   s.port, s.pid, s.url("/echo"), s:log(), s:metric(name), s:stop()
local proc = require "sbt_proc"

local server = {}

local root = os.getenv("SB_ROOT") or "."
server.bin = os.getenv("SB_BIN") or (root .. "/build/switchboard")
server.root = root

local function read_file(path)
    local f = io.open(path, "rb")
    if not f then return "" end
    local s = f:read("a")
    f:close()
    return s
end
server.read_file = read_file

function server.write_file(path, text)
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
end

local tmp_n = 0
function server.tmpname(suffix)
    tmp_n = tmp_n + 1
    return string.format("/tmp/sb-spec-%d-%d%s", proc.getpid(), tmp_n, suffix or "")
end

-- Wait until pred() is true or `timeout` seconds pass; returns pred's value.
function server.wait_for(pred, timeout, what)
    local deadline = proc.now() + (timeout or 10)
    while true do
        local v = pred()
        if v then return v end
        if proc.now() > deadline then
            error("timed out waiting for " .. (what or "a condition"), 2)
        end
        proc.sleep(0.01)
    end
end

-- Run a Python client (Debian's python3-websockets under /usr/bin/python3,
-- never the `python3` on PATH, and without the sanitizer build's preloaded
-- libasan): `code` is the script body after "import asyncio, json, sys" and
-- "import websockets"; its last line of output must be a JSON object, which is
-- returned decoded. Extra arguments are passed quoted.
server.PYTHON = "/usr/bin/python3"
function server.python(code, ...)
    local cjson = require "cjson"
    local file = server.tmpname(".py")
    local f = assert(io.open(file, "w"))
    f:write("import asyncio, json, sys\nimport websockets\n", code)
    f:close()
    local args = { ... }
    for i, a in ipairs(args) do args[i] = "'" .. tostring(a) .. "'" end
    local p = io.popen(("env -u LD_PRELOAD timeout 60 %s %s %s 2>&1")
        :format(server.PYTHON, file, table.concat(args, " ")))
    local out = p:read("a")
    p:close()
    os.remove(file)
    local ok, res = pcall(cjson.decode, out:match("([^\n]*)\n?$") or "")
    assert(ok and type(res) == "table", "python client failed:\n" .. out)
    return res
end

local S = {}
S.__index = S

-- Run the binary with exactly args to its exit (it must exit by itself within
-- 20 s); returns the exit code, stdout, stderr.
function server.run(args)
    local s = server.start{ expect_exit = true, raw_args = true, args = args }
    local how, code = s:wait_exit(20)
    local out = read_file(s.logfile .. ".out")
    local err = s:stop()
    assert(how == "exited", "switchboard did not exit by itself: " .. tostring(how))
    return code, out, err
end

function server.start(opts)
    opts = opts or {}
    local app = opts.app or (root .. "/scripts")
    if app:sub(1, 1) ~= "/" then app = root .. "/" .. app end
    local logf = server.tmpname(".log")
    local argv = { server.bin, "--listen", opts.listen or "127.0.0.1:0" }
    for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
    argv[#argv + 1] = app
    if opts.raw_args then argv = { server.bin, table.unpack(opts.args) } end -- exactly these
    local env = { ASAN_OPTIONS = "detect_leaks=1:abort_on_error=1" }
    for k, v in pairs(opts.env or {}) do env[k] = v end
    local pid, err = proc.spawn(argv, { stderr = logf, stdout = logf .. ".out", env = env })
    assert(pid, err)
    local s = setmetatable({ pid = pid, logfile = logf, app = app }, S)
    if opts.expect_exit then return s end
    local ok, e = pcall(server.wait_for, function()
        local port = read_file(logf):match("listening on [%d%.]+:(%d+)")
            or read_file(logf):match("listening on %[[%x:]+%]:(%d+)")
        if port then s.port = tonumber(port) return true end
        local how = proc.wait(pid, true)
        if how then error("switchboard exited at start-up:\n" .. read_file(logf)) end
    end, 15, "switchboard to listen")
    if not ok then
        proc.kill(pid, proc.SIGKILL)
        proc.wait(pid)
        error(e, 2)
    end
    s.host = "127.0.0.1"
    return s
end

function S:url(path)
    return string.format("ws://127.0.0.1:%d%s", self.port, path or "/")
end

-- A counter or gauge from the metrics page (--metrics-path /metrics), as a number.
function S:metric(name)
    local _, _, text = require("rawws").get(self.port, "/metrics")
    return tonumber(text:match("\n" .. name .. " (%d+)"))
end

function S:log()
    return read_file(self.logfile)
end

-- Wait for a line in the log matching a Lua pattern.
function S:wait_log(pattern, timeout)
    return server.wait_for(function() return self:log():match(pattern) end, timeout or 10,
        "log line " .. pattern)
end

function S:running()
    if self.exit_how then return false end
    local how, code = proc.wait(self.pid, true)
    if how then self.exit_how, self.exit_code = how, code return false end
    return true
end

function S:signal(sig)
    return proc.kill(self.pid, sig)
end

-- Wait for the process to exit by itself; returns how ("exited"/"signaled"), code.
function S:wait_exit(timeout)
    server.wait_for(function() return not self:running() end, timeout or 10, "switchboard to exit")
    return self.exit_how, self.exit_code
end

-- Stop with SIGTERM (then SIGKILL). Raises if the server crashed or a
-- sanitizer reported anything, so a spec notices.
function S:stop()
    if self:running() then
        proc.kill(self.pid, proc.SIGTERM)
        local ok = pcall(server.wait_for, function() return not self:running() end, 10)
        if not ok then
            proc.kill(self.pid, proc.SIGKILL)
            proc.wait(self.pid)
            self.exit_how = "signaled"
        end
    end
    local log = self:log()
    os.remove(self.logfile)
    os.remove(self.logfile .. ".out")
    if log:find("ERROR: AddressSanitizer") or log:find("runtime error:")
        or log:find("ERROR: LeakSanitizer") then
        error("sanitizer report from switchboard:\n" .. log, 2)
    end
    if self.exit_how == "signaled" then
        error("switchboard died from a signal:\n" .. log, 2)
    end
    return log
end

return server
