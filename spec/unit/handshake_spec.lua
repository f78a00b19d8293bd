-- The RFC 6455 §4.2 server handshake (core/handshake.c) through sbt_http.
local http = require "sbt_http"

local KEY = "dGhlIHNhbXBsZSBub25jZQ=="

-- A valid upgrade request, with `changes` applied: a name maps to a value to
-- replace that header, false to drop it, or a list of values to repeat it.
-- `extra` lines are appended as they are.
local function upgrade(changes, extra, request_line)
    local fields = {
        { "Host", "server.example.com" },
        { "Upgrade", "websocket" },
        { "Connection", "Upgrade" },
        { "Sec-WebSocket-Key", KEY },
        { "Origin", "http://example.com" },
        { "Sec-WebSocket-Version", "13" },
    }
    local lines = { request_line or "GET /chat HTTP/1.1" }
    for _, f in ipairs(fields) do
        local v = f[2]
        if changes and changes[f[1]] ~= nil then
            v = changes[f[1]]
        end
        if type(v) == "table" then
            for _, one in ipairs(v) do
                lines[#lines + 1] = f[1] .. ": " .. one
            end
        elseif v then
            lines[#lines + 1] = f[1] .. ": " .. v
        end
    end
    for _, l in ipairs(extra or {}) do
        lines[#lines + 1] = l
    end
    return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

-- Asserts that the head parses the same whole, byte by byte and split at every
-- point, so the handshake sees the same request however it arrived.
local function arrives_intact(raw)
    local whole = { http.parse(raw) }
    assert.equal(#raw, whole[1])
    local last = 0
    for i = 1, #raw - 1 do
        assert.equal("need_more", (http.parse(raw:sub(1, i), last)))
        last = i
        assert.same(whole, { http.parse(raw, i) })
    end
    assert.same(whole, { http.parse(raw, last) })
end

-- validate, checked twice to catch state kept between calls.
local function validate(raw)
    arrives_intact(raw)
    local a, b = http.validate(raw)
    assert.same({ a, b }, { http.validate(raw) })
    return a, b
end

local function refuses(raw, status)
    local st, reason = validate(raw)
    assert.equal(status, st)
    assert.is_string(reason)
    assert.is_true(#reason > 0 and #reason < 80)
    return reason
end

describe("the WebSocket handshake", function()
    describe("Sec-WebSocket-Accept", function()
        it("answers the RFC 6455 example key with its example accept value", function()
            assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", http.accept_key("dGhlIHNhbXBsZSBub25jZQ=="))
        end)

        local known = {
            { "x3JJHMbDL1EzLkh9GBhXDw==", "HSmrc0sMlYUkAGmm5OPpG2HaGWk=" },
            { "AQIDBAUGBwgJCgsMDQ4PEA==", "C/0nmHhBztSRGR1CwL6Tf4ZjwpY=" },
        }
        for _, k in ipairs(known) do
            it("answers " .. k[1] .. " with " .. k[2], function()
                local a = http.accept_key(k[1])
                assert.equal(k[2], a)
                assert.equal(28, #a)
            end)
        end
    end)

    describe("accepts", function()
        local ok = {
            { "the RFC 6455 example request", upgrade() },
            { "header names in any case", "GET / HTTP/1.1\r\nhost: h\r\nUPGRADE: websocket\r\n"
                .. "connection: Upgrade\r\nsec-websocket-key: " .. KEY .. "\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n" },
            { "Upgrade: WebSocket in another case", upgrade({ Upgrade = "WebSocket" }) },
            { "Upgrade naming websocket among other tokens", upgrade({ Upgrade = "foo/2, websocket" }) },
            { "Connection: keep-alive, Upgrade (as Firefox sends)",
                upgrade({ Connection = "keep-alive, Upgrade" }) },
            { "Connection: upgrade in lower case", upgrade({ Connection = "upgrade" }) },
            { "upgrade in a second Connection header", upgrade({ Connection = { "keep-alive", "Upgrade" } }) },
            { "a key with whitespace around it", upgrade({ ["Sec-WebSocket-Key"] = "\t" .. KEY .. "  " }) },
            { "Sec-WebSocket-Version: 13 sent twice", upgrade({ ["Sec-WebSocket-Version"] = { "13", "13" } }) },
            { "a later HTTP/1.x", upgrade(nil, nil, "GET /chat HTTP/1.2") },
            { "a request with a query", upgrade(nil, nil, "GET /chat?nick=a HTTP/1.1") },
        }
        for _, c in ipairs(ok) do
            it(c[1], function()
                local ok_, key = validate(c[2])
                assert.is_true(ok_)
                assert.equal(KEY, key)
                assert.is_true(http.is_upgrade(c[2]))
            end)
        end
    end)

    describe("answers 400", function()
        local bad = {
            { "to POST", upgrade(nil, nil, "POST /chat HTTP/1.1") },
            { "to a lower-case get", upgrade(nil, nil, "get /chat HTTP/1.1") },
            { "to HTTP/1.0", upgrade(nil, nil, "GET /chat HTTP/1.0") },
            { "when Host is missing", upgrade({ Host = false }) },
            { "when Host is empty", upgrade({ Host = "" }) },
            { "when Host is repeated", upgrade({ Host = { "a", "b" } }) },
            { "when Upgrade is missing", upgrade({ Upgrade = false }) },
            { "when Upgrade names another protocol", upgrade({ Upgrade = "h2c" }) },
            { "when Upgrade only contains websocket", upgrade({ Upgrade = "websockets" }) },
            { "when Connection is missing", upgrade({ Connection = false }) },
            { "when Connection lacks upgrade", upgrade({ Connection = "keep-alive" }) },
            { "when Connection only contains upgrade", upgrade({ Connection = "upgrade-insecure" }) },
            { "when Sec-WebSocket-Key is missing", upgrade({ ["Sec-WebSocket-Key"] = false }) },
            { "when Sec-WebSocket-Key is repeated", upgrade({ ["Sec-WebSocket-Key"] = { KEY, KEY } }) },
            { "when Sec-WebSocket-Key is empty", upgrade({ ["Sec-WebSocket-Key"] = "" }) },
        }
        local keys = {
            { "23 characters", KEY:sub(1, 23) },
            { "25 characters", KEY .. "=" },
            { "no padding", KEY:sub(1, 22) },
            { "one padding character", KEY:sub(1, 22) .. "A=" },
            { "padding in the middle", "dGhlIHNh=mBsZSBub25jZQ==" },
            { "a character outside base64", "dGhlIHNhbXBsZSBub25jZ!==" },
            { "URL-safe base64", "dGhlIHNhbXBsZSBub25j-_==" },
            { "17 bytes of base64", "AQIDBAUGBwgJCgsMDQ4PEBE=" },
            { "15 bytes of base64", "AQIDBAUGBwgJCgsMDQ4P" },
            { "unused bits set", "dGhlIHNhbXBsZSBub25jZR==" },
            { "two keys in one header", KEY .. ", " .. KEY },
        }
        for _, k in ipairs(keys) do
            bad[#bad + 1] = { "when Sec-WebSocket-Key has " .. k[1], upgrade({ ["Sec-WebSocket-Key"] = k[2] }) }
        end
        for _, c in ipairs(bad) do
            it(c[1], function()
                refuses(c[2], 400)
            end)
        end

        it("for a bad key even when the version is wrong too", function()
            refuses(upgrade({ ["Sec-WebSocket-Key"] = "x", ["Sec-WebSocket-Version"] = "8" }), 400)
        end)
    end)

    describe("answers 426", function()
        local versions = {
            { "when Sec-WebSocket-Version is missing", false },
            { "to Sec-WebSocket-Version: 8", "8" },
            { "to an empty Sec-WebSocket-Version", "" },
            { "to Sec-WebSocket-Version: 013", "013" },
            { "to Sec-WebSocket-Version: 13, 8", "13, 8" },
            { "when a second Sec-WebSocket-Version is 8", { "13", "8" } },
        }
        for _, c in ipairs(versions) do
            it(c[1], function()
                local reason = refuses(upgrade({ ["Sec-WebSocket-Version"] = c[2] }), 426)
                assert.matches("13", reason)
            end)
        end
    end)

    describe("tells an upgrade from a plain request", function()
        it("by the Upgrade header naming websocket", function()
            assert.is_false(http.is_upgrade("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
            assert.is_false(http.is_upgrade("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n"))
            assert.is_true(http.is_upgrade("GET / HTTP/1.1\r\nupgrade: WEBSOCKET\r\n\r\n"))
            assert.is_true(http.is_upgrade("GET / HTTP/1.1\r\nUpgrade: h2c\r\nSec-WebSocket-Key: x\r\n\r\n"))
        end)
    end)

    describe("lists the offered subprotocols", function()
        local cases = {
            { "none when there is no header", {}, {} },
            { "one", { "chat" }, { "chat" } },
            { "a comma-separated list in order", { "chat, superchat" }, { "chat", "superchat" } },
            { "every header in order", { "b, a", "c" }, { "b", "a", "c" } },
            { "without empty elements or whitespace", { " , x ,,\ty\t, " }, { "x", "y" } },
            { "none from an empty header", { "" }, {} },
            { "repeats as sent", { "a", "a" }, { "a", "a" } },
        }
        for _, c in ipairs(cases) do
            it(c[1], function()
                local raw = upgrade(nil, (function()
                    local l = {}
                    for _, v in ipairs(c[2]) do
                        l[#l + 1] = "Sec-WebSocket-Protocol: " .. v
                    end
                    return l
                end)())
                arrives_intact(raw)
                local list, count, counted = http.protocols(raw)
                assert.same(c[3], list)
                assert.equal(#c[3], count)
                assert.equal(#c[3], counted)
            end)
        end

        it("whatever the case of the header name", function()
            local raw = upgrade(nil, { "sec-websocket-protocol: a", "SEC-WEBSOCKET-PROTOCOL: b" })
            assert.same({ "a", "b" }, (http.protocols(raw)))
        end)
    end)
end)

describe("the Origin check of --allowed-origins", function()
    local LIST = "https://chat.example.com, http://localhost:3000,*.example.org,https://*.app.test,null,"
        .. "http://[::1]:8080"

    local allowed = {
        "https://chat.example.com", "HTTPS://CHAT.EXAMPLE.COM", "http://localhost:3000",
        "https://a.example.org", "http://a.b.example.org", "https://x.app.test", "null", "http://[::1]:8080",
        "https://x-y.example.org",
    }
    local refused = {
        "http://chat.example.com",                 -- another scheme
        "https://chat.example.com:8443",           -- another port
        "https://chat.example.com.evil.example",   -- a suffix is not the host
        "https://evilchat.example.com",
        "https://chat.example.co",                 -- a prefix is not the host
        "http://localhost", "http://localhost:30000", "http://localhost:300",
        "https://example.org",                     -- *. wants a subdomain
        "https://evilexample.org", "https://.example.org",
        "https://a.example.org:8443",              -- no port in the entry: none allowed
        "http://x.app.test",                       -- the entry names its scheme
        "", "chat.example.com", "https://", "https://chat.example.com/",
        "nullx", "file://",
        "https://evil.com#.example.org", "https://evil.com/.example.org", "https://a@b.example.org",
        "https://a_b.example.org",                 -- not a host name a browser sends
    }

    for _, o in ipairs(allowed) do
        it("allows " .. o, function() assert.is_true(http.origin_allowed(LIST, o)) end)
    end
    for _, o in ipairs(refused) do
        it("refuses '" .. o .. "'", function() assert.is_false(http.origin_allowed(LIST, o)) end)
    end

    it("reads the origin only as far as its length (a slice of the request)", function()
        for i = 0, #"https://chat.example.com" - 1 do
            assert.is_false(http.origin_allowed("https://chat.example.com", ("https://chat.example.com"):sub(1, i)))
        end
    end)

    it("takes only lists of origins", function()
        for _, good in ipairs({ LIST, "null", "https://a.com", " https://a.com , b.com ", "[::1]:8080",
            "http://[::1]:8080" }) do
            assert.is_true(http.origin_list_valid(good), good)
        end
        for _, bad in ipairs({ "", ",", "https://a.com,", "https://", "://a.com", "https://a.com/x",
            "https://a.com:", "https://a.com:8x", "a.com:" }) do
            assert.is_false(http.origin_list_valid(bad), bad)
        end
    end)
end)
