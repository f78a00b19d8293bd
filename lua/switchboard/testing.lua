-- switchboard.testing: drive route scripts from busted specs without a server.
--
--   local t = require "switchboard.testing"
--   local app = t.app("scripts")             -- app directory: lib/ is on require's path
--   local route = app:load("chat")           -- scripts/chat.lua, answering /chat
--   local c = route:connect{ query = { nick = "ann" } }   -- upgrade(req), then open(ws)
--   c:message('{"type":"hello"}')            -- the peer sends a text message
--   assert.equal(1, #c.sent)                 -- what the script sent: { data =, binary = }
--   t.clock:advance(5)                       -- fire the timers due in the next 5 s
--   c:close(1000)                            -- the peer closes: close(ws, 1000, "")
--
-- The script gets a fake `switchboard` module from require "switchboard" that implements
-- the whole contract of DESIGN.md ("Apps and routes") with the server's semantics:
-- misuse raises in Lua style, a handler that raises is recorded in route.errors and its
-- connection is closed with 1011, a ws used after its connection closed raises.
-- Where DESIGN.md leaves a detail open, this follows core/script*.c (return values of
-- subscribe/publish/ping, ws.data assignable, lenient request answers, reload(old)).
local cjson = require "cjson"
local fake_crypto = require "switchboard.testing.crypto"
local fake_json = require "switchboard.testing.json"
local fake_redis = require "switchboard.testing.redis"
local fake_history = require "switchboard.testing.history"

local testing = {}

-- Argument checks, worded like lauxlib's so specs see what the server would say.

local raise, argerror = require("switchboard.testing.errors").here()

local function typename(v)
    if v == nil then return "nil" end
    return type(v)
end

local function check_string(fname, n, v)
    local tv = type(v)
    if tv == "number" then return tostring(v) end
    if tv ~= "string" then argerror(fname, n, "string expected, got " .. typename(v)) end
    return v
end

local function opt_string(fname, n, v, default)
    if v == nil then return default end
    return check_string(fname, n, v)
end

local function check_number(fname, n, v)
    if type(v) ~= "number" then argerror(fname, n, "number expected, got " .. typename(v)) end
    return v
end

-- `given`: false when the argument was absent (the server says "no value" then).
local function check_function(fname, n, v, given)
    if type(v) ~= "function" then
        argerror(fname, n, "function expected, got " .. (given == false and "no value" or typename(v)))
    end
    return v
end

local function check_text(fname, n, v, binary)
    v = check_string(fname, n, v)
    if not binary and not utf8.len(v) then argerror(fname, n, "text is not valid UTF-8 (send it as binary)") end
    return v
end

local function check_topic(fname, n, v)
    v = check_string(fname, n, v)
    if v == "" then argerror(fname, n, "topic must not be empty") end
    return v
end

-- Close codes a peer may put on the wire (RFC 6455 §7.4 and the IANA registry: 1012-1014
-- are service restart, try again later, bad gateway), as the server accepts them.
local function valid_close_code(code)
    return code == 1000 or code == 1001 or code == 1002 or code == 1003
        or (code >= 1007 and code <= 1014) or (code >= 3000 and code <= 4999)
end

-- The server's default --max-message (16 MiB).
local MAX_MESSAGE = 16 * 1024 * 1024

local function check_size(fname, n, v, max)
    if #v > max then argerror(fname, n, "message longer than --max-message") end
    return v
end

local function copy(t)
    local r = {}
    for k, v in pairs(t or {}) do r[k] = v end
    return r
end

local function unescape(s)
    s = s:gsub("+", " ")
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- "a=1&b=2&a=3" -> { a = { "1", "3" }, b = "2" }: a repeated key gives a list.
local function parse_query(q)
    if type(q) == "table" then return copy(q) end
    local r = {}
    for pair in tostring(q or ""):gmatch("[^&]+") do
        local k, v = pair:match("^([^=]*)=?(.*)$")
        k, v = unescape(k), unescape(v)
        local old = r[k]
        if old == nil then
            r[k] = v
        elseif type(old) == "table" then
            old[#old + 1] = v
        else
            r[k] = { old, v }
        end
    end
    return r
end

local function lower_headers(h)
    local r = {}
    for k, v in pairs(h or {}) do r[tostring(k):lower()] = v end
    return r
end

-- The fake clock: monotonic seconds, moved only by advance(). Each app owns one;
-- testing.clock is the clock of the app created last.

local Clock = {}
Clock.__index = Clock

local function new_clock()
    return setmetatable({ now = 0, timers = {}, seq = 0 }, Clock)
end

-- Fires every timer due within `seconds`, earliest first (creation order breaks ties),
-- with now() reading each timer's due time while it runs. Returns how many fired.
function Clock:advance(seconds)
    seconds = check_number("advance", 1, seconds)
    if seconds < 0 then argerror("advance", 1, "seconds must not be negative") end
    local target = self.now + seconds
    local fired = 0
    while true do
        local next_timer
        for tm in pairs(self.timers) do
            if tm.due <= target and (not next_timer or tm.due < next_timer.due
                    or (tm.due == next_timer.due and tm.seq < next_timer.seq)) then
                next_timer = tm
            end
        end
        if not next_timer then break end
        self.now = math.max(self.now, next_timer.due)
        if next_timer.interval then
            next_timer.due = next_timer.due + next_timer.interval
            self.seq = self.seq + 1
            next_timer.seq = self.seq
        else
            self.timers[next_timer] = nil
        end
        fired = fired + 1
        next_timer.fire()
    end
    self.now = math.max(self.now, target) -- a handler's sb.sleep may have gone further
    return fired
end

-- How many timers are pending.
function Clock:pending()
    local n = 0
    for _ in pairs(self.timers) do n = n + 1 end
    return n
end

local current_clock
testing.clock = setmetatable({}, {
    __index = function(_, k)
        if not current_clock then raise("switchboard.testing: no app yet (call testing.app first)") end
        local v = current_clock[k]
        if type(v) == "function" then
            return function(_, ...) return v(current_clock, ...) end
        end
        return v
    end,
})

local next_ws_id = 0

-- The ws a script sees. Fields are read-only (state belongs in ws.data); methods check
-- their arguments and the connection's state: "open", "closing" (send returns false,
-- nothing more is delivered) or "closed" (every method raises).

local WS_FIELDS = { id = true, data = true, path = true, query = true, headers = true,
    remote = true, protocol = true }
local ws_methods = {}
local ws_conn = setmetatable({}, { __mode = "k" }) -- ws -> its connection (harness side)

local ws_mt = {
    __name = "ws",
    __index = function(ws, k)
        if WS_FIELDS[k] then return ws_conn[ws].fields[k] end
        return ws_methods[k]
    end,
    __newindex = function(ws, k, v)
        if k == "data" then
            if type(v) ~= "table" then argerror("__newindex", 3, "table expected, got " .. typename(v)) end
            ws_conn[ws].fields.data = v
            ws_conn[ws].client.data = v
            return
        end
        raise(("ws.%s is read-only (keep your state in ws.data)"):format(tostring(k)))
    end,
    __tostring = function(ws)
        local conn = ws_conn[ws]
        return ("ws %d%s"):format(conn.fields.id, conn.state == "closed" and " (closed)" or "")
    end,
}

local function check_ws(fname, ws, allow_closed)
    local conn = ws_conn[ws]
    if getmetatable(ws) ~= ws_mt or not conn then
        raise(("calling '%s' on bad self (ws expected, got %s)"):format(fname, typename(ws)))
    end
    if conn.state == "closed" and not allow_closed then
        raise(("bad argument #1 to '%s' (ws %d is closed)"):format(fname, conn.fields.id))
    end
    return conn
end

function ws_methods.send(ws, msg, binary)
    local conn = check_ws("send", ws)
    msg = check_size("send", 1, check_text("send", 1, msg, binary), conn.app.max_message)
    if conn.state ~= "open" then return false end
    conn.client.sent[#conn.client.sent + 1] = { data = msg, binary = binary and true or false }
    return not conn.client.pressured
end

function ws_methods.close(ws, code, reason)
    local conn = check_ws("close", ws)
    if code ~= nil then
        code = math.tointeger(check_number("close", 1, code))
        if not code or not (code == 1000 or (code >= 3000 and code <= 4999)) then
            argerror("close", 1, "close code must be 1000 or 3000-4999")
        end
    end
    reason = opt_string("close", 2, reason, "")
    if #reason > 123 then argerror("close", 2, "reason longer than 123 bytes") end
    if not utf8.len(reason) then argerror("close", 2, "reason is not valid UTF-8") end
    if conn.state ~= "open" then return end
    conn.state = "closing"
    conn.client.closed = { code = code or 1000, reason = reason }
    conn.app.pending_closes[#conn.app.pending_closes + 1] = conn
end

function ws_methods.ping(ws, data)
    local conn = check_ws("ping", ws)
    data = opt_string("ping", 1, data, "")
    if #data > 125 then argerror("ping", 1, "ping payload longer than 125 bytes") end
    if conn.state ~= "open" then return false end
    conn.client.pings[#conn.client.pings + 1] = data
    return true
end

-- The largest presence info, as JSON (script_presence.c).
local PRESENCE_MAX = 1024

function ws_methods.subscribe(ws, topic, opts)
    local conn = check_ws("subscribe", ws)
    topic = check_topic("subscribe", 1, topic)
    if opts ~= nil and type(opts) ~= "table" then
        argerror("subscribe", 2, "table expected, got " .. typename(opts))
    end
    local info = opts and opts.presence
    local json
    if info ~= nil then
        if type(info) ~= "table" then argerror("subscribe", 2, "presence must be a table") end
        local ok, res = pcall(conn.app.module.json.encode, info)
        if not ok then
            argerror("subscribe", 2, "presence does not encode as JSON: "
                .. tostring(res):gsub("^[^\n]-:%d+: ", ""))
        end
        if #res > PRESENCE_MAX then
            argerror("subscribe", 2, "presence longer than 1024 bytes as JSON")
        end
        json = res
    end
    if conn.state ~= "open" then return false end
    if json then
        conn.app.presence[topic] = conn.app.presence[topic] or {}
        conn.app.presence[topic][conn] = json
    end
    if opts and (opts.since ~= nil or opts.epoch ~= nil) then
        return conn.app.history:subscribe(conn, topic, opts,
            function() return conn.app:_subscribe(conn, topic) end)
    end
    return conn.app:_subscribe(conn, topic)
end

function ws_methods.unsubscribe(ws, topic)
    local conn = check_ws("unsubscribe", ws)
    topic = check_topic("unsubscribe", 1, topic)
    return conn.app:_unsubscribe(conn, topic)
end

function ws_methods.publish(ws, topic, msg, binary)
    local conn = check_ws("publish", ws)
    topic = check_topic("publish", 1, topic)
    msg = check_size("publish", 2, check_text("publish", 2, msg, binary), conn.app.max_message)
    return conn.app:_publish(topic, msg, binary, conn)
end

function ws_methods.buffered(ws)
    local conn = check_ws("buffered", ws)
    return conn.client.buffered
end

-- The harness side of a connection, returned by route:connect.

local Client = {}
Client.__index = Client

local function check_client(c, fname)
    if getmetatable(c) ~= Client then
        raise(("calling '%s' on bad self (client expected, got %s)"):format(fname, typename(c)))
    end
    if c._conn.state == "closed" then
        raise(("calling '%s' on bad self (the connection is closed)"):format(fname))
    end
end

-- The server closes the connection instead of delivering a message.
local function refuse(conn, code, reason)
    conn.client.closed = { code = code, reason = reason }
    conn.state = "closing"
    conn.app.pending_closes[#conn.app.pending_closes + 1] = conn
    conn.app:_settle()
end

-- The peer sends a message: message(ws, msg, binary). A message longer than the app's
-- max_message closes the connection with 1009 instead, invalid UTF-8 in a text message
-- with 1007, as the server does.
function Client:message(data, binary)
    check_client(self, "message")
    data = check_string("message", 1, data)
    local conn = self._conn
    if conn.state ~= "open" then return end
    if #data > conn.app.max_message then
        refuse(conn, 1009, "message longer than max_message")
        return
    end
    if not binary and not utf8.len(data) then
        refuse(conn, 1007, "invalid UTF-8")
        return
    end
    conn.route:_dispatch(conn, "message", conn.ws, data, binary and true or false)
    conn.app:_settle()
end

-- The peer closes: close(ws, code, reason). No code means 1005 (no status received).
function Client:close(code, reason)
    check_client(self, "close")
    if code ~= nil then
        code = check_number("close", 1, code)
        if not valid_close_code(code) then argerror("close", 1, "invalid close code " .. tostring(code)) end
    end
    reason = opt_string("close", 2, reason, "")
    local conn = self._conn
    if conn.state == "open" then
        conn.state = "closing"
        conn.peer_close = { code = code or 1005, reason = reason }
        conn.app.pending_closes[#conn.app.pending_closes + 1] = conn
    end
    conn.app:_settle()
end

-- The peer vanishes without a close frame: close(ws, 1006, "").
function Client:drop()
    check_client(self, "drop")
    local conn = self._conn
    if conn.state == "open" then
        conn.state = "closing"
        conn.peer_close = { code = 1006, reason = "" }
        conn.app.pending_closes[#conn.app.pending_closes + 1] = conn
    end
    conn.app:_settle()
end

-- Simulates a slow reader: buffered() reports `bytes` and send() returns false
-- (the message is still queued, so it is still recorded in sent).
function Client:pressure(bytes)
    check_client(self, "pressure")
    self.buffered = check_number("pressure", 1, bytes)
    self.pressured = true
end

-- The queue fell below its low-water mark: buffered() is 0 again and drain(ws) runs.
function Client:drain()
    check_client(self, "drain")
    self.buffered, self.pressured = 0, false
    self._conn.route:_dispatch(self._conn, "drain", self._conn.ws)
    self._conn.app:_settle()
end

-- The text messages sent so far, decoded as JSON (binary ones are skipped).
function Client:json()
    local r = {}
    for _, m in ipairs(self.sent) do
        if not m.binary then r[#r + 1] = cjson.decode(m.data) end
    end
    return r
end

-- Forgets what was sent so far; returns it.
function Client:clear()
    local sent = self.sent
    self.sent = {}
    return sent
end

function Client:is_open()
    return self._conn.state == "open"
end

-- Routes: one loaded script, its handlers swapped by reload().

local Route = {}
Route.__index = Route

-- Response headers as the server takes them: string (or number) values, names and
-- values without CR, LF (or ':' and blanks in names). Returns a copy, or {}, err.
local function check_headers(h)
    local r = {}
    if type(h) ~= "table" then return r end
    for k, v in pairs(h) do
        if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
            return {}, "header names and values must be strings"
        end
        v = tostring(v)
        if k == "" or k:find("[\r\n: \t]") or v:find("[\r\n]") then
            return {}, "header name or value has a forbidden character"
        end
        r[k] = v
    end
    return r
end

local function route_path(name)
    local p = "/" .. name
    p = p:gsub("/index$", "")
    return p == "" and "/" or p
end

-- Handler calls run as coroutines, as on the server: sb.sleep yields and advances the
-- fake clock, sb.spawn adds a light thread to the call, sb.wait waits for one. A call
-- ends when its function and every light thread it spawned have returned.
local SLEEP, WAIT = {}, {}
local thread_of = setmetatable({}, { __mode = "k" }) -- coroutine -> its thread record
local running_calls = {}                            -- stack of the calls running now
local ThreadHandle = {}
ThreadHandle.__index = ThreadHandle
ThreadHandle.__name = "switchboard.thread"

local function new_thread(call, fn, args)
    local th = { call = call, co = coroutine.create(fn), args = args, wake = call.clock.now,
        seq = #call.threads + 1 }
    thread_of[th.co] = th
    call.threads[#call.threads + 1] = th
    return th
end

-- th has ended: wake the thread in sb.wait on it with true, results... or false, err.
local function thread_ended(th)
    local w = th.waiter
    if not w then return end
    th.waiter, w.blocked = nil, nil
    w.wake = th.call.clock.now
    if th.failed then
        w.args = table.pack(false, th.err)
    else
        w.args = table.pack(true, table.unpack(th.results, 1, th.results.n))
    end
end

local function resume_thread(th)
    local args = th.args
    th.args = { n = 0 }
    local res = table.pack(coroutine.resume(th.co, table.unpack(args, 1, args.n)))
    if res[1] and coroutine.status(th.co) == "dead" then
        th.done, th.results = true, table.pack(table.unpack(res, 2, res.n))
    elseif res[1] and res[2] == SLEEP then
        th.wake = th.call.clock.now + res[3]
    elseif res[1] and res[2] == WAIT then
        th.blocked = res[3]
        res[3].waiter = th
    else
        local err = res[1] and "attempt to yield from a handler (coroutine.yield outside a "
            .. "coroutine of the script's own; sb.sleep and sb.spawn wait)" or res[2]
        th.done, th.failed, th.err = true, true, err
        th.traceback = debug.traceback(th.co, tostring(err))
    end
    if th.done then thread_ended(th) end
end

-- Runs fn(...) as a handler call; returns ok, results... like pcall (the traceback for
-- the error).
local function run_call(clock, fn, ...)
    local call = { clock = clock, threads = {} }
    local main = new_thread(call, fn, table.pack(...))
    running_calls[#running_calls + 1] = call
    while not main.failed do
        local best
        for _, th in ipairs(call.threads) do
            if not th.done and not th.blocked and (not best or th.wake < best.wake) then best = th end
        end
        if not best then break end
        if best.wake > clock.now then clock:advance(best.wake - clock.now) end
        resume_thread(best)
    end
    table.remove(running_calls)
    if main.failed then return false, main.traceback end
    if not main.done then return false, "the handler's threads wait for each other for ever" end
    return true, table.unpack(main.results, 1, main.results.n)
end

-- The thread of the running call that `fname` runs in, or a raised "cannot wait here".
local function waiting_thread(fname, yields)
    local co = coroutine.running()
    local th = thread_of[co]
    if th then return th end
    if #running_calls == 0 then
        raise(("'%s' cannot wait here: only a handler or a timer function may wait "
            .. "(a script's top level runs at load)"):format(fname))
    end
    if yields then
        raise(("'%s' cannot wait inside a coroutine of the script's own "
            .. "(coroutine.wrap/resume): use sb.spawn"):format(fname))
    end
    return nil, running_calls[#running_calls]
end

-- Calls handler `name` in a coroutine (run_call). A raising handler is recorded in
-- route.errors and logged; returns ok, results... like pcall.
function Route:_call(name, fn, ...)
    local app = self.app
    local prev = app.current
    app.current = self.version
    local res = table.pack(run_call(app.clock, fn, ...))
    app.current = prev
    if not res[1] then
        local err = { handler = name, message = tostring(res[2]):match("^[^\n]*"), traceback = tostring(res[2]) }
        self.errors[#self.errors + 1] = err
        app:_log("error", self.name, ("%s handler failed: %s"):format(name, err.traceback))
        if app.strict then error(("%s: %s handler raised: %s"):format(self.name, name, err.traceback), 0) end
    end
    return table.unpack(res, 1, res.n)
end

-- Records a handler's invalid answer as that handler's error.
function Route:_fail(handler, msg)
    self.errors[#self.errors + 1] = { handler = handler, message = msg, traceback = msg }
    self.app:_log("error", self.name, ("%s handler failed: %s"):format(handler, msg))
    if self.app.strict then error(("%s: %s"):format(self.name, msg), 0) end
end

-- Runs an event handler of an open connection; a raising handler closes it with 1011.
function Route:_dispatch(conn, name, ...)
    local fn = self.handlers[name]
    if fn == nil then return true end
    local ok = self:_call(name, fn, ...)
    if not ok and conn.state == "open" then
        conn.state = "closing"
        conn.client.closed = { code = 1011, reason = "internal error" }
        self.app.pending_closes[#self.app.pending_closes + 1] = conn
    end
    return ok
end

local function check_handlers(t, source)
    if type(t) ~= "table" then
        return nil, ("%s: a route script must return a table of handlers, got %s"):format(source, type(t))
    end
    for k, v in pairs(t) do
        if type(v) ~= "function" and (k == "upgrade" or k == "open" or k == "message" or k == "close"
                or k == "drain" or k == "request") then
            return nil, ("%s: handler '%s' must be a function, got %s"):format(source, k, type(v))
        end
    end
    return t
end

-- Loads (or reloads) the script: compiled and run in a fresh environment.
function Route:_run()
    local app = self.app
    local chunk, err = loadfile(self.file, "t", app:_env())
    if not chunk then return nil, err end
    local version = { route = self }
    local prev = app.current
    app.current = version
    local ok, res = xpcall(chunk, debug.traceback)
    app.current = prev
    -- what a failed top level made (timers, subscriptions) dies with it
    if not ok then app:_cancel_timers(version) return nil, res end
    local handlers, herr = check_handlers(res, self.file)
    if not handlers then app:_cancel_timers(version) return nil, herr end
    return handlers, version
end

-- Re-runs the script as the server's hot reload does: on success the new version's
-- optional reload(old_handlers) hook runs, the handlers are swapped, open connections
-- keep their ws.data and the old version's timers are cancelled. On failure returns
-- nil, err and the previous version keeps serving.
function Route:reload()
    local handlers, version = self:_run()
    if not handlers then
        self.app:_log("error", self.name, "reload failed: " .. tostring(version))
        return nil, version
    end
    if type(handlers.reload) == "function" then
        local prev = self.version
        self.version = version
        self:_call("reload", handlers.reload, self.handlers)
        self.version = prev
    end
    self.app:_cancel_timers(self.version)
    self.handlers, self.version = handlers, version
    return true
end

-- Opens a fake connection: upgrade(req) and then open(ws). Returns the client, or
-- nil, status, body when upgrade refused it (500 when upgrade raised).
-- opts: query (table or string), headers, protocols (list), remote, path.
function Route:connect(opts)
    opts = opts or {}
    local app = self.app
    local headers = lower_headers(opts.headers)
    local protocols = copy(opts.protocols)
    headers.host = headers.host or "localhost"
    headers.upgrade, headers.connection = "websocket", "Upgrade"
    headers["sec-websocket-version"] = "13"
    headers["sec-websocket-key"] = headers["sec-websocket-key"] or "dGhlIHNhbXBsZSBub25jZQ=="
    if #protocols > 0 then headers["sec-websocket-protocol"] = table.concat(protocols, ", ") end
    local req = {
        method = "GET", path = opts.path or self.path, query = parse_query(opts.query),
        headers = headers, remote = opts.remote or "127.0.0.1:40000", protocols = protocols,
        origin = headers.origin,
    }
    local protocol, resp_headers = nil, {}
    local up = self.handlers.upgrade
    if up then
        local ok, accept, arg2, arg3 = self:_call("upgrade", up, req)
        app:_settle()
        if not ok then return nil, 500, "Internal Server Error" end
        if not accept then
            local status = math.type(arg2) == "integer" and arg2 or 403
            if status < 400 or status > 599 then
                app:_log("error", self.name, ("upgrade refused with status %d; using 403"):format(status))
                status = 403
            end
            return nil, status, type(arg3) == "string" and arg3 or nil
        end
        if type(arg2) == "table" then
            if type(arg2.protocol) == "string" then protocol = arg2.protocol end
            local bad
            resp_headers, bad = check_headers(arg2.headers)
            if bad then
                self:_fail("upgrade", "upgrade returned bad headers: " .. bad)
                return nil, 500, "Internal Server Error"
            end
            if protocol ~= nil then
                local offered = false
                for _, p in ipairs(protocols) do offered = offered or p == protocol end
                if not offered then
                    -- The server sends it anyway; a conforming client then fails the connection.
                    self:_fail("upgrade",
                        ("upgrade chose protocol %q, which the client did not offer"):format(protocol))
                    return nil, 500, "Internal Server Error"
                end
            end
        end
    end
    next_ws_id = next_ws_id + 1
    local client = setmetatable({ sent = {}, pings = {}, closed = nil, buffered = 0, pressured = false,
        protocol = protocol, response_headers = resp_headers }, Client)
    local ws = setmetatable({}, ws_mt)
    local conn = {
        app = app, route = self, client = client, ws = ws, state = "open", topics = {},
        fields = { id = next_ws_id, data = {}, path = req.path, query = req.query, headers = req.headers,
            remote = req.remote, protocol = protocol },
    }
    ws_conn[ws] = conn
    client._conn, client.ws, client.data, client.id = conn, ws, conn.fields.data, next_ws_id
    app.conns[conn] = true
    self:_dispatch(conn, "open", ws)
    app:_settle()
    return client
end

-- Plain HTTP on the route: request(req). Returns { status =, headers =, body = };
-- 500 when the handler raises or answers something that is not a response,
-- 426 when the route has no request handler.
function Route:request(opts)
    opts = opts or {}
    local fn = self.handlers.request
    if not fn then
        return { status = 426, headers = { ["content-type"] = "text/plain" }, body = "Upgrade Required" }
    end
    local req = {
        method = opts.method or "GET", path = opts.path or self.path, query = parse_query(opts.query),
        headers = lower_headers(opts.headers), remote = opts.remote or "127.0.0.1:40000",
        protocols = {}, body = opts.body or "",
    }
    req.origin = req.headers.origin
    local ok, resp = self:_call("request", fn, req)
    self.app:_settle()
    local failed = { status = 500, headers = {}, body = "" }
    if not ok then return failed end
    if type(resp) ~= "table" then
        self:_fail("request", "request handler must return a table {status=, headers=, body=}, got " .. type(resp))
        return failed
    end
    -- Lenient where the server is: a missing status is 200, a body may be a number.
    local status = math.type(resp.status) == "integer" and resp.status or 200
    if (status < 200 or status > 599) and status ~= 204 and status ~= 304 then status = 500 end
    local headers, bad = check_headers(resp.headers)
    if bad then
        self:_fail("request", "request handler returned bad headers: " .. bad)
        return failed
    end
    local body = resp.body
    if type(body) == "number" then body = tostring(body) end
    return { status = status, headers = headers, body = type(body) == "string" and body or "" }
end

-- Apps: one directory, its routes, and the state the server keeps per app.

local App = {}
App.__index = App

function App:_log(level, source, msg)
    self.logs[#self.logs + 1] = { level = level, route = source, message = msg }
end

function App:_subscribe(conn, topic)
    local subs = self.topics[topic]
    if not subs then
        subs = { n = 0, list = {} }
        self.topics[topic] = subs
    end
    if conn.topics[topic] then return false end
    conn.topics[topic] = true
    subs.n = subs.n + 1
    subs.list[#subs.list + 1] = conn
    return true
end

function App:_unsubscribe(conn, topic)
    if not conn.topics[topic] then return false end
    conn.topics[topic] = nil
    local present = self.presence[topic]
    if present then
        present[conn] = nil
        if next(present) == nil then self.presence[topic] = nil end
    end
    local subs = self.topics[topic]
    for i, c in ipairs(subs.list) do
        if c == conn then table.remove(subs.list, i) break end
    end
    subs.n = subs.n - 1
    if subs.n == 0 then self.topics[topic] = nil end
    return true
end

function App:_publish(topic, msg, binary, sender)
    binary = binary and true or false
    self.published[#self.published + 1] = { topic = topic, data = msg, binary = binary,
        sender = sender and sender.fields.id or nil }
    local subs = self.topics[topic]
    local rule = self.history:match(topic)
    if rule then
        return self.history:publish(rule, topic, msg, binary, sender, subs and copy(subs.list) or {})
    end
    local n = 0
    for _, conn in ipairs(subs and copy(subs.list) or {}) do
        if conn ~= sender and conn.state == "open" then
            conn.client.sent[#conn.client.sent + 1] = { data = msg, binary = binary }
            n = n + 1
        end
    end
    -- sb.subscribe functions run after the event, as the server runs them from the loop
    for _, sub in ipairs(copy(self.script_subs[topic])) do
        self.sub_queue[#self.sub_queue + 1] = { sub = sub, msg = msg, binary = binary }
    end
    return n
end

-- Runs the sb.subscribe functions queued by publishes, in order (a call that waits
-- runs to its end on the fake clock before the next one starts, as one subscription's
-- messages do on the server). An error is logged; the next message runs all the same.
function App:_run_subs()
    while #self.sub_queue > 0 do
        local q = table.remove(self.sub_queue, 1)
        local sub = q.sub
        if not sub.dead then
            local route = sub.version and sub.version.route
            if route then
                local prev = route.version
                route.version = sub.version
                route:_call("subscription", sub.fn, q.msg, q.binary)
                route.version = prev
            else
                local ok, err = run_call(self.clock, sub.fn, q.msg, q.binary)
                if not ok then self:_log("error", "?", "subscription failed: " .. err) end
            end
        end
    end
end

function App:_unsubscribe_script(sub)
    local list = self.script_subs[sub.topic]
    sub.dead = true
    for i, x in ipairs(list or {}) do
        if x == sub then table.remove(list, i) break end
    end
    if list and #list == 0 then self.script_subs[sub.topic] = nil end
end

-- Completes the closes queued during the last event, as the loop does after it:
-- the connection leaves its topics, then close(ws, code, reason) runs exactly once.
function App:_settle()
    self:_run_subs()
    while #self.pending_closes > 0 do
        local conn = table.remove(self.pending_closes, 1)
        if conn.state ~= "closed" then
            local how = conn.peer_close or conn.client.closed
            for topic in pairs(copy(conn.topics)) do self:_unsubscribe(conn, topic) end
            conn.state = "closing"
            conn.route:_dispatch(conn, "close", conn.ws, how.code, how.reason)
            conn.state = "closed"
            self.conns[conn] = nil
        end
        self:_run_subs()
    end
end

function App:_cancel_timers(version)
    for tm in pairs(copy(self.clock.timers)) do
        if tm.version == version then self.clock.timers[tm] = nil end
    end
    for _, list in pairs(copy(self.script_subs)) do
        for _, sub in ipairs(copy(list)) do
            if sub.version == version then self:_unsubscribe_script(sub) end
        end
    end
end

local Timer = {}
Timer.__index = Timer

-- Stops the timer; it does not fire again. Returns whether it was still pending.
function Timer:cancel()
    if getmetatable(self) ~= Timer then
        raise(("calling 'cancel' on bad self (timer expected, got %s)"):format(typename(self)))
    end
    local was = self.clock.timers[self] ~= nil
    self.clock.timers[self] = nil
    return was
end

function App:_timer(fname, seconds, fn, repeating, nargs)
    seconds = check_number(fname, 1, seconds)
    fn = check_function(fname, 2, fn, nargs >= 2)
    if seconds ~= seconds or seconds < 0 or seconds > 1e9 then
        argerror(fname, 1, "seconds must be between 0 and 1e9")
    end
    if repeating and seconds < 0.001 then
        argerror(fname, 1, "an 'every' interval must be at least 0.001 seconds")
    end
    local clock = self.clock
    local version = self.current
    clock.seq = clock.seq + 1
    local tm = setmetatable({ clock = clock, due = clock.now + seconds, seq = clock.seq,
        interval = repeating and seconds or nil, version = version }, Timer)
    tm.fire = function()
        local route = version and version.route
        if route then
            route:_call(fname, fn, tm)
        else
            local ok, err = run_call(clock, fn, tm)
            if not ok then self:_log("error", "?", fname .. " callback failed: " .. err) end
        end
        self:_settle()
    end
    clock.timers[tm] = true
    return tm
end

-- sb.http in the fake: answered by the spec through testing.http.on, never on the
-- network. The checks and the answer's shape are the server's (script_http.c).
local http_answers = {}

local REDIRECT_CODES = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

-- loc against base, for the forms servers send (absolute, //host, /path, path).
local function resolve_location(base, loc)
    if loc:match("^[Hh][Tt][Tt][Pp][Ss]?://") then return loc end
    local scheme, origin, path = base:match("^(%a+):(//[^/?#]*)([^?#]*)")
    if loc:sub(1, 2) == "//" then return scheme .. ":" .. loc end
    if loc:sub(1, 1) == "/" then return scheme .. ":" .. origin .. loc end
    local dir = path:match("^(.*/)") or "/"
    return scheme .. ":" .. origin .. dir .. loc
end

-- The answer of the first t.http.on pattern that matches req.url.
local function answer_http(req)
    for _, a in ipairs(http_answers) do
        if req.url:find(a.pattern) then
            local res, err = a.fn(req)
            if res == nil then return nil, tostring(err or "closed") end
            if type(res) ~= "table" then
                raise("switchboard.testing: a t.http.on function must return a table or nil, err")
            end
            local body = tostring(res.body or "")
            if #body > req.max_body then return nil, "body too large" end
            local h = {}
            for k, v in pairs(res.headers or {}) do h[tostring(k):lower()] = tostring(v) end
            return { status = math.tointeger(res.status) or 200, headers = h, body = body }
        end
    end
    raise(("switchboard.testing: no t.http.on pattern matches %s %s"):format(req.method, req.url))
end

local function fake_http_request(url, opts)
    local fname = "request"
    url = check_string(fname, 1, url)
    if not (url:match("^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]")) then
        argerror(fname, 1, "URL scheme must be http:// or https://")
    end
    if opts ~= nil and type(opts) ~= "table" then
        argerror(fname, 2, "table expected, got " .. typename(opts))
    end
    opts = opts or {}
    local function opt(k, want)
        local v = opts[k]
        if v ~= nil and type(v) ~= want and not (want == "string" and type(v) == "number") then
            argerror(fname, 2, ("opts.%s must be a %s, not a %s"):format(k, want, type(v)))
        end
        return v
    end
    local method = opt("method", "string") or "GET"
    if not tostring(method):match("^[!#$%%&'*+%-.^_`|~%w]+$") then
        argerror(fname, 2, 'opts.method must be a token such as "POST"')
    end
    local timeout = opt("timeout", "number") or 10
    if not (timeout > 0 and timeout <= 1e9) then
        argerror(fname, 2, "opts.timeout must be 0 < seconds <= 1e9")
    end
    local max_body = opt("max_body", "number") or MAX_MESSAGE
    if max_body < 0 then argerror(fname, 2, "opts.max_body must be a byte count >= 0") end
    local redirects = opt("redirects", "number") or 0
    if not (redirects >= 0 and redirects <= 20 and redirects == math.floor(redirects)) then
        argerror(fname, 2, "opts.redirects must be an integer 0..20")
    end
    local headers, n = {}, 0
    for k, v in pairs(opt("headers", "table") or {}) do
        if type(k) ~= "string" then argerror(fname, 2, "opts.headers keys must be header names") end
        if type(v) ~= "string" and type(v) ~= "number" then
            argerror(fname, 2, ("opts.headers['%s'] must be a string"):format(k))
        end
        n = n + 1
        if n > 100 then argerror(fname, 2, "more than 100 opts.headers") end
        if not k:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
            argerror(fname, 2, ("opts.headers: '%s' is not a header name"):format(k))
        end
        v = tostring(v)
        if v:find("[\r\n%z]") then
            argerror(fname, 2, ("opts.headers['%s'] has a CR, LF or NUL"):format(k))
        end
        headers[k] = v
    end
    local req = { url = url, method = tostring(method), headers = headers,
        body = tostring(opt("body", "string") or ""), timeout = timeout,
        verify = opt("verify", "boolean") ~= false, ca = opt("ca", "string"), max_body = max_body,
        redirects = redirects }
    while true do
        local res, err = answer_http(req)
        local loc = res and res.headers.location
        if not (loc and redirects > 0 and REDIRECT_CODES[res.status]) then return res, err end
        -- follow it as the server does (httpc.c): 303, and 301/302 after a POST, as a GET
        redirects = redirects - 1
        local next_url = resolve_location(req.url, loc)
        local function origin(u) -- scheme://host:port, the port written out as httpc compares it
            local o = u:match("^(%a+://[^/?#]+)"):lower()
            if o:match(":%d+$") then return o end
            return o .. (o:match("^https:") and ":443" or ":80")
        end
        local same = origin(next_url) == origin(req.url)
        local to_get = req.method ~= "HEAD" and (res.status == 303
            or ((res.status == 301 or res.status == 302) and req.method == "POST"))
        local h = {}
        for k, v in pairs(req.headers) do
            local lk = k:lower()
            if not (to_get and (lk == "content-length" or lk == "content-type"))
                and not (not same and (lk == "authorization" or lk == "cookie"
                    or lk == "proxy-authorization" or lk == "host")) then
                h[k] = v
            end
        end
        req = { url = next_url, method = to_get and "GET" or req.method, headers = h,
            body = to_get and "" or req.body, timeout = req.timeout, verify = req.verify,
            ca = req.ca, max_body = req.max_body, redirects = redirects }
    end
end

testing.http = {}

-- Answers sb.http.request calls whose URL matches the Lua pattern with
-- fn(req) (req: url, method, headers, body, timeout, verify, ca, max_body), which
-- returns { status = 200, headers = {...}, body = "..." } or nil, err. Patterns
-- are tried in the order they were added. They stay until testing.http.clear().
function testing.http.on(pattern, fn)
    check_string("on", 1, pattern)
    check_function("on", 2, fn)
    http_answers[#http_answers + 1] = { pattern = pattern, fn = fn }
end

-- Forgets every testing.http.on answer.
function testing.http.clear()
    http_answers = {}
end

-- sb.tcp in the fake: the spec plays the service through testing.tcp.on; nothing goes
-- on the network and nothing waits. Checks and results are the server's (script_tcp.c).
local tcp_answers = {}
local FakeSocket = {}
FakeSocket.__index = FakeSocket
FakeSocket.__name = "switchboard.tcp"

local function check_socket(fname, sock)
    if getmetatable(sock) ~= FakeSocket then
        argerror(fname, 1, "switchboard.tcp expected, got " .. typename(sock))
    end
    return sock
end

local function fake_tcp_connect(host, port, opts)
    local fname = "connect"
    host = check_string(fname, 1, host)
    if #host == 0 or #host > 255 or host:find("%z") then
        argerror(fname, 1, "host must be a name or an address")
    end
    if type(port) ~= "number" then argerror(fname, 2, "integer expected, got " .. typename(port)) end
    if math.tointeger(port) == nil or port < 1 or port > 65535 then
        argerror(fname, 2, "port must be 1..65535")
    end
    port = math.tointeger(port)
    if opts ~= nil and type(opts) ~= "table" then
        argerror(fname, 3, "table expected, got " .. typename(opts))
    end
    opts = opts or {}
    local function opt(k, want)
        local v = opts[k]
        if v ~= nil and type(v) ~= want and not (want == "string" and type(v) == "number") then
            argerror(fname, 3, ("opts.%s must be a %s, not a %s"):format(k, want, type(v)))
        end
        return v
    end
    local timeout = opt("timeout", "number") or 10
    if not (timeout > 0 and timeout <= 1e9) then
        argerror(fname, 3, "opts.timeout must be 0 < seconds <= 1e9")
    end
    local peer = { host = host, port = port, tls = opt("tls", "boolean") == true,
        server_name = opt("server_name", "string"), verify = opt("verify", "boolean") ~= false,
        ca = opt("ca", "string"), received = {}, closed = false }
    function peer.close(self) self.closed = true end
    local addr = host .. ":" .. port
    for _, a in ipairs(tcp_answers) do
        if addr:find(a.pattern) then
            local greeting, err = a.fn(nil, peer)
            if greeting == nil and err ~= nil then return nil, tostring(err) end
            return setmetatable({ _fn = a.fn, _peer = peer, _in = tostring(greeting or ""),
                _timeout = timeout, _closed = false }, FakeSocket)
        end
    end
    raise(("switchboard.testing: no t.tcp.on pattern matches %s"):format(addr))
end

function FakeSocket:send(data)
    check_socket("send", self)
    data = check_string("send", 1, data)
    if self._closed or self._err then return nil, self._err or "closed" end
    if self._peer.closed then return nil, "connection reset" end
    self._peer.received[#self._peer.received + 1] = data
    local reply, err = self._fn(data, self._peer)
    if reply == nil and err ~= nil then
        self._err = tostring(err)
        return nil, self._err
    end
    self._in = self._in .. tostring(reply or "")
    return #data
end

-- What the server's receive returns when it would wait: the peer has ended (closed)
-- or not (the wait would time out); the partial is consumed.
local function receive_short(self)
    local partial = self._in
    self._in = ""
    return nil, self._peer.closed and "closed" or "timeout", partial
end

function FakeSocket:receive(pattern)
    check_socket("receive", self)
    local n
    if type(pattern) == "number" then
        n = math.tointeger(pattern)
        if n == nil or n < 0 then argerror("receive", 1, "byte count must be a whole number >= 0") end
    elseif pattern ~= nil and pattern ~= "*l" and pattern ~= "*a" then
        argerror("receive", 1, 'pattern must be a byte count, "*l" or "*a"')
    end
    if self._closed or self._err then return nil, self._err or "closed", "" end
    if n then
        if #self._in < n then return receive_short(self) end
        local data = self._in:sub(1, n)
        self._in = self._in:sub(n + 1)
        return data
    elseif pattern == "*a" then
        if not self._peer.closed then return receive_short(self) end
        local data = self._in
        self._in = ""
        return data
    end
    local eol = self._in:find("\n", 1, true)
    if not eol then return receive_short(self) end
    local line = self._in:sub(1, eol - 1):gsub("\r$", "")
    self._in = self._in:sub(eol + 1)
    return line
end

function FakeSocket:settimeout(seconds)
    check_socket("settimeout", self)
    if type(seconds) ~= "number" then argerror("settimeout", 1, "number expected, got " .. typename(seconds)) end
    if not (seconds > 0 and seconds <= 1e9) then argerror("settimeout", 1, "seconds must be > 0 and <= 1e9") end
    self._timeout = seconds
end

function FakeSocket:close()
    check_socket("close", self)
    if self._closed then return nil, "closed" end
    self._closed = true
    return true
end

FakeSocket.__close = function(self) self._closed = true end

testing.tcp = {}

-- Plays the service of every sb.tcp.connect whose "host:port" matches the Lua pattern
-- (tried in the order added): fn(nil, peer) at connect returns what the service sends
-- first (nil: nothing) or nil, err to refuse ("connection refused"); then
-- fn(data, peer) for each sock:send returns the service's answer (appended to what
-- the script receives) or nil, err (the connection fails with err). peer: host, port,
-- tls, server_name, verify, ca, received (every send, in order), closed; peer:close()
-- ends the connection from the service's side after what it sent. They stay until
-- testing.tcp.clear().
function testing.tcp.on(pattern, fn)
    check_string("on", 1, pattern)
    check_function("on", 2, fn)
    tcp_answers[#tcp_answers + 1] = { pattern = pattern, fn = fn }
end

-- Forgets every testing.tcp.on service.
function testing.tcp.clear()
    tcp_answers = {}
end

-- The fake `switchboard` module of this app.
function App:_module()
    local app = self
    local sb = {}
    function sb.publish(topic, msg, binary)
        topic = check_topic("publish", 1, topic)
        msg = check_size("publish", 2, check_text("publish", 2, msg, binary), app.max_message)
        return app:_publish(topic, msg, binary, nil)
    end
    function sb.subscribers(topic)
        topic = check_topic("subscribers", 1, topic)
        local subs = app.topics[topic]
        return subs and subs.n or 0
    end
    function sb.topics()
        local r = {}
        for topic in pairs(app.topics) do r[#r + 1] = topic end
        table.sort(r)
        return r
    end
    function sb.subscribe(topic, fn)
        topic = check_topic("subscribe", 1, topic)
        check_function("subscribe", 2, fn, fn ~= nil)
        local list = app.script_subs[topic] or {}
        for _, sub in ipairs(list) do
            if sub.fn == fn then return false end
        end
        list[#list + 1] = { topic = topic, fn = fn, version = app.current }
        app.script_subs[topic] = list
        return true
    end
    function sb.unsubscribe(topic, fn)
        topic = check_topic("unsubscribe", 1, topic)
        if fn ~= nil then check_function("unsubscribe", 2, fn) end
        local n = 0
        for _, sub in ipairs(copy(app.script_subs[topic])) do
            if fn == nil or sub.fn == fn then
                app:_unsubscribe_script(sub)
                n = n + 1
            end
        end
        return n > 0
    end
    function sb.presence(topic)
        topic = check_topic("presence", 1, topic)
        local r = {}
        for _, json in pairs(app.presence[topic] or {}) do r[#r + 1] = sb.json.decode(json) end
        return r
    end
    function sb.after(...)
        local seconds, fn = ...
        return app:_timer("after", seconds, fn, false, select("#", ...))
    end
    function sb.every(...)
        local seconds, fn = ...
        return app:_timer("every", seconds, fn, true, select("#", ...))
    end
    function sb.now() return app.clock.now + 0.0 end -- a float, as the server's is
    function sb.sleep(seconds)
        seconds = check_number("sleep", 1, seconds)
        if seconds ~= seconds or seconds < 0 or seconds > 1e9 then
            argerror("sleep", 1, "seconds must be between 0 and 1e9")
        end
        waiting_thread("sleep", true)
        coroutine.yield(SLEEP, seconds)
    end
    function sb.spawn(...)
        local fn = ...
        check_function("spawn", 1, fn, select("#", ...) >= 1)
        local me, call = waiting_thread("spawn", false)
        call = call or me.call
        local th = new_thread(call, fn, table.pack(select(2, ...)))
        local handle = setmetatable({}, ThreadHandle)
        th.handle, handle._thread = handle, th
        return handle
    end
    function sb.wait(handle)
        if getmetatable(handle) ~= ThreadHandle then
            argerror("wait", 1, "thread from sb.spawn expected, got " .. typename(handle))
        end
        local th = handle._thread
        local me, call = waiting_thread("wait", false)
        if th.call ~= (call or me.call) then argerror("wait", 1, "a thread of another handler call") end
        if th.done then
            if th.failed then return false, th.err end
            return true, table.unpack(th.results, 1, th.results.n)
        end
        if th.waiter then argerror("wait", 1, "another thread already waits for it") end
        if th == me then argerror("wait", 1, "a thread cannot wait for itself") end
        waiting_thread("wait", true)
        return coroutine.yield(WAIT, th)
    end
    sb.shared = app.shared
    sb.json = fake_json.new()
    sb.crypto = fake_crypto.crypto()
    sb.jwt = fake_crypto.jwt(sb.json)
    sb.http = { request = fake_http_request }
    sb.tcp = { connect = fake_tcp_connect }
    sb.redis = fake_redis.new(app.redis_url, app.redis)
    sb.history = app.history.api
    sb.node = app.node
    sb.log = {}
    for _, level in ipairs({ "info", "warn", "error" }) do
        sb.log[level] = function(...)
            local parts = table.pack(...)
            if parts.n == 0 then argerror(level, 1, "string expected, got no value") end
            for i = 1, parts.n do parts[i] = tostring(parts[i]) end
            local version = app.current
            app:_log(level, version and version.route.name or "?", table.concat(parts, " ", 1, parts.n))
        end
    end
    return sb
end

-- A fresh environment for one script: its globals stay in it, `require` finds the fake
-- switchboard module, then APP_DIR/lib/, then the normal package path.
function App:_env()
    local app = self
    local env = setmetatable({}, { __index = _G })
    env.require = function(name)
        name = check_string("require", 1, name)
        if name == "switchboard" then return app.module end
        if app.loaded[name] ~= nil then return app.loaded[name] end
        local file = package.searchpath(name, app.lib_path)
        if not file then return require(name) end
        local chunk, err = loadfile(file, "t", app:_env())
        if not chunk then error(err, 2) end
        local res = chunk(name, file)
        if res == nil then res = true end
        app.loaded[name] = res
        return res
    end
    return env
end

-- Loads APP_DIR/<name>.lua ("chat", "api/feed", "index") as a route. Raises when the
-- script does not load, so a broken script fails the spec that loads it.
function App:load(name)
    name = check_string("load", 1, name)
    name = name:gsub("%.lua$", "")
    local route = setmetatable({ app = self, name = name, file = self.dir .. "/" .. name .. ".lua",
        path = route_path(name), errors = {} }, Route)
    local handlers, version = route:_run()
    if not handlers then error(version, 2) end
    route.handlers, route.version = handlers, version
    self.routes[name] = route
    return route
end

-- Advances this app's clock; see Clock:advance.
function App:advance(seconds)
    return self.clock:advance(seconds)
end

-- A publication from elsewhere (another process, a backend's PUBLISH sb:<topic>):
-- delivered to the topic's connections and sb.subscribe functions, as the server
-- delivers one that came through Redis. Returns the number of connections.
function App:publish(topic, msg, binary)
    topic = check_topic("publish", 1, topic)
    msg = check_text("publish", 2, msg, binary)
    local n = self:_publish(topic, msg, binary, nil)
    table.remove(self.published) -- not the app's own publish
    self:_settle()
    return n
end

-- Returns the number of subscribers of `topic`, as switchboard.subscribers does.
function App:subscribers(topic)
    return self.module.subscribers(topic)
end

-- Creates an app for directory `dir` (default "scripts"). opts.strict = true makes a
-- raising handler fail the spec at once instead of only closing its connection;
-- opts.max_message is the server's --max-message (default 16 MiB); opts.redis is its
-- --redis URL (sb.redis.url; nil by default). sb.redis is an in-memory Redis of strings
-- (switchboard.testing.redis); app.redis[url] holds each URL's keys. sb.history keeps
-- topic history as the server does in process (switchboard.testing.history).
function testing.app(dir, opts)
    dir = (opt_string("app", 1, dir, "scripts")):gsub("/$", "")
    opts = opts or {}
    local app = setmetatable({
        dir = dir, lib_path = dir .. "/lib/?.lua;" .. dir .. "/lib/?/init.lua",
        routes = {}, topics = {}, conns = {}, pending_closes = {}, loaded = {},
        script_subs = {}, sub_queue = {}, presence = {},
        shared = {}, published = {}, logs = {}, clock = new_clock(), strict = opts.strict or false,
        node = opts.node or "0000000000000001",
        max_message = opts.max_message or MAX_MESSAGE,
        redis_url = opts.redis, redis = {},
    }, App)
    app.history = fake_history.new(app)
    app.module = app:_module()
    current_clock = app.clock
    return app
end

-- Loads one script file as a route of a new app rooted at the file's folder.
function testing.load(path, opts)
    path = check_string("load", 1, path)
    local dir, name = path:match("^(.*)/([^/]+)$")
    local app = testing.app(dir or ".", opts)
    return app:load(name or path)
end

return testing
