-- switchboard.testing.redis: the `redis` table of the fake switchboard module, an
-- in-memory Redis for specs: strings (GET, SET, INCR, INCRBY, DECR, DECRBY, DEL,
-- EXISTS), PING and ECHO, answered at once (nothing waits). Other commands return
-- nil, "redis: ERR unknown command ..." as Redis would; for the rest of Redis, start
-- a real redis-server in the spec and run the app under the server.
-- Replies and errors are the server's: integers as integers, a status as a string,
-- a missing key as nil, a wrong type as nil, "redis: WRONGTYPE ...".
local fake = {}

local _, argerror = require("switchboard.testing.errors").here()

local function typename(v)
    if v == nil then return "no value" end
    return type(v)
end

local NOT_INT = "redis: ERR value is not an integer or out of range"

local function arity(name)
    return ("redis: ERR wrong number of arguments for '%s' command"):format(name:lower())
end

-- store: key -> string
local function incr(store, key, by)
    local v = store[key] or "0"
    local n = math.tointeger(tonumber(v))
    if not n or tostring(n) ~= v then return nil, NOT_INT end
    n = n + by
    store[key] = tostring(n)
    return n
end

local COMMANDS = {
    PING = function(_, a) return a[1] or "PONG" end,
    ECHO = function(_, a) if #a ~= 1 then return nil, arity("echo") end return a[1] end,
    GET = function(st, a) if #a ~= 1 then return nil, arity("get") end return st[a[1]] end,
    SET = function(st, a)
        if #a ~= 2 then return nil, "redis: ERR syntax error (the fake SET takes no options)" end
        st[a[1]] = a[2]
        return "OK"
    end,
    INCR = function(st, a) if #a ~= 1 then return nil, arity("incr") end return incr(st, a[1], 1) end,
    DECR = function(st, a) if #a ~= 1 then return nil, arity("decr") end return incr(st, a[1], -1) end,
    INCRBY = function(st, a)
        local by = math.tointeger(tonumber(a[2]))
        if #a ~= 2 then return nil, arity("incrby") end
        if not by then return nil, NOT_INT end
        return incr(st, a[1], by)
    end,
    DECRBY = function(st, a)
        local by = math.tointeger(tonumber(a[2]))
        if #a ~= 2 then return nil, arity("decrby") end
        if not by then return nil, NOT_INT end
        return incr(st, a[1], -by)
    end,
    DEL = function(st, a)
        if #a < 1 then return nil, arity("del") end
        local n = 0
        for _, k in ipairs(a) do
            if st[k] ~= nil then n, st[k] = n + 1, nil end
        end
        return n
    end,
    EXISTS = function(st, a)
        if #a < 1 then return nil, arity("exists") end
        local n = 0
        for _, k in ipairs(a) do if st[k] ~= nil then n = n + 1 end end
        return n
    end,
}

local Conn = {}
Conn.__index = Conn

local function check_self(fname, self)
    if getmetatable(self) ~= Conn then
        argerror(fname, 1, "redis connection expected, got " .. typename(self))
    end
end

function Conn:call(...)
    check_self("call", self)
    local n = select("#", ...)
    if n == 0 then argerror("call", 1, "string expected, got no value") end
    local args = {}
    for i = 1, n do
        local v = select(i, ...)
        if type(v) ~= "string" and type(v) ~= "number" then
            argerror("call", i, "string or number expected, got " .. typename(v))
        end
        args[i] = tostring(v)
    end
    if self.closed then return nil, "closed" end
    local name = table.remove(args, 1):upper()
    local cmd = COMMANDS[name]
    if not cmd then
        return nil, ("redis: ERR unknown command '%s' (switchboard.testing's fake Redis)"):format(name)
    end
    local v, err = cmd(self.store, args)
    if err then return nil, err end
    return v
end

function Conn:close()
    check_self("close", self)
    self.closed = true
    return true
end

function Conn:settimeout(seconds)
    check_self("settimeout", self)
    if type(seconds) ~= "number" then argerror("settimeout", 1, "number expected, got " .. typename(seconds)) end
    if not (seconds > 0 and seconds <= 1e9) then
        argerror("settimeout", 1, "timeout must be above 0 and at most 1e9 seconds")
    end
end

-- The `redis` table for an app: url is its --redis (or nil); stores[url] is the
-- in-memory data of each URL (a table of key -> string, for specs to look at).
function fake.new(url, stores)
    local redis = { url = url }
    function redis.connect(u, opts)
        if u ~= nil and type(u) ~= "string" and type(u) ~= "number" then
            argerror("connect", 1, "string expected, got " .. typename(u))
        end
        u = u and tostring(u) or url
        if not u then argerror("connect", 1, "no URL given and the server has no --redis") end
        if not u:match("^redis://[^:/]+") then
            argerror("connect", 1, u .. ": expected redis://host:port[/db]")
        end
        if opts ~= nil and type(opts) ~= "table" then
            argerror("connect", 2, "table expected, got " .. typename(opts))
        end
        local key = u:gsub("/0$", ""):gsub("/$", "")
        stores[key] = stores[key] or {}
        return setmetatable({ store = stores[key] }, Conn)
    end
    return redis
end

return fake
