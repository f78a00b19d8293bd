-- switchboard.redis: handlers and timers call a real redis-server on a free loopback
-- port and wait without blocking the server (spec/apps/redis/rc.lua).
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local proc = require "sbt_proc"
local cjson = require "cjson"
local redis_srv = require "redis"

local APP = server.root .. "/spec/apps/redis"

local function post_raw(body)
    return ("POST /rc HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        .. "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"):format(#body, body)
end

-- POST /rc with spec (a table): the decoded answer.
local function rc(port, spec)
    local status, _, body = rawws.http(port, post_raw(cjson.encode(spec)))
    assert.are.equal(200, status, body)
    return cjson.decode(body)
end

local function get(port, path)
    local status, _, body = rawws.get(port, path)
    assert.are.equal(200, status, body)
    return cjson.decode(body)
end

-- The results of one connection's commands.
local function calls(port, cmds, extra)
    local spec = { cmds = cmds }
    for k, v in pairs(extra or {}) do spec[k] = v end
    local r = rc(port, spec)
    assert.is_nil(r.connect_err)
    return r.results
end

-- INFO clients straight from Redis (not through the server).
local function info_clients(rport)
    local c = redis_srv.client(rport)
    if not c then return "" end
    c:send("INFO clients\r\n")
    local n = tonumber(((c:receive("*l")) or ""):match("^%$(%d+)"))
    local body = n and c:receive(n + 2) or ""
    c:close()
    return body
end

local function clients(port)
    local r = calls(port, { { "INFO", "clients" } })
    return tonumber(r[1].v:match("connected_clients:(%d+)"))
end

describe("switchboard.redis", function()
    local redis, s, url

    lazy_setup(function()
        redis = redis_srv.start()
        url = "redis://127.0.0.1:" .. redis.port
        s = server.start{ app = APP, args = { "--redis", url, "--redis-pool", "4" } }
    end)

    lazy_teardown(function()
        if s then s:stop() end
        redis_srv.stop(redis)
    end)

    it("maps INCR, GET, SET, LRANGE and HGETALL replies to Lua values", function()
        local r = calls(s.port, {
            { "DEL", "hits", "l", "h" },
            { "INCR", "hits" }, { "INCR", "hits" },
            { "SET", "name", "ada" }, { "GET", "name" },
            { "RPUSH", "l", "a", "b", "c" }, { "LRANGE", "l", 0, -1 }, -- JSON: 0.0 and -1.0
            { "HSET", "h", "f", "v" }, { "HGETALL", "h" },
            { "SET", "bin", "a\0b" }, { "STRLEN", "bin" },
        })
        assert.are.same({ v = 1, type = "number" }, r[2])
        assert.are.same({ v = 2, type = "number" }, r[3])
        assert.are.same({ v = "OK", type = "string" }, r[4]) -- a status reply is a string
        assert.are.same({ v = "ada", type = "string" }, r[5])
        assert.are.same({ "a", "b", "c" }, r[7].v)
        assert.are.same({ "f", "v" }, r[9].v) -- flat, as Redis sends it
        assert.are.equal(3, r[11].v)
    end)

    it("returns nil for a nil reply and keeps an array's length with null", function()
        local r = calls(s.port, { { "DEL", "nope" }, { "GET", "nope" }, { "SET", "x", "1" },
            { "MGET", "x", "nope", "x" } })
        assert.are.same({ type = "nil" }, r[2]) -- nil and no error
        assert.are.same({ "1", cjson.null, "1" }, r[4].v)
    end)

    it("returns nil, 'redis: ...' for an error reply and goes on", function()
        local r = calls(s.port, { { "SET", "str", "x" }, { "INCR", "str" }, { "NOSUCHCMD" },
            { "PING" } })
        assert.are.equal("nil", r[2].type)
        assert.are.equal("redis: ERR value is not an integer or out of range", r[2].err)
        assert.matches("^redis: ERR unknown command", r[3].err)
        assert.are.same({ v = "PONG", type = "string" }, r[4])
    end)

    it("answers 'closed' on a connection used after close", function()
        local r = calls(s.port, { { "PING" } }, { after_close = true })
        assert.are.same({ err = "closed", type = "nil" }, r[2])
    end)

    it("defaults to the --redis URL and says it as sb.redis.url", function()
        local r = rc(s.port, { cmds = { { "PING" } } })
        assert.are.equal(url, r.default_url)
        r = rc(s.port, { url = url .. "/2", cmds = { { "SET", "db2", "yes" } } })
        assert.are.equal("OK", r.results[1].v)
        -- the URL's db was SELECTed: db 0 does not have the key
        assert.are.equal("nil", calls(s.port, { { "GET", "db2" } })[1].type)
        r = rc(s.port, { url = url .. "/2", cmds = { { "GET", "db2" } } })
        assert.are.equal("yes", r.results[1].v)
    end)

    it("reuses pooled connections: the client count stays bounded", function()
        local before = clients(s.port)
        for _ = 1, 200 do calls(s.port, { { "INCR", "pooled" } }) end
        assert.are.equal(before, clients(s.port))
        assert.are.equal(200, tonumber(calls(s.port, { { "GET", "pooled" } })[1].v))
    end)

    it("raises on misuse, naming the argument", function()
        local r = get(s.port, "/rc?misuse=call_table")
        assert.is_false(r.ok)
        assert.matches("bad argument #2 to 'call' %(string or number expected", r.err)
        r = get(s.port, "/rc?misuse=call_none")
        assert.matches("bad argument #1 to 'call'", r.err)
        r = get(s.port, "/rc?misuse=settimeout")
        assert.matches("bad argument #1 to 'settimeout'", r.err)
        r = get(s.port, "/rc?misuse=connect_url")
        assert.matches("bad argument #1 to 'connect' %(http://x: expected redis://", r.err)
        r = get(s.port, "/rc?misuse=connect_opts")
        assert.matches("bad argument #2 to 'connect' %(table expected", r.err)
        r = get(s.port, "/rc?misuse=shared")
        assert.matches("bad argument #1 to 'call' %(another call is in flight on this connection%)", r.err)
    end)

    it("completes 1,000 timers that each connect and INCR at once", function()
        calls(s.port, { { "DEL", "many" } })
        assert.are.equal(1000, rc(s.port, { many = 1000, key = "many" }).started)
        local st = server.wait_for(function()
            local r = get(s.port, "/rc?many=status")
            return r.done == 1000 and r
        end, 60, "1000 timers to finish")
        assert.are.same({}, st.errors)
        assert.are.equal(1000, tonumber(calls(s.port, { { "GET", "many" } })[1].v))
        -- the pool kept at most --redis-pool idle connections of the 1,000; beside them
        -- are the db 2 pool's one and the --redis link's two
        server.wait_for(function() return clients(s.port) <= 4 + 1 + 2 end, 10,
            "connections to close")
    end)

    it("keeps a connection's order when message INCRs then sends the count", function()
        calls(s.port, { { "DEL", "ordered" } })
        local c = rawws.open(s.port, "/rc")
        local buf = {}
        for _ = 1, 100 do buf[#buf + 1] = wsframe.text("ordered") end
        assert(c:send(table.concat(buf)))
        for i = 1, 100 do
            local f = assert(c:recv_frame())
            assert.are.equal(tostring(i), f.payload)
        end
        c:close()
    end)
end)

describe("switchboard.redis when Redis fails", function()
    local redis, s, url

    before_each(function()
        redis = redis_srv.start()
        url = "redis://127.0.0.1:" .. redis.port
        s = server.start{ app = APP, args = { "--redis", url, "--redis-optional",
            "--metrics-path", "/metrics" } }
    end)

    after_each(function()
        if s then s:stop() end
        redis_srv.stop(redis)
    end)

    it("answers 'timeout' within the timeout when Redis is stopped", function()
        calls(s.port, { { "PING" } }) -- one pooled connection
        proc.kill(redis.pid, proc.SIGSTOP)
        local t0 = proc.now()
        local r = calls(s.port, { { "PING" } }, { timeout = 0.5 })
        local took = proc.now() - t0
        assert.are.same({ err = "timeout", type = "nil" }, r[1])
        assert.is_true(took >= 0.45 and took < 3, "took " .. took)
        -- a new connection cannot finish its handshake either
        t0 = proc.now()
        local c = rc(s.port, { timeout = 0.3, cmds = { { "PING" } } })
        local got = c.connect_err or c.results[1].err
        assert.are.equal("timeout", got)
        assert.is_true(proc.now() - t0 < 3)
        proc.kill(redis.pid, proc.SIGCONT)
        -- the timed-out connection was dropped, not pooled: the next call works
        assert.are.equal("PONG", calls(s.port, { { "PING" } })[1].v)
        local _, _, m = rawws.get(s.port, "/metrics")
        assert.matches('switchboard_redis_calls_total{outcome="timeout"} [12]\n', m)
        assert.matches('switchboard_redis_calls_total{outcome="ok"} %d+', m)
    end)

    it("answers 'timeout' from red:settimeout", function()
        proc.kill(redis.pid, proc.SIGSTOP)
        local r = calls(s.port, { { "PING" } }, { settimeout = 0.3 })
        proc.kill(redis.pid, proc.SIGCONT)
        assert.are.equal("timeout", r[1].err)
    end)

    it("answers 'connection refused' when Redis is gone", function()
        calls(s.port, { { "PING" } }) -- a pooled connection, which dies with Redis
        redis_srv.stop(redis)
        redis = nil
        server.wait_for(function()
            local r = rc(s.port, { cmds = { { "PING" } } })
            return r.connect_err == "connection refused" or (r.results and r.results[1].err == "closed")
        end, 5, "the pooled connection to go")
        local r = rc(s.port, { cmds = { { "PING" } } })
        assert.are.equal("connection refused", r.connect_err)
        local _, _, m = rawws.get(s.port, "/metrics")
        assert.matches('switchboard_redis_connects_total{outcome="failed"} [1-9]', m)
    end)

    it("answers 'closed' for a call in flight when Redis goes", function()
        local c = rawws.connect(s.port)
        c:send(post_raw(cjson.encode({ cmds = { { "BLPOP", "never", "5" } } })))
        -- the call is in flight once Redis counts a blocked client
        server.wait_for(function()
            return info_clients(redis.port):match("blocked_clients:1")
        end, 5, "BLPOP to block")
        redis_srv.stop(redis)
        redis = nil
        local status, _, body = c:http()
        c:close()
        assert.are.equal(200, status)
        assert.are.same({ err = "closed", type = "nil" }, cjson.decode(body).results[1])
    end)
end)

describe("switchboard.redis and the handler's life", function()
    local redis, s, app

    before_each(function()
        redis = redis_srv.start()
        app = server.tmpname(".app")
        assert(os.execute("mkdir -p '" .. app .. "' && cp '" .. APP .. "/rc.lua' '" .. app .. "/'"))
    end)

    after_each(function()
        if s then s:stop() end
        s = nil
        redis_srv.stop(redis)
        os.execute("rm -rf '" .. app .. "'")
    end)

    local function start(args)
        local argv = { "--redis", "redis://127.0.0.1:" .. redis.port }
        for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
        s = server.start{ app = app, args = argv }
    end

    it("ends a call that outlives --handler-timeout and closes its connection", function()
        start({ "--handler-timeout", "0.5" })
        local t0 = proc.now()
        local status = rawws.http(s.port, post_raw(cjson.encode({ cmds = { { "BLPOP", "never", "5" } } })))
        assert.are.equal(500, status)
        assert.is_true(proc.now() - t0 < 3)
        -- the abandoned call's connection is gone from Redis, not pooled
        server.wait_for(function()
            return info_clients(redis.port):match("blocked_clients:0")
        end, 5, "the blocked client to go")
        assert.are.equal("PONG", calls(s.port, { { "PING" } })[1].v)
    end)

    it("shuts down cleanly while a call waits", function()
        start({ "--drain-timeout", "0.5" })
        local c = rawws.connect(s.port)
        c:send(post_raw(cjson.encode({ cmds = { { "BLPOP", "never", "30" } } })))
        server.wait_for(function()
            return info_clients(redis.port):match("blocked_clients:1")
        end, 5, "BLPOP to block")
        s:signal(proc.SIGTERM)
        s:wait_exit(15)
        c:close()
        s:stop() -- raises on a sanitizer report (leaks included)
        s = nil
    end)

    it("answers 'too many calls' past --redis-max-calls", function()
        start({ "--redis-max-calls", "1" })
        local c = rawws.connect(s.port)
        c:send(post_raw(cjson.encode({ cmds = { { "BLPOP", "never", "1" } } })))
        server.wait_for(function()
            return info_clients(redis.port):match("blocked_clients:1")
        end, 5, "BLPOP to block")
        assert.are.equal("too many calls", rc(s.port, { cmds = { { "PING" } } }).connect_err)
        local status, _, body = c:http() -- BLPOP's own timeout: a nil reply
        c:close()
        assert.are.equal(200, status)
        assert.are.same({ type = "nil" }, cjson.decode(body).results[1])
        assert.are.equal("PONG", calls(s.port, { { "PING" } })[1].v)
    end)

    it("refuses a connect at a script's top level, even with a pooled connection", function()
        start()
        assert.are.equal("PONG", calls(s.port, { { "PING" } })[1].v) -- one is pooled now
        server.write_file(app .. "/top.lua",
            "local red = require('switchboard').redis.connect()\nreturn {}\n")
        s:wait_log("top%.lua.-'connect' cannot wait here")
    end)
end)

-- A host name resolves with the loop's evdns (never hiredis's blocking getaddrinfo):
-- --resolver points it at a nameserver on loopback whose slow.sb.test answers late.
describe("switchboard.redis with a host name", function()
    local upstream = require "upstream"
    local redis, dns, s, app

    local function url(host) return ("redis://%s:%d"):format(host, redis.port) end

    local function start(args)
        local argv = { "--redis", url("127.0.0.1"), "--resolver", dns.addr }
        for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
        s = server.start{ app = app, args = argv }
    end

    -- POST /rc on its own connection, not waited for: the connection.
    local function post_async(spec)
        local c = rawws.connect(s.port)
        c:send(post_raw(cjson.encode(spec)))
        return c
    end

    local function answer(c)
        local status, _, body = c:http()
        c:close()
        assert.are.equal(200, status, body)
        return cjson.decode(body)
    end

    lazy_setup(function()
        redis = redis_srv.start()
        dns = upstream.dns{ delay = 1.5 }
    end)

    lazy_teardown(function()
        if dns then dns:stop() end
        redis_srv.stop(redis)
    end)

    before_each(function()
        app = server.tmpname(".app")
        assert(os.execute("mkdir -p '" .. app .. "' && cp '" .. APP .. "/rc.lua' '" .. app .. "/'"))
    end)

    after_each(function()
        if s then s:stop() end -- raises on a sanitizer report (leaks included)
        s = nil
        os.execute("rm -rf '" .. app .. "'")
    end)

    it("connects to localhost (/etc/hosts) and to a name the nameserver answers", function()
        start()
        assert.are.equal("PONG", calls(s.port, { { "PING" } }, { url = url("localhost") })[1].v)
        assert.are.equal("PONG", calls(s.port, { { "PING" } }, { url = url("fast.sb.test") })[1].v)
    end)

    it("returns nil, 'dns: ...' for a name that does not exist", function()
        start()
        local r = rc(s.port, { url = url("no-such-host.sb.test"), cmds = { { "PING" } } })
        assert.matches("^dns: ", r.connect_err)
        assert.are.equal("PONG", calls(s.port, { { "PING" } })[1].v)
    end)

    it("answers other requests while a name resolves, then connects", function()
        start()
        local t0 = proc.now()
        local slow = post_async({ url = url("slow.sb.test"), cmds = { { "PING" } } })
        proc.sleep(0.2) -- the lookup is out
        for _ = 1, 3 do
            local t1 = proc.now()
            assert.are.equal("PONG", calls(s.port, { { "PING" } })[1].v)
            assert.is_true(proc.now() - t1 < 0.5, "a request waited for the lookup")
        end
        assert.is_true(proc.now() - t0 < 1.2)
        local r = answer(slow)
        assert.is_nil(r.connect_err)
        assert.are.equal("PONG", r.results[1].v)
        assert.is_true(proc.now() - t0 >= 1.4, "it did not wait for the nameserver")
    end)

    it("says 'dns: timeout' when the name outlives the connect's timeout", function()
        start()
        local t0 = proc.now()
        local r = rc(s.port, { url = url("slow.sb.test"), timeout = 0.3, cmds = { { "PING" } } })
        assert.are.equal("dns: timeout", r.connect_err)
        assert.is_true(proc.now() - t0 < 1.2)
        proc.sleep(1.5) -- the late answer finds nobody
        assert.are.equal("PONG", calls(s.port, { { "PING" } })[1].v)
    end)

    it("ends a handler waiting on a name at --handler-timeout", function()
        start({ "--handler-timeout", "0.3" })
        local c = post_async({ url = url("slow.sb.test"), cmds = { { "PING" } } })
        local status = c:http()
        c:close()
        assert.are.equal(500, status)
        proc.sleep(1.5)
        assert.are.equal("PONG", calls(s.port, { { "PING" } })[1].v)
    end)

    it("finishes a lookup on the old version across a reload", function()
        start()
        local slow = post_async({ url = url("slow.sb.test"), cmds = { { "PING" } } })
        proc.sleep(0.2)
        server.write_file(app .. "/rc.lua", server.read_file(app .. "/rc.lua") .. "\n")
        s:wait_log("reloaded %S*/rc%.lua")
        assert.are.equal("PONG", answer(slow).results[1].v)
    end)

    it("shuts down while a name resolves", function()
        start({ "--drain-timeout", "0.3" })
        local c = post_async({ url = url("slow.sb.test"), cmds = { { "PING" } } })
        proc.sleep(0.2)
        s:signal(proc.SIGTERM)
        s:wait_exit(10)
        c:close()
    end)
end)
