-- switchboard.subscribe(topic, fn): a script's own subscriber, run for every
-- publication on the topic from this process, another process (--redis) or a
-- backend's PUBLISH; switchboard.unsubscribe; owned by the script version.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local redis_srv = require "redis"
local cjson = require "cjson"

local APP = server.root .. "/spec/apps/backend"

local function get(s, q)
    local status, _, body = rawws.get(s.port, "/sub?" .. q)
    assert.equal(200, status)
    return body
end

local function seen(s, topic)
    return cjson.decode(get(s, "get=" .. topic))
end

local function wait_seen(s, topic, want, what)
    local last
    local ok = pcall(server.wait_for, function()
        last = seen(s, topic)
        return #last >= #want
    end, 10)
    assert(ok, (what or topic) .. ": saw " .. cjson.encode(last or {}))
    assert.same(want, last)
end

local numsub = redis_srv.numsub

local resp = redis_srv.resp

describe("switchboard.subscribe in one process", function()
    local s
    lazy_setup(function()
        s = server.start { app = APP, args = { "--metrics-path", "/metrics" } }
    end)
    lazy_teardown(function()
        if s then s:stop() end
    end)

    it("runs fn for publications of the same process: sb.publish and ws:publish", function()
        assert.equal("true", get(s, "add=same"))
        assert.equal("ok", get(s, "pub=same&msg=one"))
        local c = rawws.open(s.port, "/room?topic=same")
        assert.equal("ready", assert(c:recv_frame()).payload)
        assert(c:send(wsframe.text("pub:two")))
        assert(c:send(wsframe.binary("\0\1\255")))
        wait_seen(s, "same", { "t:one", "t:two", "b:0001ff" })
        c:close()
        assert.equal(1, s:metric("switchboard_script_subscriptions"))
        assert.is_true(s:metric("switchboard_script_subscription_calls_total") >= 3)
        -- the same function twice is one subscription
        assert.equal("false", get(s, "add=same"))
        assert.equal("true", get(s, "del=same"))
    end)

    it("runs one subscription's messages in order, one at a time, even when fn waits", function()
        assert.equal("true", get(s, "add=slow&slow=0.02"))
        local want = {}
        for i = 1, 20 do
            get(s, "pub=slow&msg=m" .. i)
            want[i] = "t:m" .. i
        end
        wait_seen(s, "slow", want)
        get(s, "del=slow")
    end)

    it("logs an error in fn and goes on with the next message", function()
        assert.equal("true", get(s, "add=err"))
        get(s, "pub=err&msg=boom")
        get(s, "pub=err&msg=after")
        wait_seen(s, "err", { "t:boom?", "t:after" })
        s:wait_log("boom on err")
        get(s, "del=err")
    end)

    it("stops with sb.unsubscribe (all of the topic's, or one function's)", function()
        assert.equal("true", get(s, "add=u"))
        get(s, "pub=u&msg=1")
        wait_seen(s, "u", { "t:1" })
        assert.equal("true", get(s, "del=u&same=1"))
        assert.equal("false", get(s, "del=u&same=1"))
        get(s, "pub=u&msg=2")
        assert.equal("true", get(s, "add=u"))
        get(s, "pub=u&msg=3")
        wait_seen(s, "u", { "t:1", "t:3" })
        assert.equal("true", get(s, "del=u"))
        assert.equal("false", get(s, "del=u"))
        assert.equal(0, s:metric("switchboard_script_subscriptions"))
    end)

    it("sees a history topic's publications as published (not as formatted)", function()
        assert.equal("true", get(s, "add=kept:1"))
        local c = rawws.open(s.port, "/room?topic=kept:1")
        assert.equal("ready", assert(c:recv_frame()).payload)
        get(s, "pub=kept:1&msg=first")
        assert(c:send(wsframe.text("pub:second")))
        assert.equal("1:first", assert(c:recv_frame()).payload) -- the subscribers' frame
        assert.equal("2:second", assert(c:recv_frame()).payload)
        wait_seen(s, "kept:1", { "t:first", "t:second" })
        c:close()
        get(s, "del=kept:1")
    end)

    it("raises on misuse, naming the function and argument", function()
        assert.matches("bad argument #1 to 'subscribe' %(string expected, got nil%)",
            get(s, "misuse=notopic"))
        assert.matches("bad argument #1 to 'subscribe' %(topic must not be empty%)",
            get(s, "misuse=empty"))
        assert.matches("bad argument #2 to 'subscribe' %(function expected, got string%)",
            get(s, "misuse=nofn"))
        assert.matches("bad argument #2 to 'unsubscribe' %(function expected, got number%)",
            get(s, "misuse=badfn"))
    end)
end)

