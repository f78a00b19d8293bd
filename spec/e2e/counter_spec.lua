-- The sample route scripts/counter.lua: counts messages in memory, or in Redis
-- with --redis (shared by every process).
local server = require "server"
local rawws = require "rawws"
local redis_srv = require "redis"

local function hits(port, n)
    local c = rawws.open(port, "/counter")
    local got = {}
    for i = 1, n do got[i] = c:echo("hit") end
    c:close()
    return got
end

describe("the counter sample", function()
    local servers, redis = {}, nil

    after_each(function()
        for _, s in ipairs(servers) do s:stop() end
        servers = {}
        if redis then redis_srv.stop(redis) end
        redis = nil
    end)

    local function start(args)
        local s = server.start{ app = "scripts", args = args }
        servers[#servers + 1] = s
        return s
    end

    it("counts in memory without --redis", function()
        local s = start()
        assert.are.same({ "1", "2", "3" }, hits(s.port, 3))
        assert.are.same({ "4" }, hits(s.port, 1))
    end)

    it("counts in Redis with --redis, across processes", function()
        redis = redis_srv.start()
        local url = "redis://127.0.0.1:" .. redis.port
        local a, b = start({ "--redis", url }), start({ "--redis", url })
        assert.are.same({ "1", "2" }, hits(a.port, 2))
        assert.are.same({ "3", "4" }, hits(b.port, 2))
        assert.are.equal(":4", redis_srv.cmd(redis.port, "INCRBY counter:hits 0"))
    end)

    it("keeps the chat working beside it, with and without --redis", function()
        redis = redis_srv.start()
        for _, args in ipairs({ {}, { "--redis", "redis://127.0.0.1:" .. redis.port } }) do
            local s = start(args)
            local c = rawws.open(s.port, "/chat?nick=ann")
            assert.truthy(c:recv_frame())
            c:close()
            assert.are.same({ "1" }, hits(s.port, 1))
        end
    end)
end)
