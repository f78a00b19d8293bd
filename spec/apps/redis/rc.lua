-- switchboard.redis driven over plain HTTP and WebSocket by spec/e2e/redis_client_spec.lua.
--   POST /rc {"url":..., "timeout":..., "cmds":[["SET","k","v"], ...], "keep":true}
--     -> {"results":[{"v":..., "err":..., "type":...}, ...]} or {"connect_err":...}
--   POST /rc {"many":N, "key":K}   -> N timers, each connect + INCR K + close
--   GET  /rc?many=status           -> {"done":..., "errors":[...]}
--   GET  /rc?misuse=NAME           -> the error a misuse raises
--   WebSocket: each message INCRs the message's text and sends the count back.
local sb = require "switchboard"
local rc = {}

local many = { done = 0, errors = {} }

local function json(t)
    return { status = 200, headers = { ["content-type"] = "application/json" },
        body = sb.json.encode(t) }
end

local function run(spec)
    local opts = spec.timeout and { timeout = spec.timeout } or nil
    local red, err = sb.redis.connect(spec.url, opts)
    if not red then return { connect_err = err } end
    if spec.settimeout then red:settimeout(spec.settimeout) end
    local out = {}
    for i, cmd in ipairs(spec.cmds or {}) do
        local v, e = red:call(table.unpack(cmd))
        out[i] = { v = v, err = e, type = type(v) }
    end
    if not spec.keep then red:close() end
    if spec.after_close then -- a closed red answers "closed"
        local v, e = red:call("PING")
        out[#out + 1] = { v = v, err = e, type = type(v) }
    end
    return { results = out, default_url = sb.redis.url }
end

local misuse = {
    call_table = function(red) return red:call("GET", {}) end,
    call_none = function(red) return red:call() end,
    settimeout = function(red) return red:settimeout(-1) end,
    connect_url = function() return sb.redis.connect("http://x") end,
    connect_opts = function() return sb.redis.connect(nil, 5) end,
    -- two light threads on one connection: the second call raises
    shared = function(red)
        local th = sb.spawn(function() return red:call("BLPOP", "never", "1") end)
        sb.sleep(0.1) -- the BLPOP is in flight
        local ok, err = pcall(red.call, red, "PING")
        sb.wait(th)
        if not ok then error(err, 0) end
    end,
}

function rc.request(req)
    local q = req.query
    if q.many == "status" then return json(many) end
    if q.misuse then
        local red = sb.redis.connect()
        local ok, err = pcall(misuse[q.misuse], red)
        red:close()
        return json({ ok = ok, err = tostring(err) })
    end
    local spec = sb.json.decode(req.body)
    if spec.many then
        many = { done = 0, errors = {} }
        for _ = 1, spec.many do
            sb.after(0, function()
                local red, err = sb.redis.connect()
                local v
                if red then
                    v, err = red:call("INCR", spec.key)
                    red:close()
                end
                if not v then many.errors[#many.errors + 1] = err end
                many.done = many.done + 1
            end)
        end
        return json({ started = spec.many })
    end
    return json(run(spec))
end

function rc.message(ws, msg)
    local red = assert(sb.redis.connect())
    local n, err = red:call("INCR", msg)
    red:close()
    ws:send(tostring(n or err))
end

return rc
