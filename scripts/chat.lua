-- The sample chat: nicknames, rooms with history, presence, typing, private messages.
-- Protocol: JSON text messages with a "type" (see README, "Chat: JSON protocol").
-- A room's messages are the publications of its topic "chat:<room>", kept by the
-- server (switchboard.history): a message's id is its position there, the same in every
-- process, and a page that comes back asks for what it missed since the last id it saw.
-- Joins, leaves, renames and typing go to "room:<room>", which keeps nothing.
-- Everything else lives in switchboard.shared or ws.data, so a hot reload of this file
-- keeps rooms and who is where.
local sb = require "switchboard"
local validate = require "chat.validate"
local bucket = require "chat.bucket"
local origin = require "chat.origin"
local claims = require "chat.claims"

local json = sb.json

local HISTORY = 100          -- messages a room keeps and replays on join
local HISTORY_TTL = 24 * 3600 -- seconds a message is kept
local MAX_FRAME = 4096       -- bytes of one client message
local BURST, RATE = 10, 5    -- rate limit: a burst of 10 messages, then 5 per second
local TYPING_BURST, TYPING_RATE = 5, 1 -- typing flags have their own budget; past it they are dropped
local MAX_JOINED = 10        -- rooms one connection may be in at once
local MAX_PER_CLIENT = 20    -- distinct rooms the connections of one source address may be in
local MAX_ROOMS = 100        -- rooms the server keeps (empty ones are evicted first)
local MEMBERS_EVERY = 5      -- seconds between checks of each room's members on every process
local LOBBY = "lobby"
local ROOMS_TOPIC = "rooms"  -- every connection: room list updates
-- Pages on other origins that may open the chat (lower-case, exact), e.g.
-- { ["https://chat.example.com"] = true }. Without them, only a page served
-- from the Host the browser connects to (this server's public/) may; clients
-- that send no Origin (not browsers) always may.
local ALLOWED_ORIGINS = {}

local state = sb.shared.chat
if not state then
    state = { rooms = {}, online = 0 }
    sb.shared.chat = state
end
state.clients = state.clients or {} -- source address -> rooms its connections are in

local function room_topic(name) return "room:" .. name end
-- This process's members of a room: a member list goes to them alone.
local function local_topic(name) return "room:" .. name .. "@" .. sb.node end
local KEPT = "chat:"
local function kept_topic(name) return KEPT .. name end

-- What a room message looks like on the wire, built once per message per process from
-- what `say` published ({"room":…,"nick":…,"text":…,"ts":…}): the position is its id,
-- the epoch says which history the id belongs to. Joins send the same frames. nil for a
-- publication that is not a JSON object with a first key (a backend's plain text), which
-- then goes out as it was published and is left out of joins.
local function message_frame(msg, pos, epoch)
    if not msg:find('^{%s*"') then return nil end
    local ok, t = pcall(json.decode, msg)
    if not ok or type(t) ~= "table" then return nil end
    return '{"type":"message","id":' .. math.tointeger(pos) .. ',"epoch":' .. json.encode(epoch) .. ","
        .. msg:sub(2)
end

sb.history.keep(KEPT, { size = HISTORY, ttl = HISTORY_TTL, format = function(msg, pos, epoch)
    return message_frame(msg, pos, epoch) or msg
end })
-- ws.id is unique within one process; with --workers or --redis the topic
-- must also name the process, or a private message could reach a namesake id.
local function user_topic(id, node) return "user:" .. (node or sb.node) .. ":" .. id end

local function send(ws, msg) ws:send(json.encode(msg)) end

-- An error answers the request being handled: its `ref` and `room` (ws.data.ref and
-- ws.data.req_room, set by chat.message) come back with it, so a page knows which of its
-- messages failed and where.
local function fail(ws, code, message, request, retry_after)
    local data = ws.data
    send(ws, { type = "error", code = code, message = message, request = request, ref = data.ref,
        room = data.req_room, retry_after = retry_after })
end

local RETRY_UNAVAILABLE = 2 -- seconds a page waits before sending again what could not be stored

-- The address part of ws.remote ("addr:port", "[v6]:port").
local function address(remote)
    return remote:match("^%[(.*)%]:%d+$") or remote:match("^(.*):%d+$") or remote
end

-- Room slots one source address holds: how many of its connections are in each room.
local function client_rooms(addr)
    local c = state.clients[addr]
    if not c then
        c = { rooms = {}, count = 0 }
        state.clients[addr] = c
    end
    return c
end

local function client_enter(addr, name)
    local c = client_rooms(addr)
    local n = c.rooms[name]
    if not n then c.count = c.count + 1 end
    c.rooms[name] = (n or 0) + 1
end

local function client_leave(addr, name)
    local c = state.clients[addr]
    local n = c and c.rooms[name]
    if not n then return end
    if n > 1 then c.rooms[name] = n - 1 return end
    c.rooms[name] = nil
    c.count = c.count - 1
    if c.count == 0 then state.clients[addr] = nil end
end

local function get_room(name)
    return state.rooms[name]
end

-- Returns the room `name`, creating it (evicting the stalest empty room when the server
-- already keeps MAX_ROOMS), or nil when every room is in use.
local function ensure_room(name)
    local room = state.rooms[name]
    if room then return room end
    local count, stalest = 0, nil
    for _, r in pairs(state.rooms) do
        count = count + 1
        if r.count == 0 and r.name ~= LOBBY and (not stalest or r.active < stalest.active) then stalest = r end
    end
    if count >= MAX_ROOMS then
        if not stalest then return nil end
        state.rooms[stalest.name] = nil
    end
    room = { name = name, members = {}, count = 0, active = sb.now() }
    state.rooms[name] = room
    return room
end

ensure_room(LOBBY)

-- The room list: the lobby and every room with someone in it, busiest first.
local function room_list()
    local list = {}
    for _, r in pairs(state.rooms) do
        if r.count > 0 or r.name == LOBBY then list[#list + 1] = { name = r.name, members = r.count } end
    end
    table.sort(list, function(a, b)
        if a.members ~= b.members then return a.members > b.members end
        return a.name < b.name
    end)
    return json.array(list)
end

-- The nicks in a room: its presence in every process (`infos`, from sb.presence), or
-- only this process's members when that is nil (Redis away).
local function member_list(room, infos)
    local list, seen = {}, {}
    local function add(nick)
        if type(nick) == "string" and not seen[nick:lower()] then
            seen[nick:lower()] = true
            list[#list + 1] = nick
        end
    end
    for _, m in pairs(room.members) do add(m.nick) end
    for _, p in ipairs(infos or {}) do add(p.nick) end
    table.sort(list, function(a, b) return a:lower() < b:lower() end)
    return json.array(list)
end

-- Member counts change in bursts (a page of people reconnecting after a restart):
-- coalesce the room list broadcast into one message per quarter second.
local rooms_pending = false
local function rooms_changed()
    if rooms_pending then return end
    rooms_pending = true
    sb.after(0.25, function()
        rooms_pending = false
        sb.publish(ROOMS_TOPIC, json.encode({ type = "rooms", rooms = room_list() }))
    end)
end

-- Takes ws out of the room and tells the others. The caller has already unsubscribed
-- ws from the room's topic (or the server has, when it closed).
local function leave_room(ws, room)
    local data = ws.data
    local m = room.members[data.nick:lower()]
    if m and m.id == ws.id then room.members[data.nick:lower()] = nil end
    room.count = room.count - 1
    room.active = sb.now()
    data.rooms[room.name] = nil
    data.joined = data.joined - 1
    client_leave(data.addr, room.name)
    sb.publish(room_topic(room.name), json.encode({ type = "leave", room = room.name, nick = data.nick,
        ts = os.time() }))
    rooms_changed()
    claims.release(room.name, data.nick, claims.owner(ws.id)) -- waits with --redis: last
end

-- A process that dies sends no `leave` for its members; they leave the room's presence
-- (--presence-ttl). Every few seconds each process reads the presence of the rooms it has
-- members in, and when a list changed since the last look, sends it to them as `members`.
sb.every(MEMBERS_EVERY, function()
    local names, mine = {}, {}
    for name, room in pairs(state.rooms) do
        if room.count > 0 then names[#names + 1] = name end
        for _, m in pairs(room.members) do mine[#mine + 1] = { name, m.nick, claims.owner(m.id) } end
    end
    -- this process's nick claims stay alive (and come back after Redis lost them);
    -- one whose member left while this waited is given back again
    claims.refresh(mine)
    for _, c in ipairs(mine) do
        local room = state.rooms[c[1]]
        local m = room and room.members[c[2]:lower()]
        if not (m and claims.owner(m.id) == c[3]) then claims.release(c[1], c[2], c[3]) end
    end
    for _, name in ipairs(names) do
        local infos = sb.presence(room_topic(name)) -- waits with --redis
        local room = state.rooms[name]
        if infos and room and room.count > 0 then
            local list = member_list(room, infos)
            local key = table.concat(list, " ")
            if key ~= room.seen_members then
                room.seen_members = key
                sb.publish(local_topic(name), json.encode({ type = "members", room = name, members = list }))
            end
        end
    end
end)

-- Client requests, by type. Each gets the ws, the decoded message, and answers
-- with messages or with fail(); none may raise on bad input.
local handle = {}

-- The info ({ nick, node, id }) of whoever but ws has `nick` (any case) in `infos`
-- (what sb.presence returned), or nil.
local function present(infos, ws, nick)
    local lower = nick:lower()
    for _, p in ipairs(infos or {}) do
        if type(p.nick) == "string" and p.nick:lower() == lower and not (p.node == sb.node and p.id == ws.id) then
            return p
        end
    end
end

-- The same for room `name`: this process's members, then every process's presence
-- (with --redis this waits; when Redis is away only this process's members are known).
local function someone(ws, name, nick)
    local local_member = get_room(name) and get_room(name).members[nick:lower()]
    if local_member and local_member.id ~= ws.id then
        return { nick = local_member.nick, node = sb.node, id = local_member.id }
    end
    return present(sb.presence(room_topic(name)), ws, nick)
end

-- What ws shows of itself in a room's presence (its nick, and where a private message
-- finds it).
local function presence_of(ws)
    return { presence = { nick = ws.data.nick, node = sb.node, id = ws.id } }
end

function handle.nick(ws, msg)
    local nick, code, err = validate.nick(msg.nick)
    if not nick then return fail(ws, code, err, "nick") end
    local data = ws.data
    local old = data.nick
    if old == nick then return send(ws, { type = "nick", nick = nick }) end
    for name in pairs(data.rooms) do
        if someone(ws, name, nick) then
            return fail(ws, "nick_taken", ("%s is already taken in #%s"):format(nick, name), "nick")
        end
    end
    -- claimed in every room at once (across processes), then checked again after the
    -- waits: a member of this process may have taken it meanwhile
    local me, taken = claims.owner(ws.id), {}
    local function undo()
        for _, name in ipairs(taken) do claims.release(name, nick, me) end
    end
    for name in pairs(data.rooms) do
        if not claims.take(name, nick, me) then
            undo()
            return fail(ws, "nick_taken", ("%s is already taken in #%s"):format(nick, name), "nick")
        end
        taken[#taken + 1] = name
    end
    for name in pairs(data.rooms) do
        local m = get_room(name).members[nick:lower()]
        if m and m.id ~= ws.id then
            undo()
            return fail(ws, "nick_taken", ("%s is already taken in #%s"):format(nick, name), "nick")
        end
    end
    if old and old:lower() ~= nick:lower() then
        for name in pairs(data.rooms) do claims.release(name, old, me) end
    end
    data.nick = nick
    send(ws, { type = "nick", nick = nick })
    for name in pairs(data.rooms) do
        local room = get_room(name)
        room.members[old:lower()] = nil
        room.members[nick:lower()] = { nick = nick, id = ws.id }
        ws:subscribe(room_topic(name), presence_of(ws))
        sb.publish(room_topic(name), json.encode({ type = "rename", room = name, from = old, to = nick,
            ts = os.time() }))
    end
end

-- What a joiner gets of a room's history: the frames of the messages after `since` when
-- the page saw everything up to it in this `epoch` (recovered), else the last HISTORY.
-- Returns frames, recovered, epoch, and a function that subscribes ws from the last of
-- them on (call it once `joined` is sent): a message published in the meantime comes
-- next, live, after `joined`: no gap, no duplicate.
local function recover(ws, name, since, want_epoch)
    local topic = kept_topic(name)
    local items, epoch, recovered = nil, nil, false
    if since and want_epoch then
        items, epoch = sb.history.read(topic, { since = since, limit = HISTORY })
        if items and epoch == want_epoch then
            if items[1] then
                recovered = items[1].pos == since + 1
            else -- nothing after since: is since the latest position, or from the future?
                local latest = sb.history.read(topic, { limit = 1 })
                recovered = latest ~= nil and (latest[1] and latest[1].pos or 0) == since
            end
        end
    end
    if not recovered then items, epoch = sb.history.read(topic, { limit = HISTORY }) end
    if not items then -- history unreachable (Redis away): live only
        items, epoch = {}, nil
    elseif not epoch then
        -- a room nobody ever wrote in or joined (in process): subscribing starts its history,
        -- and nothing can be published before joined goes out (nothing here waits)
        local _, e = ws:subscribe(topic, { since = 0, epoch = "" })
        return {}, false, e, function() end
    end
    local frames, upto = {}, recovered and since or 0
    for _, it in ipairs(items) do
        frames[#frames + 1] = message_frame(it.msg, it.pos, epoch)
        upto = it.pos
    end
    local function go_live()
        if epoch then
            ws:subscribe(topic, { since = upto, epoch = epoch })
        else
            ws:subscribe(topic)
        end
    end
    return frames, recovered, epoch, go_live
end

function handle.join(ws, msg)
    local data = ws.data
    local name, code, err = validate.room(msg.room)
    if not name then return fail(ws, code, err, "join") end
    -- since and epoch: what the page saw of this room before; anything malformed is
    -- ignored (the page gets the last messages), never an error
    local since = type(msg.since) == "number" and math.tointeger(msg.since) or nil
    if since and since < 0 then since = nil end
    local want_epoch = type(msg.epoch) == "string" and #msg.epoch <= 64 and msg.epoch or nil
    if not data.nick then return fail(ws, "nick_required", "choose a nick before joining a room", "join") end
    if data.rooms[name] then return fail(ws, "already_joined", ("you are already in #%s"):format(name), "join") end
    if data.joined >= MAX_JOINED then
        return fail(ws, "too_many_rooms", ("you can be in at most %d rooms"):format(MAX_JOINED), "join")
    end
    -- the nick is unique in the room across every process (presence; this waits with
    -- --redis); what this process knows is checked after the wait
    local infos = sb.presence(room_topic(name)) -- nil when Redis is away: this process's members only
    if present(infos, ws, data.nick) then
        return fail(ws, "nick_taken", ("%s is already taken in #%s"):format(data.nick, name), "join")
    end
    -- the claim makes it atomic: of two joins with one nick at the same moment on two
    -- processes (both saw no one in the presence), one gets it (waits with --redis)
    local me = claims.owner(ws.id)
    if not claims.take(name, data.nick, me) then
        return fail(ws, "nick_taken", ("%s is already taken in #%s"):format(data.nick, name), "join")
    end
    -- checked after the waits: what this process knows may have changed meanwhile
    local function refuse(why, message)
        claims.release(name, data.nick, me)
        return fail(ws, why, message, "join")
    end
    local client = client_rooms(data.addr)
    if not client.rooms[name] and client.count >= MAX_PER_CLIENT then
        return refuse("too_many_rooms", ("your address is in %d rooms already"):format(MAX_PER_CLIENT))
    end
    local existing = get_room(name)
    local holder = existing and existing.members[data.nick:lower()]
    if holder and holder.id ~= ws.id then
        return refuse("nick_taken", ("%s is already taken in #%s"):format(data.nick, name))
    end
    local room = ensure_room(name)
    if not room then return refuse("rooms_full", "the server has no room for another room") end
    room.members[data.nick:lower()] = { nick = data.nick, id = ws.id }
    room.count = room.count + 1
    room.active = sb.now()
    data.rooms[name] = true
    data.joined = data.joined + 1
    client_enter(data.addr, name)
    ws:subscribe(room_topic(name), presence_of(ws))
    ws:subscribe(local_topic(name))
    local members = member_list(room, infos)
    local history, recovered, epoch, go_live = recover(ws, name, since, want_epoch)
    -- The frame is put together as text: the history's frames are the ones live
    -- subscribers got, byte for byte.
    ws:send('{"type":"joined","room":' .. json.encode(name) .. ',"members":' .. json.encode(members)
        .. ',"recovered":' .. tostring(recovered) .. ',"epoch":' .. json.encode(epoch or json.null)
        .. ',"history":[' .. table.concat(history, ",") .. "]}")
    go_live()
    ws:publish(room_topic(name), json.encode({ type = "join", room = name, nick = data.nick, ts = os.time() }))
    rooms_changed()
end

-- Returns the room `msg.room` if the sender is in it, or answers the error.
local function my_room(ws, msg, request)
    local name, code, err = validate.room(msg.room)
    if not name then return fail(ws, code, err, request) end
    if not ws.data.rooms[name] then
        return fail(ws, "not_in_room", ("you are not in #%s"):format(name), request)
    end
    return get_room(name)
end

function handle.leave(ws, msg)
    local room = my_room(ws, msg, "leave")
    if not room then return end
    ws:unsubscribe(room_topic(room.name))
    ws:unsubscribe(kept_topic(room.name))
    ws:unsubscribe(local_topic(room.name))
    leave_room(ws, room)
    send(ws, { type = "left", room = room.name })
end

function handle.say(ws, msg)
    local room = my_room(ws, msg, "say")
    if not room then return end
    local text, code, err = validate.text(msg.text)
    if not text then return fail(ws, code, err, "say") end
    room.active = sb.now()
    local ok, why = sb.publish(kept_topic(room.name), json.encode({ room = room.name, nick = ws.data.nick,
        text = text, ts = os.time() }))
    if not ok then -- with --redis, Redis is away: the message got no id and went nowhere
        sb.log.warn("say in #" .. room.name .. " not stored: " .. tostring(why))
        return fail(ws, "unavailable", "the message could not be stored right now; it is sent again shortly",
            "say", RETRY_UNAVAILABLE)
    end
end

function handle.typing(ws, msg)
    local room = my_room(ws, msg, "typing")
    if not room then return end
    if type(msg.typing) ~= "boolean" then return fail(ws, "bad_field", "typing must be true or false", "typing") end
    ws:publish(room_topic(room.name), json.encode({ type = "typing", room = room.name, nick = ws.data.nick,
        typing = msg.typing }))
end

function handle.pm(ws, msg)
    local room = my_room(ws, msg, "pm")
    if not room then return end
    local to, _, why = validate.nick(msg.to)
    if not to then return fail(ws, "bad_field", "to: " .. why, "pm") end
    local text, code, err = validate.text(msg.text)
    if not text then return fail(ws, code, err, "pm") end
    if to:lower() == ws.data.nick:lower() then
        return fail(ws, "bad_field", "you cannot send a private message to yourself", "pm")
    end
    -- whoever has that nick in the room, on any process: its own topic reaches it there
    local target = someone(ws, room.name, to)
    local id = target and math.tointeger(target.id)
    if not id or type(target.node) ~= "string" then
        return fail(ws, "no_such_user", ("nobody called %s is in #%s"):format(to, room.name), "pm")
    end
    local out = json.encode({ type = "pm", room = room.name, from = ws.data.nick, to = target.nick, text = text,
        ts = os.time() })
    sb.publish(user_topic(id, target.node), out)
    ws:send(out)
end

function handle.rooms(ws)
    send(ws, { type = "rooms", rooms = room_list() })
end

function handle.ping(ws)
    send(ws, { type = "pong" })
end

local chat = {}

-- Browsers offer "chat.v1"; other clients may offer nothing. A browser on a page
-- of another site is refused: see chat.origin.
function chat.upgrade(req)
    if not origin.allowed(req.origin, req.headers.host, ALLOWED_ORIGINS) then
        return false, 403, "this chat only accepts connections from its own pages\n"
    end
    for _, p in ipairs(req.protocols) do
        if p == "chat.v1" then return true, { protocol = p } end
    end
    return true
end

function chat.open(ws)
    local data = ws.data
    data.rooms, data.joined = {}, 0
    data.bucket = bucket.new(BURST, sb.now())
    data.typing_bucket = bucket.new(TYPING_BURST, sb.now())
    data.addr = address(ws.remote)
    state.online = state.online + 1
    ws:subscribe(ROOMS_TOPIC)
    ws:subscribe(user_topic(ws.id))
    send(ws, { type = "welcome", id = ws.id, node = sb.node, rooms = room_list(), limits = {
        nick = validate.NICK_MAX, room = validate.ROOM_MAX, text = validate.TEXT_MAX, history = HISTORY,
        burst = BURST, rate = RATE, rooms = MAX_JOINED, rooms_per_client = MAX_PER_CLIENT } })
end

-- A request's `ref` (the page's own tag, echoed in errors): a short string or an integer.
local function ref_of(msg)
    local r = msg.ref
    if type(r) == "string" and #r <= 64 then return r end
    if type(r) == "number" and math.tointeger(r) then return math.tointeger(r) end
end

-- Every message spends the connection's budget, garbage included, except typing flags:
-- they have a budget of their own, and one past it is dropped without an answer (the
-- next one says the same thing), so a page's typing never costs it a chat message.
function chat.message(ws, raw, binary)
    local data = ws.data
    data.ref, data.req_room = nil, nil
    -- connections opened before a reload to this version lack these
    data.addr = data.addr or address(ws.remote)
    data.typing_bucket = data.typing_bucket or bucket.new(TYPING_BURST, sb.now())
    local msg
    if not binary and #raw <= MAX_FRAME then
        local decoded_ok, m = pcall(json.decode, raw)
        if decoded_ok and type(m) == "table" then msg = m end
    end
    if msg and msg.type == "typing" then
        if not bucket.take(data.typing_bucket, TYPING_BURST, TYPING_RATE, sb.now()) then return end
    else
        if msg then
            data.ref = ref_of(msg)
            data.req_room = validate.room(msg.room) or nil
        end
        local ok, retry = bucket.take(data.bucket, BURST, RATE, sb.now())
        if not ok then
            return send(ws, { type = "error", code = "rate_limited",
                message = "slow down: you are sending messages too fast", retry_after = retry,
                request = msg and type(msg.type) == "string" and msg.type:sub(1, 40) or nil, ref = data.ref,
                room = data.req_room })
        end
    end
    if binary then return fail(ws, "bad_message", "send JSON text messages, not binary") end
    if #raw > MAX_FRAME then
        return fail(ws, "too_large", ("messages must be at most %d bytes"):format(MAX_FRAME))
    end
    if not msg then return fail(ws, "bad_message", "messages must be JSON objects") end
    if type(msg.type) ~= "string" then return fail(ws, "bad_message", "a message needs a \"type\"") end
    local fn = handle[msg.type]
    if not fn then
        return fail(ws, "unknown_type", ("unknown message type %q"):format(msg.type:sub(1, 40)), msg.type:sub(1, 40))
    end
    fn(ws, msg)
end

function chat.close(ws)
    local data = ws.data
    if not data.rooms then return end -- open never ran
    data.addr = data.addr or address(ws.remote)
    state.online = state.online - 1
    for name in pairs(data.rooms) do
        leave_room(ws, get_room(name))
    end
end

-- GET /chat without an upgrade: who is around, for a status page or a health check.
function chat.request(req)
    if req.method ~= "GET" and req.method ~= "HEAD" then
        return { status = 405, headers = { allow = "GET, HEAD" }, body = "" }
    end
    return {
        status = 200,
        headers = { ["content-type"] = "application/json", ["cache-control"] = "no-store" },
        body = json.encode({ online = state.online, rooms = room_list() }),
    }
end

return chat
