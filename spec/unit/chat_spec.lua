-- The sample chat (scripts/chat.lua), driven through switchboard.testing.
local t = require "switchboard.testing"
local cjson = require "cjson"

local app, route

local function send(c, msg)
    c:message(type(msg) == "string" and msg or cjson.encode(msg))
end

-- The messages `c` received since the last call, decoded; clears them.
local function take(c)
    local r = {}
    for _, m in ipairs(c:clear()) do r[#r + 1] = cjson.decode(m.data) end
    return r
end

local function last(c)
    local msgs = take(c)
    return msgs[#msgs]
end

local function of_type(msgs, typ)
    local r = {}
    for _, m in ipairs(msgs) do
        if m.type == typ then r[#r + 1] = m end
    end
    return r
end

-- Advances the clock far enough to refill the rate limit bucket.
local function rest()
    t.clock:advance(2)
end

local function user(nick, room, remote)
    local c = assert(route:connect({ remote = remote }))
    send(c, { type = "nick", nick = nick })
    if room then send(c, { type = "join", room = room }) end
    rest()
    c:clear()
    return c
end

local function join(c, room)
    c:clear()
    send(c, { type = "join", room = room })
    rest()
    return take(c)
end

local function assert_error(c, code)
    local m = last(c)
    assert.is_table(m)
    assert.equal("error", m.type)
    assert.equal(code, m.code)
    assert.is_string(m.message)
    assert.truthy(#m.message > 0)
    return m
end

before_each(function()
    app = t.app("scripts", { strict = true })
    route = app:load("chat")
end)

after_each(function()
    assert.same({}, route.errors)
end)

describe("chat: connecting", function()
    it("welcomes a new connection with its id, the room list and the limits", function()
        local c = route:connect()
        local m = last(c)
        assert.equal("welcome", m.type)
        assert.equal(c.id, m.id)
        assert.same({ { name = "lobby", members = 0 } }, m.rooms)
        assert.same({ nick = 24, room = 32, text = 500, history = 100, burst = 10, rate = 5, rooms = 10,
            rooms_per_client = 20 }, m.limits)
    end)

    it("picks the chat.v1 subprotocol when the client offers it", function()
        assert.equal("chat.v1", route:connect{ protocols = { "x", "chat.v1" } }.protocol)
        assert.is_nil(route:connect().protocol)
    end)

    it("refuses a page on another site (cross-site WebSocket hijacking) with 403", function()
        local c, status = route:connect{ headers = { host = "chat.local:8080", origin = "https://evil.example" } }
        assert.is_nil(c)
        assert.equal(403, status)
        -- same host, another port: another origin
        assert.is_nil(route:connect{ headers = { host = "chat.local:8080", origin = "http://chat.local:9090" } })
        assert.is_nil(route:connect{ headers = { host = "chat.local", origin = "null" } })
    end)

    it("accepts its own pages, and clients that send no Origin", function()
        assert.truthy(route:connect{ headers = { host = "chat.local:8080", origin = "http://chat.local:8080" } })
        assert.truthy(route:connect{ headers = { host = "Chat.Local", origin = "http://chat.local" } })
        assert.truthy(route:connect{ headers = { host = "chat.local:443", origin = "https://chat.local" } })
        assert.truthy(route:connect{ headers = { host = "[::1]:8080", origin = "http://[::1]:8080" } })
        assert.truthy(route:connect{ headers = { host = "chat.local:8080" } })
    end)

    it("answers plain HTTP GET with who is online", function()
        user("ann", "lobby")
        user("bob", "dev")
        rest()
        local res = route:request{ method = "GET" }
        assert.equal(200, res.status)
        assert.equal("application/json", res.headers["content-type"])
        assert.same({ online = 2, rooms = { { name = "dev", members = 1 }, { name = "lobby", members = 1 } } },
            cjson.decode(res.body))
        assert.equal(405, route:request{ method = "POST" }.status)
    end)
end)

describe("chat: nicknames", function()
    it("acknowledges a valid nick", function()
        local c = route:connect()
        c:clear()
        send(c, { type = "nick", nick = "Ann_1.x-y" })
        assert.same({ type = "nick", nick = "Ann_1.x-y" }, last(c))
    end)

    it("accepts 1 and 24 characters and refuses 0 and 25", function()
        local c = route:connect()
        c:clear()
        send(c, { type = "nick", nick = "a" })
        assert.equal("nick", last(c).type)
        send(c, { type = "nick", nick = ("b"):rep(24) })
        assert.equal("nick", last(c).type)
        send(c, { type = "nick", nick = "" })
        assert_error(c, "nick_invalid")
        send(c, { type = "nick", nick = ("b"):rep(25) })
        assert_error(c, "nick_invalid")
    end)

    it("refuses characters outside letters, digits, '_', '-' and '.'", function()
        local c = route:connect()
        for _, bad in ipairs({ "ann bob", "<img>", "ann\n", "émile", "a/b", "ann;" }) do
            rest()
            c:clear()
            send(c, { type = "nick", nick = bad })
            assert.matches("letters, digits", assert_error(c, "nick_invalid").message)
        end
    end)

    it("refuses a nick that is not a string", function()
        local c = route:connect()
        for _, bad in ipairs({ 42, true, {}, cjson.null }) do
            rest()
            c:clear()
            send(c, { type = "nick", nick = bad })
            assert_error(c, "nick_invalid")
        end
        send(c, { type = "nick" })
        assert_error(c, "nick_invalid")
    end)

    it("refuses joining a room where the nick is taken, ignoring case", function()
        user("ann", "lobby")
        local c = user("ANN")
        send(c, { type = "join", room = "lobby" })
        assert.matches("ANN is already taken in #lobby", assert_error(c, "nick_taken").message)
    end)

    it("allows the same nick in different rooms", function()
        user("ann", "lobby")
        local c = user("ann")
        assert.equal("joined", join(c, "dev")[1].type)
    end)

    it("refuses renaming to a nick taken in one of my rooms", function()
        user("bob", "lobby")
        local c = user("ann", "lobby")
        send(c, { type = "nick", nick = "Bob" })
        assert_error(c, "nick_taken")
    end)

    it("renames in every room I am in and tells the members", function()
        local ann = user("ann", "lobby")
        local bob = user("bob", "lobby")
        join(ann, "dev")
        ann:clear()
        send(ann, { type = "nick", nick = "anna" })
        assert.same({ type = "nick", nick = "anna" }, take(ann)[1])
        local m = last(bob)
        assert.equal("rename", m.type)
        assert.equal("lobby", m.room)
        assert.equal("ann", m.from)
        assert.equal("anna", m.to)
        -- The old nick is free again, the new one is taken.
        local c = user("ann")
        assert.equal("joined", join(c, "lobby")[1].type)
        local d = user("ANNA")
        join(d, "dev")
        send(d, { type = "join", room = "lobby" })
        assert_error(d, "nick_taken")
    end)
end)

describe("chat: rooms", function()
    it("sends empty lists as JSON arrays, and URLs without escaped slashes", function()
        local ann = user("ann")
        send(ann, { type = "join", room = "empty" })
        local raw = ann.sent[1].data
        assert.truthy(raw:find('"history":[]', 1, true), raw)
        assert.truthy(raw:find('"members":["ann"]', 1, true), raw)
        local bob = user("bob", "empty")
        ann:clear()
        send(bob, { type = "say", room = "empty", text = "see https://example.com/a" })
        assert.truthy(ann.sent[1].data:find("https://example.com/a", 1, true), ann.sent[1].data)
    end)

    it("needs a nick before joining", function()
        local c = route:connect()
        send(c, { type = "join", room = "lobby" })
        assert_error(c, "nick_required")
    end)

    it("creates a room by joining it and lists it with its member count", function()
        local ann = user("ann")
        local msgs = join(ann, "Dev-Talk_2")
        assert.is_string(msgs[1].epoch)
        msgs[1].epoch = nil
        assert.same({ type = "joined", room = "dev-talk_2", members = { "ann" }, history = {}, recovered = false },
            msgs[1])
        local rooms = of_type(msgs, "rooms")
        assert.same({ { name = "dev-talk_2", members = 1 }, { name = "lobby", members = 0 } }, rooms[#rooms].rooms)
    end)

    it("sends the room list to everyone once per burst of changes", function()
        local watcher = route:connect()
        for _, who in ipairs({ { "ann", "lobby" }, { "bob", "lobby" }, { "cy", "dev" } }) do
            local c = route:connect()
            send(c, { type = "nick", nick = who[1] })
            send(c, { type = "join", room = who[2] })
        end
        watcher:clear()
        assert.equal(0, #of_type(take(watcher), "rooms"))
        t.clock:advance(0.25)
        local lists = of_type(take(watcher), "rooms")
        assert.equal(1, #lists)
        assert.same({ { name = "lobby", members = 2 }, { name = "dev", members = 1 } }, lists[1].rooms)
    end)

    it("answers a rooms request at once", function()
        user("ann", "lobby")
        local c = route:connect()
        c:clear()
        send(c, { type = "rooms" })
        assert.same({ type = "rooms", rooms = { { name = "lobby", members = 1 } } }, last(c))
    end)

    it("refuses invalid room names", function()
        local c = user("ann")
        for _, bad in ipairs({ "", ("r"):rep(33), "a b", "#lobby", "<b>", 7, false }) do
            rest()
            c:clear()
            send(c, { type = "join", room = bad })
            assert_error(c, "room_invalid")
        end
        assert.equal("joined", join(c, ("r"):rep(32))[1].type)
    end)

    it("refuses joining the same room twice", function()
        local c = user("ann", "lobby")
        send(c, { type = "join", room = "LOBBY" })
        assert_error(c, "already_joined")
    end)

    it("limits one connection to 10 rooms", function()
        local c = user("ann")
        for i = 1, 10 do assert.equal("joined", join(c, "r" .. i)[1].type) end
        send(c, { type = "join", room = "r11" })
        assert_error(c, "too_many_rooms")
        send(c, { type = "leave", room = "r1" })
        rest()
        assert.equal("joined", join(c, "r11")[1].type)
    end)

    it("leaves a room: the leaver is told, the others see a notice, counts drop", function()
        local ann = user("ann", "dev")
        local bob = user("bob", "dev")
        ann:clear()
        send(bob, { type = "leave", room = "dev" })
        assert.same({ type = "left", room = "dev" }, take(bob)[1])
        local m = last(ann)
        assert.equal("leave", m.type)
        assert.equal("bob", m.nick)
        assert.equal("dev", m.room)
        assert.is_number(m.ts)
        assert.equal(1, app:subscribers("room:dev"))
        send(bob, { type = "leave", room = "dev" })
        assert_error(bob, "not_in_room")
    end)

    it("drops empty rooms from the list but keeps the lobby", function()
        local ann = user("ann", "dev")
        send(ann, { type = "leave", room = "dev" })
        rest()
        local lists = of_type(take(ann), "rooms")
        assert.same({ { name = "lobby", members = 0 } }, lists[#lists].rooms)
    end)

    it("keeps at most 100 rooms, evicting the stalest empty one (the server keeps its history)", function()
        local c = user("ann")
        for i = 1, 99 do -- with the lobby, 100 rooms
            join(c, "r" .. i)
            send(c, { type = "say", room = "r" .. i, text = "in r" .. i })
            send(c, { type = "leave", room = "r" .. i })
            rest()
        end
        join(user("bob"), "r1") -- r1 is in use: r2 is now the stalest empty room
        assert.equal("joined", join(c, "new")[1].type)
        -- r2 is made again (evicting r3): its messages were kept by sb.history
        assert.equal("in r2", join(user("cy"), "r2")[1].history[1].text)
        assert.equal("in r3", join(user("dee"), "r3")[1].history[1].text)
    end)

    it("refuses a new room when all 100 rooms are in use", function()
        for u = 1, 10 do
            local c = user("u" .. u, nil, ("10.0.0.%d:5000"):format(u))
            for r = 1, 10 do
                local n = (u - 1) * 10 + r
                if n < 100 then join(c, "r" .. n) end
            end
        end
        local c = user("ann")
        send(c, { type = "join", room = "one-more" })
        assert_error(c, "rooms_full")
        assert.equal("joined", join(c, "r50")[1].type)
    end)
end)

describe("chat: rooms per client", function()
    it("keeps the connections of one address to 20 rooms, so one client cannot take every room", function()
        local a = {}
        for i = 1, 3 do a[i] = user("a" .. i, nil, "10.1.1.1:100" .. i) end
        for r = 1, 10 do assert.equal("joined", join(a[1], "r" .. r)[1].type) end
        for r = 11, 20 do assert.equal("joined", join(a[2], "r" .. r)[1].type) end
        -- a room the address is already in costs no slot; a 21st room is refused
        assert.equal("joined", join(a[3], "r5")[1].type)
        local m = join(a[3], "r21")[1]
        assert.same({ "error", "too_many_rooms", "join" }, { m.type, m.code, m.request })
        assert.equal("your address is in 20 rooms already", m.message)
        -- another address is not held back
        assert.equal("joined", join(user("b1", nil, "10.2.2.2:1001"), "r21")[1].type)
        -- leaving (or closing) frees the slot: r1..r10 had only a1 from this address
        send(a[1], { type = "leave", room = "r1" })
        rest()
        assert.equal("joined", join(a[3], "r21")[1].type)
        a[2]:close()
        rest()
        assert.equal("joined", join(a[3], "r22")[1].type)
    end)

    it("counts IPv6 clients by address, not by port", function()
        local c1 = user("x1", nil, "[::1]:1001")
        local c2 = user("x2", nil, "[::1]:1002")
        for r = 1, 10 do join(c1, "r" .. r) end
        for r = 11, 20 do join(c2, "r" .. r) end
        assert.equal("too_many_rooms", join(user("x3", nil, "[::1]:1003"), "r21")[1].code)
    end)
end)

describe("chat: messages and history", function()
    it("delivers a message to everyone in the room, sender included, with id and timestamp", function()
        local ann = user("ann", "lobby")
        local bob = user("bob", "lobby")
        local cy = user("cy", "dev")
        ann:clear()
        local before = os.time()
        send(ann, { type = "say", room = "lobby", text = "hello <b>all</b>" })
        local a, b = last(ann), last(bob)
        assert.same(a, b)
        assert.equal("message", a.type)
        assert.equal("lobby", a.room)
        assert.equal("ann", a.nick)
        assert.equal("hello <b>all</b>", a.text)
        assert.is_number(a.id)
        assert.truthy(a.ts >= before and a.ts <= os.time())
        assert.same({}, take(cy))
    end)

    it("gives later messages larger ids", function()
        local ann = user("ann", "lobby")
        send(ann, { type = "say", room = "lobby", text = "one" })
        send(ann, { type = "say", room = "lobby", text = "two" })
        local msgs = take(ann)
        assert.truthy(msgs[2].id > msgs[1].id)
    end)

    it("refuses saying something in a room I am not in", function()
        user("bob", "dev")
        local ann = user("ann", "lobby")
        send(ann, { type = "say", room = "dev", text = "psst" })
        assert_error(ann, "not_in_room")
    end)

    it("refuses empty, blank, too long, non-string and control-character text", function()
        local ann = user("ann", "lobby")
        local cases = {
            { "", "text_empty" }, { " \n\t ", "text_empty" }, { ("x"):rep(501), "text_too_long" },
            { 12, "text_invalid" }, { cjson.null, "text_invalid" }, { "bell\7", "text_invalid" },
        }
        for _, case in ipairs(cases) do
            rest()
            ann:clear()
            send(ann, { type = "say", room = "lobby", text = case[1] })
            assert_error(ann, case[2])
        end
    end)

    it("accepts exactly 500 characters, counting UTF-8 characters not bytes", function()
        local ann = user("ann", "lobby")
        send(ann, { type = "say", room = "lobby", text = ("é"):rep(500) })
        assert.equal("message", last(ann).type)
        send(ann, { type = "say", room = "lobby", text = "line one\nline\ttwo" })
        assert.equal("line one\nline\ttwo", last(ann).text)
    end)

    it("replays the room's history on join, oldest first", function()
        local ann = user("ann", "lobby")
        for i = 1, 3 do
            send(ann, { type = "say", room = "lobby", text = "m" .. i })
        end
        local bob = user("bob")
        local joined = join(bob, "lobby")[1]
        assert.same({ "ann", "bob" }, joined.members)
        local texts = {}
        for _, m in ipairs(joined.history) do texts[#texts + 1] = m.text end
        assert.same({ "m1", "m2", "m3" }, texts)
        assert.equal("ann", joined.history[1].nick)
        assert.equal("message", joined.history[1].type)
    end)

    it("keeps only the last 100 messages of a room", function()
        local ann = user("ann", "lobby")
        for i = 1, 105 do
            if i % 10 == 0 then rest() end
            send(ann, { type = "say", room = "lobby", text = "m" .. i })
        end
        local history = join(user("bob"), "lobby")[1].history
        assert.equal(100, #history)
        assert.equal("m6", history[1].text)
        assert.equal("m105", history[100].text)
    end)

    it("keeps rooms, history and members across a hot reload", function()
        local ann = user("ann", "lobby")
        send(ann, { type = "say", room = "lobby", text = "before" })
        assert.truthy(route:reload())
        send(ann, { type = "say", room = "lobby", text = "after" })
        assert.equal("after", last(ann).text)
        local bob = user("bob")
        local joined = join(bob, "lobby")[1]
        assert.same({ "ann", "bob" }, joined.members)
        assert.equal(2, #joined.history)
        bob:close(1000)
        assert.equal("leave", last(ann).type)
    end)
end)

describe("chat: ids and recovery", function()
    local function texts(list)
        local r = {}
        for _, m in ipairs(list) do r[#r + 1] = m.text end
        return r
    end

    local function say_n(c, room, from, to)
        for i = from, to do
            if i % 8 == 0 then rest() end
            send(c, { type = "say", room = room, text = "m" .. i })
        end
        rest()
    end

    it("numbers a room's messages by their position in its history: 1, 2, 3 …", function()
        local ann = user("ann", "lobby")
        say_n(ann, "lobby", 1, 3)
        local msgs = of_type(take(ann), "message")
        assert.same({ 1, 2, 3 }, { msgs[1].id, msgs[2].id, msgs[3].id })
        assert.is_string(msgs[1].epoch)
        assert.equal(msgs[1].epoch, msgs[3].epoch)
        send(ann, { type = "join", room = "dev" })
        send(ann, { type = "say", room = "dev", text = "first in dev" })
        assert.equal(1, last(ann).id)
    end)

    it("gives a page that comes back only what it missed, and recovered = true", function()
        local ann = user("ann", "lobby")
        say_n(ann, "lobby", 1, 3)
        local epoch = of_type(take(ann), "message")[1].epoch
        local bob = user("bob")
        local j = join(bob, "lobby")[1]
        assert.same({ "m1", "m2", "m3" }, texts(j.history))
        assert.is_false(j.recovered) -- a first join asks for nothing
        bob:close(1000)
        say_n(ann, "lobby", 4, 6)
        -- since = 3: exactly 4, 5, 6, then live
        local back = user("bob")
        send(back, { type = "join", room = "lobby", since = 3, epoch = epoch })
        rest()
        j = of_type(take(back), "joined")[1]
        assert.is_true(j.recovered)
        assert.same({ "m4", "m5", "m6" }, texts(j.history))
        assert.same({ 4, 5, 6 }, { j.history[1].id, j.history[2].id, j.history[3].id })
        send(ann, { type = "say", room = "lobby", text = "m7" })
        local m = last(back)
        assert.same({ 7, "m7" }, { m.id, m.text })
    end)

    it("leaves a backend's publication that is not a message out of joins, and passes it on as it was", function()
        local ann = user("ann", "lobby")
        send(ann, { type = "say", room = "lobby", text = "m1" })
        ann:clear()
        for _, raw in ipairs { "plain text", "{oops", "[1]", "{}", '{ "x" }' } do app:publish("chat:lobby", raw) end
        local got = {}
        for _, m in ipairs(ann:clear()) do got[#got + 1] = m.data end
        assert.same({ "plain text", "{oops", "[1]", "{}", '{ "x" }' }, got)
        local j = join(user("bob"), "lobby")[1] -- the joined frame is valid JSON
        assert.equal(1, #j.history)
        assert.equal("m1", j.history[1].text)
    end)

    it("sends joined before a message published while the joiner's history was read", function()
        local ann = user("ann", "lobby")
        send(ann, { type = "say", room = "lobby", text = "m1" })
        local api = app.history.api
        local read = api.read
        api.read = function(topic, opts) -- a publication lands right after the read (as over Redis)
            local items, epoch = read(topic, opts)
            api.read = read
            app:publish("chat:lobby", cjson.encode({ room = "lobby", nick = "ann", text = "meanwhile", ts = 1 }))
            return items, epoch
        end
        local bob = user("bob")
        bob:clear()
        send(bob, { type = "join", room = "lobby" })
        local got = {}
        for _, m in ipairs(take(bob)) do
            if m.type == "joined" or m.type == "message" then got[#got + 1] = { m.type, m.history and #m.history } end
        end
        assert.same({ { "joined", 1 }, { "message" } }, got)
    end)

    it("says recovered = true with no history when nothing was missed", function()
        local ann = user("ann", "lobby")
        say_n(ann, "lobby", 1, 2)
        local epoch = last(ann).epoch
        local bob = user("bob")
        send(bob, { type = "join", room = "lobby", since = 2, epoch = epoch })
        local j = last(bob)
        assert.same({ true, {} }, { j.recovered, j.history })
    end)

    it("sends the last 100 and recovered = false past the history, for another epoch or a bad since", function()
        local ann = user("ann", "lobby")
        say_n(ann, "lobby", 1, 105)
        local epoch = last(ann).epoch
        local cases = {
            { since = 2, epoch = epoch },       -- 3..5 are no longer kept
            { since = 104, epoch = "other" },   -- another history
            { since = 500, epoch = epoch },     -- from the future
            { since = -1, epoch = epoch }, { since = 1.5, epoch = epoch }, { since = "7", epoch = epoch },
            { since = 104, epoch = 12 }, { since = 104 }, {},
        }
        for i, case in ipairs(cases) do
            local c = user("u" .. i)
            send(c, { type = "join", room = "lobby", since = case.since, epoch = case.epoch })
            local j = last(c)
            assert.equal("joined", j.type)
            assert.is_false(j.recovered, i)
            assert.equal(100, #j.history)
            assert.same({ "m6", "m105" }, { j.history[1].text, j.history[100].text })
            rest()
        end
    end)
end)

describe("chat: presence", function()
    it("tells the room who joined, but not the joiner", function()
        local ann = user("ann", "lobby")
        local bob = user("bob")
        local msgs = join(bob, "lobby")
        assert.same({}, of_type(msgs, "join"))
        local m = of_type(take(ann), "join")[1]
        assert.equal("bob", m.nick)
        assert.equal("lobby", m.room)
        assert.is_number(m.ts)
    end)

    it("tells every room I was in when my connection closes, and frees my nick", function()
        local ann = user("ann", "lobby")
        local cy = user("cy", "dev")
        local bob = user("bob", "lobby")
        join(bob, "dev")
        ann:clear()
        cy:clear()
        bob:drop()
        local m = last(ann)
        assert.equal("leave", m.type)
        assert.equal("lobby", m.room)
        assert.equal("bob", m.nick)
        assert.equal("leave", last(cy).type)
        rest()
        local lists = of_type(take(ann), "rooms")
        assert.same({ { name = "dev", members = 1 }, { name = "lobby", members = 1 } }, lists[#lists].rooms)
        assert.equal("joined", join(user("bob"), "lobby")[1].type)
    end)

    it("is present in the room's topic with its nick, and leaves it when it leaves", function()
        local ann = user("ann", "lobby")
        local bob = user("bob", "lobby")
        local function nicks()
            local r = {}
            for _, p in pairs(app.presence["room:lobby"] or {}) do r[#r + 1] = cjson.decode(p).nick end
            table.sort(r)
            return r
        end
        assert.same({ "ann", "bob" }, nicks())
        send(bob, { type = "nick", nick = "bobby" })
        assert.same({ "ann", "bobby" }, nicks())
        send(bob, { type = "leave", room = "lobby" })
        assert.same({ "ann" }, nicks())
        ann:close(1000)
        assert.same({}, nicks())
    end)

    it("sends a room's members to its members of this process when the list changed, every 5 s", function()
        local ann = user("ann", "lobby")
        local bob = user("bob", "lobby")
        t.clock:advance(5)
        assert.same({ { type = "members", room = "lobby", members = { "ann", "bob" } } }, of_type(take(bob), "members"))
        assert.equal(1, #of_type(take(ann), "members"))
        t.clock:advance(5)
        assert.same({}, of_type(take(bob), "members")) -- nothing changed
    end)

    it("relays typing to the others in the room", function()
        local ann = user("ann", "lobby")
        local bob = user("bob", "lobby")
        ann:clear()
        send(ann, { type = "typing", room = "lobby", typing = true })
        assert.same({ type = "typing", room = "lobby", nick = "ann", typing = true }, last(bob))
        assert.same({}, take(ann))
        send(ann, { type = "typing", room = "lobby", typing = false })
        assert.is_false(last(bob).typing)
    end)

    it("refuses a typing flag that is not a boolean, or outside my rooms", function()
        local ann = user("ann", "lobby")
        send(ann, { type = "typing", room = "lobby", typing = "yes" })
        assert_error(ann, "bad_field")
        send(ann, { type = "typing", room = "dev", typing = true })
        assert_error(ann, "not_in_room")
    end)
end)

describe("chat: private messages", function()
    it("delivers to the named member only, and echoes to the sender", function()
        local ann = user("ann", "lobby")
        local bob = user("bob", "lobby")
        local cy = user("cy", "lobby")
        ann:clear()
        cy:clear()
        send(ann, { type = "pm", room = "lobby", to = "BOB", text = "secret" })
        local m = last(bob)
        assert.equal("pm", m.type)
        assert.equal("ann", m.from)
        assert.equal("bob", m.to)
        assert.equal("secret", m.text)
        assert.equal("lobby", m.room)
        assert.is_number(m.ts)
        assert.same(m, last(ann))
        assert.same({}, take(cy))
        assert.equal("user:" .. app.node .. ":" .. bob.id, app.published[#app.published].topic)
    end)

    it("finds the member in the given room when the nick is used in two rooms", function()
        local ann = user("ann", "lobby")
        join(ann, "dev")
        local bob1 = user("bob", "lobby")
        local bob2 = user("bob", "dev")
        send(ann, { type = "pm", room = "dev", to = "bob", text = "hi dev bob" })
        assert.equal("hi dev bob", last(bob2).text)
        assert.same({}, of_type(take(bob1), "pm"))
    end)

    it("refuses unknown, invalid and own nicks, bad text, and rooms I am not in", function()
        local ann = user("ann", "lobby")
        user("bob", "dev")
        local cases = {
            { { to = "bob", room = "lobby", text = "x" }, "no_such_user" },
            { { to = "b b", room = "lobby", text = "x" }, "bad_field" },
            { { to = 5, room = "lobby", text = "x" }, "bad_field" },
            { { to = "ann", room = "lobby", text = "x" }, "bad_field" },
            { { to = "bob", room = "dev", text = "x" }, "not_in_room" },
            { { to = "bob", room = "lobby", text = "" }, "text_empty" },
            { { to = "bob", room = "lobby" }, "text_invalid" },
        }
        for _, case in ipairs(cases) do
            rest()
            ann:clear()
            case[1].type = "pm"
            send(ann, case[1])
            assert_error(ann, case[2])
        end
    end)
end)

describe("chat: rate limit", function()
    it("allows a burst of 10, then answers with an error instead of disconnecting", function()
        local ann = user("ann", "lobby")
        for i = 1, 10 do send(ann, { type = "say", room = "lobby", text = "m" .. i }) end
        assert.equal(10, #of_type(take(ann), "message"))
        send(ann, { type = "say", room = "lobby", text = "one too many" })
        local err = assert_error(ann, "rate_limited")
        assert.truthy(err.retry_after > 0 and err.retry_after <= 0.2)
        assert.is_true(ann:is_open())
    end)

    it("refills at 5 messages per second", function()
        local ann = user("ann", "lobby")
        for _ = 1, 10 do send(ann, { type = "ping" }) end
        ann:clear()
        t.clock:advance(1)
        for _ = 1, 5 do send(ann, { type = "ping" }) end
        assert.equal(5, #of_type(take(ann), "pong"))
        send(ann, { type = "ping" })
        assert_error(ann, "rate_limited")
        t.clock:advance(0.2)
        send(ann, { type = "ping" })
        assert.equal("pong", last(ann).type)
    end)

    it("limits each connection on its own", function()
        local ann = user("ann", "lobby")
        local bob = user("bob", "lobby")
        for _ = 1, 11 do send(ann, { type = "ping" }) end
        assert_error(ann, "rate_limited")
        send(bob, { type = "ping" })
        assert.equal("pong", last(bob).type)
    end)

    it("names the refused request and its ref, so a page knows which text to send again", function()
        local ann = user("ann", "lobby")
        for i = 1, 10 do send(ann, { type = "say", room = "lobby", text = "m" .. i, ref = i }) end
        ann:clear()
        send(ann, { type = "say", room = "lobby", text = "one too many", ref = "m11" })
        local err = assert_error(ann, "rate_limited")
        assert.same({ "say", "m11" }, { err.request, err.ref })
        assert.truthy(err.retry_after > 0)
    end)

    it("echoes a request's ref in its other errors, and ignores a ref that is not short", function()
        local ann = user("ann", "lobby")
        send(ann, { type = "say", room = "Dev", text = "x", ref = 7 })
        local e = assert_error(ann, "not_in_room")
        assert.same({ 7, "dev" }, { e.ref, e.room }) -- and the room it was about, when it names one
        user("ann2", "dev")
        local twin = user("ann2")
        send(twin, { type = "join", room = "dev" })
        assert.equal("dev", assert_error(twin, "nick_taken").room)
        rest()
        send(ann, { type = "say", room = "lobby", text = "", ref = ("r"):rep(65) })
        assert.is_nil(assert_error(ann, "text_empty").ref)
        rest()
        send(ann, { type = "say", room = "lobby", text = "", ref = 1.5 })
        assert.is_nil(assert_error(ann, "text_empty").ref)
    end)

    it("gives typing flags a budget of their own: they never spend the message budget", function()
        local ann = user("ann", "lobby")
        local bob = user("bob", "lobby")
        ann:clear()
        for _ = 1, 30 do send(ann, { type = "typing", room = "lobby", typing = true }) end
        -- past their own budget (5, then 1 a second) typing flags are dropped without an answer
        assert.same({}, take(ann))
        assert.equal(5, #of_type(take(bob), "typing"))
        for i = 1, 10 do send(ann, { type = "say", room = "lobby", text = "m" .. i }) end
        assert.equal(10, #of_type(take(ann), "message"))
        t.clock:advance(1)
        send(ann, { type = "typing", room = "lobby", typing = false })
        assert.equal(1, #of_type(take(bob), "typing"))
    end)

    it("counts refused messages too, so a flood cannot get through", function()
        local ann = user("ann", "lobby")
        for _ = 1, 10 do send(ann, "not json") end
        send(ann, { type = "ping" })
        assert_error(ann, "rate_limited")
    end)
end)

describe("chat: malformed messages", function()
    it("answers every bad message with an error and stays connected", function()
        local c = user("ann", "lobby")
        local cases = {
            { "not json", "bad_message" }, { "[1,2]", "bad_message" }, { '"str"', "bad_message" },
            { "42", "bad_message" }, { "null", "bad_message" }, { "{}", "bad_message" },
            { '{"type":5}', "bad_message" }, { '{"type":"nope"}', "unknown_type" },
            { '{"type":"__index"}', "unknown_type" }, { ("["):rep(5000), "too_large" },
            { '{"type":"say","room":"lobby","text":"' .. ("x"):rep(4100) .. '"}', "too_large" },
        }
        for _, case in ipairs(cases) do
            rest()
            c:clear()
            c:message(case[1])
            assert_error(c, case[2])
        end
        rest()
        c:message("\0\1\2", true)
        assert_error(c, "bad_message")
        assert.is_true(c:is_open())
    end)

    it("survives deeply nested JSON", function()
        local c = user("ann", "lobby")
        c:message(("["):rep(1000) .. ("]"):rep(1000))
        assert_error(c, "bad_message")
    end)

    it("quotes only a short prefix of an unknown type", function()
        local c = user("ann")
        send(c, { type = ("t"):rep(300) })
        assert.truthy(#assert_error(c, "unknown_type").message < 80)
    end)
end)
