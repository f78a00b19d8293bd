-- The opening handshake and plain HTTP against the real server, with raw
-- sockets: every bad request gets its exact status and reason, the 101 is
-- byte-exact, and a bystander connection keeps working throughout.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"

local APP = "spec/apps/core"

local function head(lines)
    return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

-- A valid upgrade request for /echo with one line replaced (name = nil drops it).
local function upgrade_with(changes, extra)
    local order = { "Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version" }
    local vals = {
        Host = "127.0.0.1", Upgrade = "websocket", Connection = "Upgrade",
        ["Sec-WebSocket-Key"] = rawws.KEY, ["Sec-WebSocket-Version"] = "13",
    }
    local lines = { (changes.request_line or "GET /echo HTTP/1.1") }
    for _, name in ipairs(order) do
        local v = vals[name]
        if changes[name] ~= nil then v = changes[name] end
        if v then lines[#lines + 1] = name .. ": " .. v end
    end
    for _, l in ipairs(extra or {}) do lines[#lines + 1] = l end
    return head(lines)
end

describe("handshake and plain HTTP (raw client)", function()
    local s, bystander
    setup(function() s = server.start{ app = APP } end)
    teardown(function() s:stop() end)
    before_each(function() bystander = rawws.open(s.port, "/echo") end)
    after_each(function()
        assert.is_true(s:running(), "the server must stay up")
        assert.are.equal("still here", bystander:echo("still here"))
        bystander:close()
    end)

    -- Send bytes, read one response, and check the server then closes TCP.
    local function exchange(bytes, keep_open)
        local c = rawws.connect(s.port)
        c:send(bytes)
        local status, headers, body, rawhead = c:http()
        if not keep_open then
            assert.is_true(c:eof(5), "server should close the connection after an error")
            c:close()
        end
        return status, headers, body, rawhead, c
    end

    local refusals = {
        { "a POST", upgrade_with{ request_line = "POST /echo HTTP/1.1" }, 400,
          "WebSocket upgrade needs GET\n" },
        { "HTTP/1.0", upgrade_with{ request_line = "GET /echo HTTP/1.0" }, 400,
          "WebSocket upgrade needs HTTP/1.1\n" },
        { "no Host", upgrade_with{ Host = false }, 400, "Host header missing or repeated\n" },
        { "two Host headers", upgrade_with({}, { "Host: other" }), 400,
          "Host header missing or repeated\n" },
        { "Upgrade without websocket", upgrade_with{ Upgrade = "h2c" }, 400,
          "Upgrade header must name websocket\n" },
        { "Connection without upgrade", upgrade_with{ Connection = "keep-alive" }, 400,
          "Connection header must name upgrade\n" },
        { "no Sec-WebSocket-Key", upgrade_with{ ["Sec-WebSocket-Key"] = false }, 400,
          "Sec-WebSocket-Key missing, repeated or not 16 bytes of base64\n" },
        { "a key of 15 bytes", upgrade_with{ ["Sec-WebSocket-Key"] = "AAAAAAAAAAAAAAAAAAAA" }, 400,
          "Sec-WebSocket-Key missing, repeated or not 16 bytes of base64\n" },
        { "a key of 17 bytes", upgrade_with{ ["Sec-WebSocket-Key"] = "AAAAAAAAAAAAAAAAAAAAAAA=" }, 400,
          "Sec-WebSocket-Key missing, repeated or not 16 bytes of base64\n" },
        { "a key that is not base64", upgrade_with{ ["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ!=" },
          400, "Sec-WebSocket-Key missing, repeated or not 16 bytes of base64\n" },
        { "a repeated key", upgrade_with({}, { "Sec-WebSocket-Key: " .. rawws.KEY }), 400,
          "Sec-WebSocket-Key missing, repeated or not 16 bytes of base64\n" },
        { "no Sec-WebSocket-Version", upgrade_with{ ["Sec-WebSocket-Version"] = false }, 426,
          "Sec-WebSocket-Version must be 13\n" },
        { "version 8", upgrade_with{ ["Sec-WebSocket-Version"] = "8" }, 426,
          "Sec-WebSocket-Version must be 13\n" },
        { "version 13 and 8", upgrade_with({}, { "Sec-WebSocket-Version: 8" }), 426,
          "Sec-WebSocket-Version must be 13\n" },
    }
    for _, case in ipairs(refusals) do
        it("answers " .. case[3] .. " with the reason to " .. case[1], function()
            local status, headers, body = exchange(case[2])
            assert.are.equal(case[3], status)
            assert.are.equal(case[4], body)
            assert.are.equal("text/plain; charset=utf-8", headers["content-type"])
            assert.are.equal("close", headers["connection"])
            if case[3] == 426 then
                assert.are.equal("13", headers["sec-websocket-version"])
            end
        end)
    end

    it("answers the RFC's example key with a byte-exact 101", function()
        local c = rawws.connect(s.port)
        c:send(rawws.request("/echo"))
        local expected = "HTTP/1.1 101 Switching Protocols\r\n" ..
            "Upgrade: websocket\r\n" ..
            "Connection: Upgrade\r\n" ..
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        assert.are.equal(expected, c:read(#expected))
        assert.are.equal("hi", c:echo("hi"))
        c:close()
    end)

    it("accepts Connection: keep-alive, Upgrade and tokens in any case", function()
        local c = rawws.connect(s.port)
        c:send(upgrade_with{ Connection = "keep-alive, Upgrade", Upgrade = "WebSocket" })
        local status, headers = c:http_head()
        assert.are.equal(101, status)
        assert.are.equal(rawws.ACCEPT, headers["sec-websocket-accept"])
        assert.are.equal("ok", c:echo("ok"))
        c:close()
    end)

    it("takes a request that arrives one byte at a time", function()
        local c = rawws.connect(s.port)
        local req = rawws.request("/echo")
        for i = 1, #req do
            assert(c:send(req:sub(i, i)))
            if i % 16 == 0 then require("sbt_proc").sleep(0.001) end
        end
        local status = c:http_head()
        assert.are.equal(101, status)
        assert.are.equal("slow", c:echo("slow"))
        c:close()
    end)

    it("keeps the first frame sent in the same write as the request", function()
        local c = rawws.connect(s.port)
        c:send(rawws.request("/echo") .. wsframe.text("first") .. wsframe.binary("\0second"))
        assert.are.equal(101, (c:http_head()))
        assert.are.same({ fin = true, rsv = 0, opcode = 1, payload = "first" }, c:recv_frame())
        assert.are.same({ fin = true, rsv = 0, opcode = 2, payload = "\0second" }, c:recv_frame())
        c:close()
    end)

    it("answers 404 to an upgrade on an unknown path", function()
        local status, _, body = exchange(rawws.request("/nowhere"))
        assert.are.equal(404, status)
        assert.are.equal("404 Not Found\n", body)
    end)

    it("answers 404 to a plain GET of an unknown path", function()
        local status = exchange(head{ "GET /nowhere.txt HTTP/1.1", "Host: x" })
        assert.are.equal(404, status)
    end)

    it("answers 426 with Upgrade: websocket to a plain GET on a WebSocket route", function()
        local status, headers, body = exchange(head{ "GET /echo HTTP/1.1", "Host: x" })
        assert.are.equal(426, status)
        assert.are.equal("websocket", headers["upgrade"])
        assert.are.equal("13", headers["sec-websocket-version"])
        assert.are.equal("this route speaks WebSocket: send an Upgrade request\n", body)
    end)

    it("takes a header block of exactly 8 KiB and answers 431 past it", function()
        -- request line + Host + padding header + the blank line = 8192 bytes
        local function sized(total)
            local fixed = #"GET /a.txt HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n"
            return head{ "GET /a.txt HTTP/1.1", "Host: x", "X-Pad: " .. ("p"):rep(total - fixed) }
        end
        assert.are.equal(8192, #sized(8192))
        local status, _, body, _, c = exchange(sized(8192), true)
        assert.are.equal(200, status)
        assert.are.equal("hello from a\n", body)
        c:close()
        status = exchange(sized(8193))
        assert.are.equal(431, status)
    end)

    it("takes 100 headers and answers 431 to 101", function()
        local function with_headers(n)
            local lines = { "GET /a.txt HTTP/1.1", "Host: x" }
            for i = 2, n do lines[#lines + 1] = "X-H" .. i .. ": v" end
            return head(lines)
        end
        local status, _, _, _, c = exchange(with_headers(100), true)
        assert.are.equal(200, status)
        c:close()
        assert.are.equal(431, (exchange(with_headers(101))))
    end)

    it("answers 400 to a malformed request line", function()
        for _, line in ipairs({ "GET /echo", "GET  /echo HTTP/1.1", "GET /echo HTTP/1.1 extra",
                                "GET /echo FTP/1.1", "\1GET /echo HTTP/1.1" }) do
            local status = exchange(head{ line, "Host: x" })
            assert.are.equal(400, status, line)
        end
    end)

    it("answers 400 to a malformed header and to obs-fold", function()
        assert.are.equal(400, (exchange(head{ "GET /a.txt HTTP/1.1", "Host: x", "No colon here" })))
        assert.are.equal(400, (exchange(head{ "GET /a.txt HTTP/1.1", "Host: x", "X-A: one", " folded" })))
        assert.are.equal(400, (exchange(head{ "GET /a.txt HTTP/1.1", "Host: x", "X-A: one", "\tfolded" })))
    end)

    it("answers pipelined plain GETs in order on one kept-alive connection", function()
        local c = rawws.connect(s.port)
        c:send(head{ "GET /a.txt HTTP/1.1", "Host: x" } .. head{ "GET /b.txt HTTP/1.1", "Host: x" })
        local st1, h1, b1 = c:http()
        local st2, h2, b2 = c:http()
        assert.are.same({ 200, "hello from a\n", 200, "bee\n" }, { st1, b1, st2, b2 })
        assert.are_not.equal("close", h1["connection"])
        assert.are_not.equal("close", h2["connection"])
        -- still open: a third request on the same connection
        c:send(head{ "GET / HTTP/1.1", "Host: x" })
        local st3, _, b3 = c:http()
        assert.are.same({ 200, "<p>core</p>\n" }, { st3, b3 })
        -- and a WebSocket upgrade after them
        c:send(rawws.request("/echo"))
        assert.are.equal(101, (c:http_head()))
        assert.are.equal("after http", c:echo("after http"))
        c:close()
    end)

    it("closes after a response when the request says Connection: close", function()
        local status, headers, body = exchange(head{ "GET /a.txt HTTP/1.1", "Host: x", "Connection: close" })
        assert.are.same({ 200, "close", "hello from a\n" }, { status, headers["connection"], body })
    end)

    it("hands the subprotocol offers to the script in order", function()
        local c = rawws.connect(s.port)
        c:send(rawws.request("/proto", { "Sec-WebSocket-Protocol: chat.v1, chat.v2",
                                         "Sec-WebSocket-Protocol: x.v3" }))
        local status, headers = c:http_head()
        assert.are.equal(101, status)
        assert.are.equal("chat.v1|chat.v2|x.v3", headers["x-offers"])
        assert.are.equal("x.v3", headers["sec-websocket-protocol"])
        assert.are.same({ fin = true, rsv = 0, opcode = 1, payload = "protocol=x.v3" }, c:recv_frame())
        c:close()
        -- no offer: no Sec-WebSocket-Protocol in the answer
        c = rawws.connect(s.port)
        c:send(rawws.request("/proto"))
        status, headers = c:http_head()
        assert.are.equal(101, status)
        assert.is_nil(headers["sec-websocket-protocol"])
        assert.are.equal("", headers["x-offers"])
        assert.are.equal("protocol=nil", c:recv_frame().payload)
        c:close()
    end)
end)
