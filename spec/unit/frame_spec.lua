-- The RFC 6455 frame codec (core/frame.c) through the sbt_frame test module.
-- Every stream is fed whole, byte by byte, split at every point and with the
-- callbacks asking to stop after each frame: all must give the same events
-- and the same error (wslay's "scripted data feed").
local t = require "sbt_frame"
local ws = require "wsframe"

local TEXT, BINARY, CONT = ws.TEXT, ws.BINARY, ws.CONT
local CLOSE, PING, PONG = ws.CLOSE, ws.PING, ws.PONG

local function msg(opcode, data, compressed)
    return { type = "message", opcode = opcode, data = data, compressed = compressed or false }
end
local function ctl(opcode, data)
    return { type = "control", opcode = opcode, data = data }
end

-- Feeds chunks in order; stops at the first error. Returns events, code, reason.
local function run(chunks, opts, stop)
    local d = t.new(opts)
    local all = {}
    for _, chunk in ipairs(chunks) do
        repeat
            local ev, n, code, reason = d:feed(chunk, stop)
            for _, e in ipairs(ev) do all[#all + 1] = e end
            if not n then
                -- sticky: the same error again, and no events
                local ev2, n2, code2 = d:feed("\x81")
                assert(#ev2 == 0 and n2 == nil and code2 == code, "error is not sticky")
                d:close()
                return all, code, reason
            end
            assert(n <= #chunk)
            if not stop then assert(n == #chunk, "consumed " .. n .. " of " .. #chunk) end
            chunk = chunk:sub(n + 1)
        until #chunk == 0
    end
    d:close()
    return all, nil
end

local function bytes_of(s)
    local c = {}
    for i = 1, #s do c[i] = s:sub(i, i) end
    return c
end

-- Asserts that every way of feeding `stream` gives `want` events and error code.
local function scripted(stream, want, want_code, opts)
    local first_reason
    local function check(chunks, how, stop)
        local ev, code, reason = run(chunks, opts, stop)
        assert.are.same(want, ev, how)
        assert.are.equal(want_code, code, how)
        first_reason = first_reason or reason
        assert.are.equal(first_reason, reason, how)
    end
    check({ stream }, "whole")
    check({ stream }, "whole, stopping after each frame", true)
    check(bytes_of(stream), "byte by byte")
    if #stream <= 600 then
        for i = 1, #stream - 1 do
            check({ stream:sub(1, i), stream:sub(i + 1) }, "split at " .. i)
        end
        for i = 1, #stream - 1, 7 do
            check({ stream:sub(1, i), stream:sub(i + 1) }, "split at " .. i .. ", stopping", true)
        end
    end
end

local function fails(stream, code, opts) scripted(stream, {}, code, opts) end

describe("frame encoder", function()
    local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

    it("writes byte-exact headers for every length form", function()
        assert.are.equal("8100", hex(t.header(TEXT, true, false, 0)))
        assert.are.equal("817d", hex(t.header(TEXT, true, false, 125)))
        assert.are.equal("827e007e", hex(t.header(BINARY, true, false, 126)))
        assert.are.equal("827effff", hex(t.header(BINARY, true, false, 65535)))
        assert.are.equal("827f0000000000010000", hex(t.header(BINARY, true, false, 65536)))
        assert.are.equal("827f0000000100000000", hex(t.header(BINARY, true, false, 1 << 32)))
        assert.are.equal("827f7fffffffffffffff", hex(t.header(BINARY, true, false, math.maxinteger)))
    end)

    it("sets FIN, RSV1 and the opcode bits", function()
        assert.are.equal("0105", hex(t.header(TEXT, false, false, 5)))
        assert.are.equal("c105", hex(t.header(TEXT, true, true, 5)))
        assert.are.equal("8000", hex(t.header(CONT, true, false, 0)))
        assert.are.equal("8802", hex(t.header(CLOSE, true, false, 2)))
        assert.are.equal("8900", hex(t.header(PING, true, false, 0)))
        assert.are.equal("8a7d", hex(t.header(PONG, true, false, 125)))
    end)

    it("writes headers the decoder reads back", function()
        for _, len in ipairs({ 0, 1, 125, 126, 127, 65535, 65536, 70000 }) do
            local h = t.header(BINARY, true, false, len)
            local p = string.rep("z", len)
            local key = "\1\2\3\4"
            -- set the mask bit and append a key: a client frame with the same length form
            local masked = h:sub(1, 1) .. string.char(h:byte(2) | 0x80) .. h:sub(3) .. key
                .. t.mask(p, key)
            local ev, code = run({ masked })
            assert.is_nil(code)
            assert.are.same({ msg(BINARY, p) }, ev)
        end
    end)
end)

describe("ws_mask", function()
    it("matches a byte-at-a-time reference for every length and key offset", function()
        local key = "\x9a\x01\xff\x5c"
        local src = {}
        for i = 1, 70 do src[i] = string.char((i * 37) % 256) end
        src = table.concat(src)
        for len = 0, 70 do
            for off = 0, 3 do
                local p = src:sub(1, len)
                assert.are.equal(ws.mask(p, key, off), t.mask(p, key, off), len .. "/" .. off)
            end
        end
    end)

    it("is its own inverse", function()
        local p = string.rep("hello, world ", 50)
        assert.are.equal(p, t.mask(t.mask(p, "abcd", 1), "abcd", 1))
    end)
end)

describe("frame decoder", function()
    describe("delivers", function()
        it("a masked text frame", function()
            scripted(ws.text("Hello"), { msg(TEXT, "Hello") })
        end)

        it("empty text and binary messages", function()
            scripted(ws.text("") .. ws.binary(""), { msg(TEXT, ""), msg(BINARY, "") })
        end)

        it("binary data with every byte value", function()
            local p = {}
            for i = 0, 255 do p[#p + 1] = string.char(i) end
            p = table.concat(p)
            scripted(ws.binary(p), { msg(BINARY, p) })
        end)

        it("payloads at the 7-, 16- and 64-bit length boundaries", function()
            for _, len in ipairs({ 125, 126, 65535, 65536 }) do
                local p = string.rep("a", len)
                local ev, code = run({ ws.text(p) })
                assert.is_nil(code)
                assert.are.same({ msg(TEXT, p) }, ev)
                ev = run(bytes_of(ws.binary(p)))
                assert.are.same({ msg(BINARY, p) }, ev)
            end
        end)

        it("several frames in one read", function()
            scripted(ws.text("a") .. ws.binary("bc") .. ws.ping("p") .. ws.text("d"),
                { msg(TEXT, "a"), msg(BINARY, "bc"), ctl(PING, "p"), msg(TEXT, "d") })
        end)

        it("a fragmented message as one message", function()
            scripted(ws.text("Hel", { fin = false }) .. ws.cont("lo, ", { fin = false })
                .. ws.cont("world"), { msg(TEXT, "Hello, world") })
        end)

        it("a fragmented message with empty fragments", function()
            scripted(ws.binary("", { fin = false }) .. ws.cont("", { fin = false }) .. ws.cont("x")
                .. ws.text("", { fin = false }) .. ws.cont(""),
                { msg(BINARY, "x"), msg(TEXT, "") })
        end)

        it("control frames between fragments, in order", function()
            scripted(ws.text("fr", { fin = false }) .. ws.ping("ping!") .. ws.cont("ag", { fin = false })
                .. ws.pong("") .. ws.pong("pong") .. ws.cont("ment") .. ws.close(1000, "bye"),
                { ctl(PING, "ping!"), ctl(PONG, ""), ctl(PONG, "pong"), msg(TEXT, "fragment"),
                    ctl(CLOSE, "\3\232bye") })
        end)

        it("control frames of 0 and 125 bytes", function()
            local p = string.rep("p", 125)
            scripted(ws.ping("") .. ws.ping(p) .. ws.close(nil),
                { ctl(PING, ""), ctl(PING, p), ctl(CLOSE, "") })
        end)

        it("frames masked with different keys", function()
            scripted(ws.text("abcdef", { key = "\0\0\0\0" }) .. ws.text("ghijk", { key = "\255\1\128\7" }),
                { msg(TEXT, "abcdef"), msg(TEXT, "ghijk") })
        end)

        it("compressed messages raw, flagged, and without a UTF-8 check", function()
            local opts = { rsv1_ok = true }
            scripted(ws.text("\xff\xfe", { rsv1 = true }), { msg(TEXT, "\xff\xfe", true) }, nil, opts)
            scripted(ws.binary("\1\2", { rsv1 = true, fin = false }) .. ws.ping("x") .. ws.cont("\3"),
                { ctl(PING, "x"), msg(BINARY, "\1\2\3", true) }, nil, opts)
            scripted(ws.text("\xc3", { rsv1 = true, fin = false }) .. ws.cont("\xff"),
                { msg(TEXT, "\xc3\xff", true) }, nil, opts)
            scripted(ws.text("plain") .. ws.text("z", { rsv1 = true }),
                { msg(TEXT, "plain"), msg(TEXT, "z", true) }, nil, opts)
        end)
    end)

    describe("closes with 1002", function()
        it("when a client frame is unmasked", function()
            fails(ws.text("Hello", { unmasked = true }), 1002)
            fails(ws.ping("", { unmasked = true }), 1002)
        end)

        it("when RSV2 or RSV3 is set, even with an extension", function()
            fails(ws.text("x", { rsv2 = true }), 1002)
            fails(ws.text("x", { rsv3 = true }), 1002, { rsv1_ok = true })
            fails(ws.ping("x", { rsv2 = true, rsv3 = true }), 1002)
        end)

        it("when RSV1 is set without a negotiated extension", function()
            fails(ws.text("x", { rsv1 = true }), 1002)
        end)

        it("when RSV1 is set on a continuation frame", function()
            scripted(ws.text("a", { fin = false, rsv1 = true }) .. ws.cont("b", { rsv1 = true }), {}, 1002,
                { rsv1_ok = true })
            fails(ws.text("a", { fin = false }) .. ws.cont("b", { rsv1 = true }), 1002, { rsv1_ok = true })
        end)

        it("when RSV1 is set on a control frame", function()
            fails(ws.ping("x", { rsv1 = true }), 1002, { rsv1_ok = true })
        end)

        it("on reserved opcodes 3-7 and 11-15", function()
            for _, op in ipairs({ 3, 4, 5, 6, 7, 11, 12, 13, 14, 15 }) do
                fails(ws.frame(op, "x"), 1002)
            end
        end)

        it("on a continuation frame with no message open", function()
            fails(ws.cont("x"), 1002)
            scripted(ws.text("a") .. ws.cont("b"), { msg(TEXT, "a") }, 1002)
        end)

        it("on a new data frame while a message is open", function()
            fails(ws.text("a", { fin = false }) .. ws.text("b"), 1002)
            scripted(ws.binary("a", { fin = false }) .. ws.ping("") .. ws.binary("b"), { ctl(PING, "") }, 1002)
        end)

        it("on a fragmented control frame", function()
            fails(ws.ping("a", { fin = false }) .. ws.cont("b"), 1002)
        end)

        it("on a control frame over 125 bytes, whatever the length form", function()
            fails(ws.ping(string.rep("x", 126)), 1002)
            fails(ws.pong("x", { form = "16" }), 1002)
            fails(ws.close(1000, string.rep("x", 124)), 1002)
        end)

        it("on non-minimal length encodings", function()
            fails(ws.binary("x", { form = "16" }), 1002)
            fails(ws.binary(string.rep("x", 125), { form = "16" }), 1002)
            fails(ws.binary("x", { form = "64" }), 1002)
            fails(ws.binary(string.rep("x", 65535), { form = "64" }), 1002)
            local ev, code = run({ ws.binary(string.rep("x", 126), { form = "16" }) })
            assert.is_nil(code)
            assert.are.equal(126, #ev[1].data)
        end)

        it("on a 64-bit length with the top bit set", function()
            local hdr = string.char(0x82, 0xff) .. "\x80\0\0\0\0\0\0\0" .. ws.KEY
            fails(hdr, 1002)
            fails(string.char(0x82, 0xff) .. "\xff\xff\xff\xff\xff\xff\xff\xff" .. ws.KEY, 1002)
        end)

        it("on a close payload of 1 byte", function()
            fails(ws.frame(CLOSE, "\3"), 1002)
        end)

        it("on an invalid close code", function()
            for _, code in ipairs({ 0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535 }) do
                fails(ws.close(code, ""), 1002)
            end
        end)

        it("before any later frame is delivered", function()
            scripted(ws.text("ok") .. ws.frame(3, "") .. ws.text("never"), { msg(TEXT, "ok") }, 1002)
        end)
    end)

    describe("closes with 1007", function()
        it("when text is not UTF-8", function()
            fails(ws.text("\xff"), 1007)
            fails(ws.text("caf\xc3"), 1007)
            fails(ws.text("\xed\xa0\x80"), 1007)
        end)

        it("when a close reason is not UTF-8", function()
            fails(ws.close(1000, "\xc0\xaf"), 1007)
            fails(ws.text("a", { fin = false }) .. ws.close(1000, "\xf4\x90\x80\x80"), 1007)
        end)

        it("at the first invalid byte, mid-frame, without waiting for the rest", function()
            local f = ws.text("abc\xffdef" .. string.rep("x", 200))
            -- header (2 + 2 + 4) plus "abc\xff": the frame is far from complete
            local ev, code = run({ f:sub(1, 8 + 4) })
            assert.are.same({}, ev)
            assert.are.equal(1007, code)
            ev, code = run({ f:sub(1, 8 + 3) })
            assert.are.same({}, ev)
            assert.is_nil(code)
        end)

        it("at the first invalid byte, mid-fragment of an unfinished message", function()
            local s = ws.text("\xce\xba", { fin = false }) .. ws.cont("\xe1\xbd", { fin = false })
            local bad = ws.cont("\xc0" .. string.rep("y", 50), { fin = false })
            local ev, code = run({ s, bad:sub(1, 7) })
            assert.are.same({}, ev)
            assert.are.equal(1007, code)
        end)

        it("when a text message ends inside a UTF-8 sequence", function()
            fails(ws.text("\xe2\x82", { fin = false }) .. ws.cont(""), 1007)
            fails(ws.text("\xf0\x9f\x98"), 1007)
        end)

        it("for a text message whose sequences straddle fragments only when invalid", function()
            local euro = "\xe2\x82\xac"
            scripted(ws.text("\xe2", { fin = false }) .. ws.cont("\x82", { fin = false }) .. ws.ping("")
                .. ws.cont("\xac"), { ctl(PING, ""), msg(TEXT, euro) })
            fails(ws.text("\xe2", { fin = false }) .. ws.cont("\x82\x28"), 1007)
        end)
    end)

    describe("limits a message to max_message", function()
        local opts = { max_message = 100 }

        it("accepts exactly max_message bytes, in one frame or in fragments", function()
            local p = string.rep("m", 100)
            scripted(ws.binary(p), { msg(BINARY, p) }, nil, opts)
            scripted(ws.binary(p:sub(1, 60), { fin = false }) .. ws.ping("x") .. ws.cont(p:sub(61)),
                { ctl(PING, "x"), msg(BINARY, p) }, nil, opts)
        end)

        it("closes with 1009 at max_message + 1, in one frame or in fragments", function()
            local p = string.rep("m", 101)
            fails(ws.binary(p), 1009, opts)
            fails(ws.binary(p:sub(1, 60), { fin = false }) .. ws.cont(p:sub(61)), 1009, opts)
            fails(ws.text("", { fin = false }) .. ws.cont(string.rep("m", 100), { fin = false })
                .. ws.cont("m"), 1009, opts)
        end)

        it("counts each message on its own", function()
            local p = string.rep("m", 100)
            scripted(ws.binary(p) .. ws.binary(p, { fin = false }) .. ws.cont(""),
                { msg(BINARY, p), msg(BINARY, p) }, nil, opts)
        end)

        it("does not count control frames", function()
            local p = string.rep("m", 100)
            scripted(ws.binary(p, { fin = false }) .. ws.ping(string.rep("p", 125)) .. ws.cont(""),
                { ctl(PING, string.rep("p", 125)), msg(BINARY, p) }, nil, { max_message = 100 })
        end)

        it("detects an oversized message from its header alone", function()
            local hdr = ws.binary("", { len = 1 << 20 }) -- header and key only
            local ev, code = run({ hdr }, opts)
            assert.are.same({}, ev)
            assert.are.equal(1009, code)
            -- announced lengths up to 2^63-1 fail the same way, without allocating
            ev, code = run({ string.char(0x82, 0xff) .. "\x7f\xff\xff\xff\xff\xff\xff\xff" .. ws.KEY }, opts)
            assert.are.same({}, ev)
            assert.are.equal(1009, code)
        end)

        it("has no limit when max_message is 0", function()
            local p = string.rep("q", 70000)
            local ev, code = run({ ws.binary(p:sub(1, 1), { fin = false }), ws.cont(p:sub(2)) })
            assert.is_nil(code)
            assert.are.same({ msg(BINARY, p) }, ev)
        end)
    end)

    describe("memory", function()
        it("holds no buffer for whole frames", function()
            local d <close> = t.new()
            local ev = d:feed(ws.text("abc") .. ws.ping("p"))
            assert.are.equal(2, #ev)
            local has_msg, has_ctl = d:buffers()
            assert.is_false(has_msg)
            assert.is_false(has_ctl)
        end)

        it("holds a reassembly buffer only while a message is incomplete", function()
            local d <close> = t.new()
            local f = ws.text("hello")
            d:feed(f:sub(1, 8))
            local has_msg, _, cap = d:buffers()
            assert.is_true(has_msg)
            assert.are.equal(5, cap) -- sized to the announced frame, not more
            local ev = d:feed(f:sub(9))
            assert.are.same({ msg(TEXT, "hello") }, ev)
            assert.is_false((d:buffers()))
        end)

        it("holds a control buffer only while a control frame is split", function()
            local d <close> = t.new()
            local f = ws.ping("12345")
            d:feed(f:sub(1, 9))
            local _, has_ctl = d:buffers()
            assert.is_true(has_ctl)
            local ev = d:feed(f:sub(10))
            assert.are.same({ ctl(PING, "12345") }, ev)
            _, has_ctl = d:buffers()
            assert.is_false(has_ctl)
        end)

        it("is released by close and by the garbage collector", function()
            local d = t.new()
            d:feed(ws.text("abc", { fin = false }) .. ws.ping("12345"):sub(1, 9))
            d:close()
            assert.is_false((d:buffers()))
            d:close() -- twice is fine
            t.new():feed(ws.text("abc", { fin = false }))
            collectgarbage()
        end)
    end)

    describe("when a callback asks to stop", function()
        it("returns right after that frame", function()
            local a, b = ws.text("one"), ws.ping("two")
            local d <close> = t.new()
            local ev, n = d:feed(a .. b .. ws.text("three"), true)
            assert.are.same({ msg(TEXT, "one") }, ev)
            assert.are.equal(#a, n)
            ev, n = d:feed(b, true)
            assert.are.same({ ctl(PING, "two") }, ev)
            assert.are.equal(#b, n)
        end)

        it("still consumes a partial frame that follows when not stopping", function()
            local d <close> = t.new()
            local f = ws.text("abc")
            local ev, n = d:feed(f:sub(1, 3), true)
            assert.are.same({}, ev)
            assert.are.equal(3, n)
        end)
    end)

    describe("after an error", function()
        it("returns the same error when fed again", function()
            local d <close> = t.new()
            local _, n, code, reason = d:feed(ws.text("x", { unmasked = true }))
            assert.is_nil(n)
            assert.are.equal(1002, code)
            assert.are.equal("client frame not masked", reason)
            for _ = 1, 3 do
                local ev, n2, code2 = d:feed(ws.text("fine"))
                assert.are.same({}, ev)
                assert.is_nil(n2)
                assert.are.equal(1002, code2)
            end
        end)

        it("gives a reason that says what failed", function()
            local cases = {
                { ws.cont("x"), "continuation frame without a message" },
                { ws.frame(5, ""), "reserved opcode" },
                { ws.binary("x", { form = "16" }), "non-minimal 16-bit length" },
                { ws.text("\xff"), "text is not UTF-8" },
                { ws.text("\xc3"), "text ends inside a UTF-8 sequence" },
                { ws.frame(CLOSE, "\3"), "1-byte close payload" },
                { ws.close(1005), "invalid close code" },
            }
            for _, c in ipairs(cases) do
                local d <close> = t.new()
                local _, _, _, reason = d:feed(c[1])
                assert.are.equal(c[2], reason)
            end
        end)
    end)
end)

describe("close payloads", function()
    it("accept 1000-1003, 1007-1014 and 3000-4999", function()
        for code = 0, 5100 do
            local want = (code >= 1000 and code <= 1003) or (code >= 1007 and code <= 1014)
                or (code >= 3000 and code <= 4999)
            assert.are.equal(want, t.close_code_valid(code), tostring(code))
        end
        assert.is_false(t.close_code_valid(65535))
    end)

    -- 1012-1014 are registered with IANA (service restart, try again later,
    -- bad gateway); a decoder that refused them would fail real closes.
    it("accept 1012, 1013 and 1014 from a client", function()
        for _, code in ipairs({ 1012, 1013, 1014 }) do
            scripted(ws.close(code, "r"), { ctl(CLOSE, ws.be(code, 2) .. "r") })
        end
    end)

    it("parse to a code and a reason", function()
        assert.are.same({ 1005, "" }, { t.close_parse("") })
        assert.are.same({ 1000, "" }, { t.close_parse("\3\232") })
        assert.are.same({ 4999, "bye \xe2\x82\xac" }, { t.close_parse("\19\135bye \xe2\x82\xac") })
        assert.are.same({ nil, 1002 }, { t.close_parse("\3") })
        assert.are.same({ nil, 1002 }, { t.close_parse("\3\237") }) -- 1005
        assert.are.same({ nil, 1007 }, { t.close_parse("\3\232\xff") })
        assert.are.same({ nil, 1007 }, { t.close_parse("\3\232\xe2\x82") })
    end)

    it("are delivered with a reason of 123 bytes", function()
        local r = string.rep("r", 123)
        scripted(ws.close(3000, r), { ctl(CLOSE, "\11\184" .. r) })
    end)
end)
