-- scripts/counter.lua under switchboard.testing: in memory, and against the fake's
-- in-memory Redis when the app is given a --redis URL.
local testing = require "switchboard.testing"

local function sent(c)
    local r = {}
    for i, m in ipairs(c.sent) do r[i] = m.data end
    return r
end

describe("the counter sample, under switchboard.testing", function()
    it("counts in memory without --redis", function()
        local c = testing.app("scripts"):load("counter"):connect()
        c:message("a")
        c:message("b")
        assert.are.same({ "1", "2" }, sent(c))
    end)

    it("counts in the fake Redis with --redis", function()
        local app = testing.app("scripts", { redis = "redis://127.0.0.1:6379" })
        local route = app:load("counter")
        local a, b = route:connect(), route:connect()
        a:message("x")
        b:message("x")
        a:message("x")
        assert.are.same({ "1", "3" }, sent(a))
        assert.are.same({ "2" }, sent(b))
        assert.are.equal("3", app.redis["redis://127.0.0.1:6379"]["counter:hits"])
    end)
end)

describe("switchboard.testing's fake Redis", function()
    local sb

    before_each(function()
        sb = testing.app("scripts", { redis = "redis://fake:6379" }).module
    end)

    it("answers GET, SET, INCR, DEL and EXISTS as Redis does", function()
        local red = sb.redis.connect()
        assert.are.equal("PONG", red:call("PING"))
        assert.are.equal("OK", red:call("SET", "k", "v"))
        assert.are.equal("v", red:call("GET", "k"))
        assert.is_nil((red:call("GET", "nope")))
        assert.are.equal(1, red:call("INCR", "n"))
        assert.are.equal(11, red:call("INCRBY", "n", 10))
        assert.are.equal(1, red:call("EXISTS", "n"))
        assert.are.equal(2, red:call("DEL", "n", "k", "nope"))
        local v = red:call("INCR", "x") -- absent: 1
        assert.are.equal(1, v)
        red:call("SET", "s", "abc")
        local err
        v, err = red:call("INCR", "s")
        assert.is_nil(v)
        assert.are.equal("redis: ERR value is not an integer or out of range", err)
        v, err = red:call("LPUSH", "l", "a")
        assert.is_nil(v)
        assert.matches("^redis: ERR unknown command 'LPUSH'", err)
        red:close()
        assert.are.same({ nil, "closed" }, { red:call("PING") })
    end)

    it("raises on misuse, naming the argument, as the server does", function()
        local red = sb.redis.connect("redis://other:1/0")
        assert.has_error(function() red:call("GET", {}) end,
            "bad argument #2 to 'call' (string or number expected, got table)")
        assert.has_error(function() sb.redis.connect("http://x") end,
            "bad argument #1 to 'connect' (http://x: expected redis://host:port[/db])")
        local bare = testing.app("scripts").module
        assert.is_nil(bare.redis.url)
        assert.has_error(function() bare.redis.connect() end,
            "bad argument #1 to 'connect' (no URL given and the server has no --redis)")
    end)
end)