describe("switchboard.subscribe and a reload", function()
    local s, app
    local SCRIPT = [[
local sb = require "switchboard"
sb.shared.seen = sb.shared.seen or {}
sb.subscribe("news", function(msg) table.insert(sb.shared.seen, "%s:" .. msg) end)
return { request = function(req)
    if req.query.pub then sb.publish("news", req.query.pub) return { status = 200, body = "ok" } end
    return { status = 200, body = table.concat(sb.shared.seen, ",") }
end }
]]
    lazy_setup(function()
        app = server.tmpname("-app")
        assert(os.execute("mkdir -p '" .. app .. "'"))
        server.write_file(app .. "/news.lua", SCRIPT:format("v1"))
        s = server.start { app = app }
    end)
    lazy_teardown(function()
        if s then s:stop() end
        os.execute("rm -rf '" .. app .. "'")
    end)

    local function news(q)
        local status, _, body = rawws.get(s.port, "/news" .. (q or ""))
        assert.equal(200, status)
        return body
    end

    it("replaces the old version's subscriptions with the new version's", function()
        news("?pub=a")
        server.wait_for(function() return news() == "v1:a" end, 5, "v1 to see a")
        server.write_file(app .. "/news.lua", SCRIPT:format("v2"))
        s:wait_log("reloaded %S*/news%.lua %(route /news, version 2%)")
        news("?pub=b")
        server.wait_for(function() return news() == "v1:a,v2:b" end, 5, "v2 alone to see b")
        -- a version that fails to load keeps the old one's
        server.write_file(app .. "/news.lua", SCRIPT:format("v3") .. "\nerror('broken')")
        s:wait_log("reload of %S*/news%.lua failed")
        news("?pub=c")
        server.wait_for(function() return news() == "v1:a,v2:b,v2:c" end, 5, "v2 to see c")
    end)
end)

describe("switchboard.subscribe with --redis", function()
    local rport, redis, a, b
    lazy_setup(function()
        rport = redis_srv.free_port()
        redis = redis_srv.start(rport)
        local url = "redis://127.0.0.1:" .. rport
        a = server.start { app = APP, args = { "--redis", url } }
        b = server.start { app = APP, args = { "--redis", url } }
        a:wait_log("redis: connected")
        b:wait_log("redis: connected")
    end)
    lazy_teardown(function()
        redis_srv.stop_all(redis, { a, b })
    end)

    it("subscribes the Redis channel for a topic with only script subscribers", function()
        assert.equal(0, numsub(rport, "g"))
        assert.equal("true", get(a, "add=g"))
        server.wait_for(function() return numsub(rport, "g") == 1 end, 5, "a subscribed")
        assert.equal("true", get(b, "add=g"))
        server.wait_for(function() return numsub(rport, "g") == 2 end, 5, "b subscribed")
    end)

    it("sees publications from this process, the other one and a backend, once each", function()
        get(a, "pub=g&msg=from-a")
        wait_seen(a, "g", { "t:from-a" })
        wait_seen(b, "g", { "t:from-a" })
        get(b, "pub=g&msg=from-b")
        wait_seen(a, "g", { "t:from-a", "t:from-b" })
        wait_seen(b, "g", { "t:from-a", "t:from-b" })
        assert.equal(":2", resp(rport, "PUBLISH", "sb:g", "from-backend"))
        assert.equal(":2", resp(rport, "PUBLISH", "sb:g", "\255b\1\2"))
        local want = { "t:from-a", "t:from-b", "t:from-backend", "b:0102" }
        wait_seen(a, "g", want)
        wait_seen(b, "g", want)
    end)

    it("sees a history topic's publications from every process once, as published", function()
        assert.equal("true", get(a, "add=kept:r"))
        assert.equal("true", get(b, "add=kept:r"))
        server.wait_for(function() return numsub(rport, "kept:r") == 2 end, 5, "both subscribed")
        get(a, "pub=kept:r&msg=x1")
        get(b, "pub=kept:r&msg=x2")
        get(a, "pub=kept:r&msg=x3")
        -- positions come from Redis: every process sees one order
        local want = seen(a, "kept:r")
        server.wait_for(function()
            want = seen(a, "kept:r")
            return #want == 3
        end, 5, "a to see 3")
        wait_seen(b, "kept:r", want)
        table.sort(want)
        assert.same({ "t:x1", "t:x2", "t:x3" }, want)
        get(a, "del=kept:r")
        get(b, "del=kept:r")
    end)

    it("unsubscribes the Redis channel when the last script subscriber leaves", function()
        assert.equal("true", get(a, "del=g"))
        server.wait_for(function() return numsub(rport, "g") == 1 end, 5, "a unsubscribed")
        assert.equal("true", get(b, "del=g"))
        server.wait_for(function() return numsub(rport, "g") == 0 end, 5, "b unsubscribed")
    end)
end)
