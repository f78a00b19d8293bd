-- The sample chat as one chat across processes: Python clients (spec/support/
-- chat_cluster.py) on two switchboard processes sharing a real redis-server, and on one
-- process alone. Message ids are the positions of the room's history: the same
-- messages, in the same order, with the same ids, for everyone.
local server = require "server"
local proc = require "sbt_proc"
local redis_srv = require "redis"
local cjson = require "cjson"
local socket = require "socket"

local function clients(scenario, pa, pb, ...)
    local extra = {}
    for i, a in ipairs({ ... }) do extra[i] = "'" .. tostring(a) .. "'" end
    local p = io.popen(("env -u LD_PRELOAD timeout 90 %s %s/spec/support/chat_cluster.py %s %d %d %s 2>&1")
        :format(server.PYTHON, server.root, scenario, pa, pb, table.concat(extra, " ")))
    local out = p:read("a")
    p:close()
    local ok, res = pcall(cjson.decode, out:match("([^\n]*)\n?$") or "")
    assert(ok and type(res) == "table", "python clients failed:\n" .. out)
    return res
end

local function texts(list)
    local r = {}
    for _, m in ipairs(list) do r[#r + 1] = m[4] end
    return r
end

local function check_order(r)
    -- the finding: every one of b1, a1, a2, b2, a3 shown everywhere, in that order
    assert.same({ "b1", "a1", "a2", "b2", "a3" }, { table.unpack(texts(r.ann), 1, 5) })
    assert.equal(21, #r.ann)
    assert.same(r.ann, r.bob)
    assert.same(r.ann, r.cy)
    for i, m in ipairs(r.ann) do
        assert.equal(i, m[1]) -- ids: the positions, 1, 2, 3 … in a new room
        assert.equal(r.ann[1][2], m[2])
    end
end

local function check_recover(r)
    assert.is_true(r.joined.recovered)
    assert.equal(r.last[2], r.joined.epoch)
    local missed = {}
    for i, m in ipairs(r.joined.history) do missed[i] = { m.id, m.text } end
    local id = r.last[1]
    assert.same({ { id + 1, "missed 1" }, { id + 2, "missed 2" }, { id + 3, "missed 3" } }, missed)
    -- then live, once each, in order: exactly what ann saw after bob's last
    local tail = {}
    for _, m in ipairs(r.ann) do if m[1] > id then tail[#tail + 1] = m end end
    assert.same(tail, r.after)
    assert.same({ false, #r.ann }, r.stale)
    assert.same({ false, #r.ann }, r.other)
end

local function check_storm(r)
    for _, round in ipairs(r) do
        assert.equal("joined", round.first)
        local want = {}
        for id = round.since + 1, round.ids[#round.ids] do want[#want + 1] = id end
        assert.same(want, round.ids)
    end
end

local function check_people(r)
    assert.same({ "ann" }, r.members.ann)
    assert.same({ "ann", "bob" }, r.members.bob)
    assert.same({ "ann", "bob", "cy" }, r.members.cy)
    assert.equal("nick_taken", r.twin)
    assert.equal("nick_taken", r.rename)
    assert.equal("no_such_user", r.nobody)
    assert.same({
        ann = { { "bob", "ann", "from b to a" }, { "ann", "bob", "from a to b" } },
        bob = { { "bob", "ann", "from b to a" }, { "ann", "bob", "from a to b" } },
        cy = {}, twin = {},
    }, r.pms)
end

describe("the chat on one process", function()
    local s
    lazy_setup(function() s = server.start { app = "scripts" } end)
    lazy_teardown(function() if s then s:stop() end end)

    it("shows every message everywhere, in one order, with the history's positions as ids", function()
        check_order(clients("order", s.port, s.port))
    end)

    it("gives a client that comes back exactly the messages it missed", function()
        check_recover(clients("recover", s.port, s.port))
    end)

    it("keeps nicks unique per room, lists every member and delivers private messages", function()
        check_people(clients("people", s.port, s.port))
    end)

    it("sends a client coming back while others talk its joined first, then every id once", function()
        check_storm(clients("storm", s.port, s.port))
    end)

    it("starts a new epoch after a restart: a page that comes back is told its history is gone", function()
        local said = clients("restart1", s.port, s.port).said
        s:stop()
        s = server.start { app = "scripts" }
        local r = clients("restart2", s.port, s.port, said[2][1], said[2][2])
        assert.is_false(r.back.recovered)
        assert.are_not.equal(said[2][2], r.back.epoch)
        assert.same({}, r.back.history)
        assert.same({}, r.fresh)
    end)
end)

describe("the chat on two processes with --redis", function()
    local redis, a, b

    lazy_setup(function()
        redis = redis_srv.start()
        local url = "redis://127.0.0.1:" .. redis.port
        a = server.start { app = "scripts", args = { "--redis", url } }
        b = server.start { app = "scripts", args = { "--redis", url } }
        a:wait_log("redis: connected")
        b:wait_log("redis: connected")
    end)

    lazy_teardown(function()
        redis_srv.stop_all(redis, { a, b })
    end)

    it("shows every message everywhere, in one order, with the same ids (b1 a1 a2 b2 a3)", function()
        check_order(clients("order", a.port, b.port))
    end)

    it("gives a client that comes back on the other process exactly the messages it missed", function()
        check_recover(clients("recover", a.port, b.port))
    end)

    it("keeps nicks unique per room across processes, lists every member, delivers private messages", function()
        check_people(clients("people", a.port, b.port))
    end)

    it("sends a client coming back on either process while others talk its joined first, then every id once",
        function()
        check_storm(clients("storm", a.port, b.port))
    end)

    it("gives a nick to one of two joins at the same moment on two processes", function()
        local rawws = require "rawws"
        local wsframe = require "wsframe"
        local function user(port)
            local c = rawws.open(port, "/chat")
            c.send_json = function(self, t) assert(self:send(wsframe.text(cjson.encode(t)))) end
            c.next_of = function(self, types)
                while true do
                    local m = cjson.decode(assert(self:recv_frame()).payload)
                    if types[m.type] then return m end
                end
            end
            return c
        end
        for round = 1, 3 do
            local room, cs = "race" .. round, { user(a.port), user(b.port) }
            for _, c in ipairs(cs) do
                c:next_of { welcome = true }
                c:send_json { type = "nick", nick = "twin" }
                c:next_of { nick = true }
            end
            -- Redis stops for a moment: both presence reads wait, and both come back empty
            proc.kill(redis.pid, proc.SIGSTOP)
            for _, c in ipairs(cs) do c:send_json { type = "join", room = room } end
            socket.sleep(0.3)
            proc.kill(redis.pid, proc.SIGCONT)
            local got = {}
            for i, c in ipairs(cs) do
                local m = c:next_of { joined = true, error = true }
                got[i] = m.type == "joined" and "joined" or m.code
            end
            table.sort(got)
            assert.same({ "joined", "nick_taken" }, got, "round " .. round)
            for _, c in ipairs(cs) do c:close() end
        end
        -- the nick is free again once its holder left (on either process)
        local c = user(b.port)
        c:next_of { welcome = true }
        c:send_json { type = "nick", nick = "twin" }
        c:next_of { nick = true }
        server.wait_for(function()
            c:send_json { type = "join", room = "race1" }
            return c:next_of({ joined = true, error = true }).type == "joined"
        end, 10, "the nick to be free in race1")
        c:close()
    end)

    it("keeps the history and its ids in Redis across a restart of every process", function()
        local said = clients("restart1", a.port, b.port).said
        local url = "redis://127.0.0.1:" .. redis.port
        a:stop()
        b:stop()
        a = server.start { app = "scripts", args = { "--redis", url } }
        b = server.start { app = "scripts", args = { "--redis", url } }
        a:wait_log("redis: connected")
        b:wait_log("redis: connected")
        local r = clients("restart2", a.port, b.port, said[2][1], said[2][2])
        assert.is_true(r.back.recovered)
        assert.equal(said[2][2], r.back.epoch)
        assert.equal(1, #r.back.history)
        assert.same({ said[3][1], "m3" }, { r.back.history[1].id, r.back.history[1].text })
        assert.same(said, r.fresh)
    end)
end)

describe("the chat when a process dies", function()
    local redis, a, b, pid, out

    after_each(function()
        if pid then
            proc.kill(pid, proc.SIGKILL)
            proc.wait(pid)
        end
        if a then a:stop() end
        if b then pcall(b.stop, b) end -- killed on purpose
        redis_srv.stop(redis)
        if out then os.remove(out) os.remove(out .. ".err") end
    end)

    it("tells the members on the other processes who is left, once its presence ages out", function()
        redis = redis_srv.start()
        local args = { "--redis", "redis://127.0.0.1:" .. redis.port, "--presence-ttl", "2" }
        a = server.start { app = "scripts", args = args }
        b = server.start { app = "scripts", args = args }
        a:wait_log("redis: connected")
        b:wait_log("redis: connected")
        out = server.tmpname(".death")
        pid = assert(proc.spawn({ server.PYTHON, server.root .. "/spec/support/chat_cluster.py", "death",
            tostring(a.port), tostring(b.port) }, { stdout = out, stderr = out .. ".err", env = { LD_PRELOAD = "" } }))
        server.wait_for(function()
            if server.read_file(out):find("DEAD_NOW", 1, true) then return true end
            assert(not proc.wait(pid, true), "client failed:\n" .. server.read_file(out .. ".err"))
        end, 30, "both users in the room")
        b:signal(proc.SIGKILL)
        server.wait_for(function() return proc.wait(pid, true) end, 40, "the client to finish")
        pid = nil
        local ok, r = pcall(cjson.decode, server.read_file(out):match("([^\n]*)\n?$"))
        assert(ok and type(r) == "table",
            "client failed:\n" .. server.read_file(out) .. server.read_file(out .. ".err"))
        assert.same({}, r.leaves) -- nobody said bob left: the member list did
    end)
end)

describe("the chat when Redis goes away", function()
    local rawws = require "rawws"
    local wsframe = require "wsframe"
    local redis, s

    after_each(function()
        if s then pcall(s.stop, s) end
        redis_srv.stop(redis)
    end)

    local function next_of(c, want)
        while true do
            local f = assert(c:recv_frame())
            local m = cjson.decode(f.payload)
            if m.type == want then return m end
        end
    end

    it("answers a say that cannot be stored with an error the page retries, and takes it after", function()
        local port = redis_srv.free_port()
        redis = redis_srv.start(port)
        s = server.start { app = "scripts", args = { "--redis", "redis://127.0.0.1:" .. port } }
        s:wait_log("redis: connected")
        local c = rawws.open(s.port, "/chat")
        local function send(t) assert(c:send(wsframe.text(cjson.encode(t)))) end
        next_of(c, "welcome")
        send { type = "nick", nick = "ann" }
        next_of(c, "nick")
        send { type = "join", room = "ops" }
        next_of(c, "joined")
        send { type = "say", room = "ops", text = "before", ref = "m1" }
        local m = next_of(c, "message")
        assert.same({ 1, "before" }, { m.id, m.text })
        redis_srv.stop(redis)
        s:wait_log("redis: connection to .* lost")
        send { type = "say", room = "ops", text = "while away", ref = "m2" }
        local e = next_of(c, "error")
        assert.same({ "unavailable", "say", "m2", "ops", 2 }, { e.code, e.request, e.ref, e.room, e.retry_after })
        assert.truthy(s:wait_log("say in #ops not stored: redis: not connected"))
        -- Redis back (empty): the same text, sent again, is stored and shown
        redis = redis_srv.start(port)
        s:wait_log("redis: reconnected")
        send { type = "say", room = "ops", text = "while away", ref = "m2" }
        m = next_of(c, "message")
        assert.same({ 1, "while away", "ann" }, { m.id, m.text, m.nick })
        c:close()
    end)
end)
