-- switchboard.testing.history: topic history for the fake switchboard module, as
-- the server keeps it in process (no --redis): sb.history.keep and read, the
-- positions and format of a publish on a history topic, and ws:subscribe's
-- recovery ({ since =, epoch = }). Time is the app's fake clock (ttl); a replay is
-- delivered at once (the fake has no socket to pace it by).
local fake = {}

local _, argerror = require("switchboard.testing.errors").here()

local function typename(v)
    if v == nil then return "no value" end
    return type(v)
end

local H = {}
H.__index = H

-- app: the fake app (its clock, logs, max_message); node: a string for epochs.
function fake.new(app)
    local h = setmetatable({ app = app, rules = {}, streams = {}, made = 0,
        node = ("%08x"):format(math.random(0, 0x7fffffff)), in_format = false }, H)
    h.api = {
        keep = function(...) return h:keep(...) end,
        read = function(...) return h:read(...) end,
    }
    return h
end

function H:keep(prefix, opts)
    if type(prefix) ~= "string" then argerror("keep", 1, "string expected, got " .. typename(prefix)) end
    if opts ~= nil and type(opts) ~= "table" then
        argerror("keep", 2, "table expected, got " .. typename(opts))
    end
    opts = opts or {}
    local size = opts.size or 100
    if math.type(size) ~= "integer" and not (type(size) == "number" and size == math.floor(size))
        or size < 1 or size > 1000000 then
        argerror("keep", 2, "opts.size must be an integer from 1 to 1e6")
    end
    local ttl = opts.ttl or 3600
    if type(ttl) ~= "number" or ttl ~= ttl or ttl <= 0 or ttl > 1e9 then
        argerror("keep", 2, "opts.ttl must be 0 < seconds <= 1e9")
    end
    if opts.format ~= nil and type(opts.format) ~= "function" then
        argerror("keep", 2, "opts.format must be a function, not a " .. type(opts.format))
    end
    self.rules[prefix] = { prefix = prefix, size = math.tointeger(size), ttl = ttl,
        format = opts.format }
end

-- The rule of the longest prefix of topic, or nil.
function H:match(topic)
    local best
    for prefix, r in pairs(self.rules) do
        if topic:sub(1, #prefix) == prefix and (not best or #prefix > #best.prefix) then best = r end
    end
    return best
end

function H:_stream(topic, rule)
    local st = self.streams[topic]
    if not st then
        self.made = self.made + 1
        st = { seq = 0, items = {}, epoch = ("%s.%x"):format(self.node, self.made),
            rule = rule }
        self.streams[topic] = st
    end
    st.rule = rule
    local now = self.app.clock.now
    while st.items[1] and st.items[1].expires <= now do table.remove(st.items, 1) end
    return st
end

-- The frame of a publication: format's result, or the message when there is none
-- or it fails (logged, as the server does).
function H:_format(rule, topic, msg, binary, pos, epoch)
    if not rule.format then return msg, binary end
    self.in_format = true
    local ok, f, fbin = pcall(rule.format, msg, pos, epoch, binary)
    self.in_format = false
    local why
    if not ok then
        why = tostring(f)
    elseif type(f) ~= "string" then
        why = "it returned " .. typename(f) .. " (string expected)"
    else
        if fbin == nil then fbin = binary end
        if not fbin and not utf8.len(f) then
            why = "it returned text that is not valid UTF-8 (return it with true as binary)"
        else
            return f, fbin and true or false
        end
    end
    self.app:_log("error", "history", ("history format of '%s' failed on %s at position %d: %s; "
        .. "the message is sent as it was published"):format(rule.prefix, topic, pos, why))
    return msg, binary
end

-- A publish on a topic with rule: returns the number of subscribers it was queued on.
function H:publish(rule, topic, msg, binary, sender, subs)
    if self.in_format then
        error(("publish: cannot publish to a history topic (%s) from a history format"):format(topic), 3)
    end
    local st = self:_stream(topic, rule)
    st.seq = st.seq + 1
    local frame, fbin = self:_format(rule, topic, msg, binary, st.seq, st.epoch)
    st.items[#st.items + 1] = { pos = st.seq, msg = msg, binary = binary, frame = frame,
        fbinary = fbin, expires = self.app.clock.now + rule.ttl }
    while #st.items > rule.size do table.remove(st.items, 1) end
    local n = 0
    for _, conn in ipairs(subs) do
        if conn ~= sender and conn.state == "open" then
            conn.client.sent[#conn.client.sent + 1] = { data = frame, binary = fbin }
            n = n + 1
        end
    end
    return n
end

function H:read(topic, opts)
    if type(topic) ~= "string" then argerror("read", 1, "string expected, got " .. typename(topic)) end
    if topic == "" then argerror("read", 1, "topic must not be empty") end
    if opts ~= nil and type(opts) ~= "table" then
        argerror("read", 2, "table expected, got " .. typename(opts))
    end
    opts = opts or {}
    local since = opts.since
    if since ~= nil and (math.tointeger(tonumber(since)) == nil or tonumber(since) < 0) then
        argerror("read", 2, "opts.since must be an integer >= 0")
    end
    local limit = opts.limit
    if limit ~= nil and (math.tointeger(limit) == nil or limit < 1) then
        argerror("read", 2, "opts.limit must be an integer >= 1")
    end
    local rule = self:match(topic)
    if not rule or not self.streams[topic] then return {} end -- a read makes no stream
    local st = self:_stream(topic, rule)
    local after = math.tointeger(tonumber(since or 0))
    local list = {}
    for _, it in ipairs(st.items) do
        if it.pos > after then list[#list + 1] = { pos = it.pos, msg = it.msg, binary = it.binary } end
    end
    if limit and #list > limit then
        if since ~= nil then
            list = { table.unpack(list, 1, limit) }
        else
            list = { table.unpack(list, #list - limit + 1) }
        end
    end
    return list, st.epoch
end

-- ws:subscribe(topic, { since =, epoch = }) for conn: returns recovered, epoch.
function H:subscribe(conn, topic, opts, subscribe)
    local rule = self:match(topic)
    if not rule then
        subscribe()
        return false
    end
    local st = self:_stream(topic, rule)
    if not subscribe() then return false, st.epoch end
    local since = math.tointeger(tonumber(opts.since))
    local first = st.items[1] and st.items[1].pos or st.seq + 1
    local ok = since ~= nil and since >= 0 and type(opts.epoch) == "string"
        and opts.epoch == st.epoch and since <= st.seq and since + 1 >= first
    local after = ok and since or 0
    for _, it in ipairs(st.items) do
        if it.pos > after then
            conn.client.sent[#conn.client.sent + 1] = { data = it.frame, binary = it.fbinary }
        end
    end
    return ok, st.epoch
end

return fake
