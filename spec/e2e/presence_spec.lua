-- Presence: ws:subscribe(topic, { presence = info }) and switchboard.presence(topic),
-- in one process, and across processes with --redis (entries age out of a process
-- that dies within --presence-ttl).
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local redis_srv = require "redis"
local proc = require "sbt_proc"

local APP = server.root .. "/spec/apps/backend"

local function join(s, topic, nick)
    local c = rawws.open(s.port, ("/pres?topic=%s&nick=%s"):format(topic, nick))
    assert.equal("ready", assert(c:recv_frame()).payload)
    return c
end

local function who(s, topic)
    local status, _, body = rawws.get(s.port, "/pres?who=" .. topic)
    assert.equal(200, status)
    return body
end

local function ask(c, msg)
    assert(c:send(wsframe.text(msg)))
    return assert(c:recv_frame()).payload
end

local function wait_who(s, topic, want, timeout)
    local last
    local ok = pcall(server.wait_for, function()
        last = who(s, topic)
        return last == want
    end, timeout or 5)
    assert(ok, ("presence of %s: want %q, got %q"):format(topic, want, tostring(last)))
end

describe("presence in one process", function()
    local s
    lazy_setup(function()
        s = server.start { app = APP, args = { "--metrics-path", "/metrics" } }
    end)
    lazy_teardown(function()
        if s then s:stop() end
    end)

    it("lists the info of every connection present, and drops it on unsubscribe and close", function()
        assert.equal("", who(s, "lobby"))
        local ann, bob = join(s, "lobby", "ann"), join(s, "lobby", "bob")
        assert.equal("ann,bob", who(s, "lobby"))
        assert.equal("who:ann,bob", ask(ann, "who"))
        assert.equal(2, s:metric("switchboard_presence_entries"))
        assert.equal("unsub:true", ask(bob, "unsub"))
        assert.equal("ann", who(s, "lobby"))
        assert.equal("unsub:false", ask(bob, "unsub"))
        -- subscribing again with other info replaces it
        assert.equal("again", ask(ann, "again:anne"))
        assert.equal("anne", who(s, "lobby"))
        ann:close()
        wait_who(s, "lobby", "")
        bob:close()
        server.wait_for(function() return s:metric("switchboard_presence_entries") == 0 end, 5,
            "no entries left")
    end)

    it("keeps topics apart", function()
        local a, b = join(s, "t1", "ann"), join(s, "t2", "bob")
        assert.equal("ann", who(s, "t1"))
        assert.equal("bob", who(s, "t2"))
        a:close()
        b:close()
    end)

    it("raises on misuse, naming the function and argument", function()
        local function misuse(name)
            local c = rawws.open(s.port, "/pres?misuse=" .. name)
            local msg = assert(c:recv_frame()).payload
            c:close()
            return msg
        end
        assert.matches("bad argument #2 to 'subscribe' %(presence must be a table%)",
            misuse("notable"))
        assert.matches("bad argument #2 to 'subscribe' %(table expected, got string%)",
            misuse("badopts"))
        assert.matches("bad argument #2 to 'subscribe' %(presence longer than 1024 bytes as JSON%)",
            misuse("toolong"))
        assert.matches("bad argument #2 to .subscribe. %(presence does not encode as JSON: ", misuse("notjson"))
        assert.matches("bad argument #1 to 'presence' %(string expected, got no value%)",
            misuse("notopic"))
    end)
end)

describe("presence with --redis", function()
    local TTL = 3
    local rport, redis, a, b, c
    local clients = {}
    local function track(x)
        clients[#clients + 1] = x
        return x
    end

    lazy_setup(function()
        rport = redis_srv.free_port()
        redis = redis_srv.start(rport)
        local args = { "--redis", "redis://127.0.0.1:" .. rport, "--presence-ttl", tostring(TTL) }
        a = server.start { app = APP, args = args }
        b = server.start { app = APP, args = args }
        c = server.start { app = APP, args = args }
        for _, s in ipairs { a, b, c } do s:wait_log("redis: connected") end
    end)

    lazy_teardown(function()
        for _, x in ipairs(clients) do x:close() end
        redis_srv.stop_all(redis, { a, b, c })
    end)

    it("lists every process's members, in every process", function()
        local ann = track(join(a, "room", "ann"))
        track(join(b, "room", "bob"))
        track(join(b, "room", "bea"))
        wait_who(a, "room", "ann,bea,bob")
        wait_who(b, "room", "ann,bea,bob")
        assert.equal("who:ann,bea,bob", ask(ann, "who"))
        -- the keys expire once nobody writes them
        local pttl = tonumber((redis_srv.cmd(rport, "PTTL sb:presence:room") or ""):match(":(%d+)"))
        assert.is_true(pttl and pttl > 0 and pttl <= TTL * 1000, tostring(pttl))
    end)

    it("drops a member at once when it unsubscribes or closes", function()
        local dan = join(a, "fast", "dan")
        local eve = join(b, "fast", "eve")
        wait_who(b, "fast", "dan,eve")
        local t0 = proc.now()
        assert.equal("unsub:true", ask(eve, "unsub"))
        wait_who(a, "fast", "dan")
        dan:close()
        wait_who(b, "fast", "")
        assert.is_true(proc.now() - t0 < TTL / 2, "took as long as an age-out")
        eve:close()
    end)

    it("writes every entry again when Redis comes back empty", function()
        track(join(a, "again", "ann"))
        track(join(b, "again", "bob"))
        wait_who(a, "again", "ann,bob")
        redis_srv.stop(redis)
        redis = nil
        assert.equal("err:redis: not connected", who(a, "again"))
        redis = redis_srv.start(rport) -- a new server: no keys
        for _, s in ipairs { a, b } do s:wait_log("redis: reconnected") end
        wait_who(a, "again", "ann,bob", 0.8) -- at once, not at the next refresh (1 s)
        wait_who(b, "again", "ann,bob", 0.8)
    end)

    it("ages out the members of a process killed with SIGKILL within --presence-ttl", function()
        track(join(a, "crash", "ann"))
        track(join(c, "crash", "carl"))
        track(join(c, "crash", "cleo"))
        wait_who(a, "crash", "ann,carl,cleo")
        -- let c refresh its entries a few times first
        proc.sleep(TTL)
        wait_who(a, "crash", "ann,carl,cleo")
        c:signal(proc.SIGKILL)
        c:wait_exit(5)
        local t0 = proc.now()
        assert.equal("ann,carl,cleo", who(a, "crash")) -- no one said they left
        wait_who(a, "crash", "ann", TTL + 2)
        local took = proc.now() - t0
        assert.is_true(took <= TTL + 0.5, ("aged out after %.2f s"):format(took))
        print(("\n  [presence] killed process's members aged out after %.2f s (--presence-ttl %d)"):format(took, TTL))
        assert.equal("ann", who(b, "crash"))
        c = nil
    end)
end)
