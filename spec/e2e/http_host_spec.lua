-- RFC 9112 3.2 on the real server: an HTTP/1.1 request without Host, or any
-- request with two, is answered 400 and the connection closed; plain GETs and
-- WebSocket upgrades alike. One Host (or HTTP/1.0 without one) is served.
local server = require "server"
local rawws = require "rawws"

local function head(lines)
    return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

describe("the Host header", function()
    local s
    setup(function() s = server.start{ app = "spec/apps/core" } end)
    teardown(function() s:stop() end)
    after_each(function()
        assert.is_true(s:running(), "the server must stay up")
    end)

    -- One exchange; returns status, body, and whether the server then closed.
    local function exchange(bytes)
        local c = rawws.connect(s.port)
        c:send(bytes)
        local status, _, body = c:http()
        local closed = c:eof(5)
        c:close()
        return status, body, closed
    end

    local refused = {
        { "a plain GET without Host", head{ "GET /a.txt HTTP/1.1" } },
        { "a plain GET with two Host headers", head{ "GET /a.txt HTTP/1.1", "Host: x", "Host: y" } },
        { "a plain GET with Host twice in other cases", head{ "GET /a.txt HTTP/1.1", "host: x", "HOST: x" } },
        { "an HTTP/1.0 GET with two Host headers", head{ "GET /a.txt HTTP/1.0", "Host: x", "Host: x" } },
        { "a HEAD without Host", head{ "HEAD /a.txt HTTP/1.1" } },
    }
    for _, case in ipairs(refused) do
        it("answers 400 to " .. case[1], function()
            local status, _, closed = exchange(case[2])
            assert.are.equal(400, status)
            assert.is_true(closed, "the connection should be closed after the 400")
        end)
    end

    it("answers 400 with the handshake's reason to an upgrade without Host or with two", function()
        local without = rawws.request("/echo"):gsub("Host: 127%.0%.0%.1\r\n", "")
        local status, body = exchange(without)
        assert.are.equal(400, status)
        assert.are.equal("Host header missing or repeated\n", body)
        status, body = exchange(rawws.request("/echo", { "Host: other" }))
        assert.are.equal(400, status)
        assert.are.equal("Host header missing or repeated\n", body)
    end)

    it("serves a GET with one Host, and an HTTP/1.0 GET without one", function()
        local status, body = exchange(head{ "GET /a.txt HTTP/1.1", "Host: x", "Connection: close" })
        assert.are.equal(200, status)
        assert.are.equal("hello from a\n", body)
        status, body = exchange(head{ "GET /a.txt HTTP/1.0" })
        assert.are.equal(200, status)
        assert.are.equal("hello from a\n", body)
        local c = rawws.open(s.port, "/echo")
        assert.are.equal("one host", c:echo("one host"))
        c:close()
    end)
end)
