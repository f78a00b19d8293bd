-- RFC 6455 framing against the real server, with raw sockets: every bad frame
-- gets its exact close code, good ones are echoed, and other connections go on.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"

describe("framing (raw client, /echo)", function()
    local s
    setup(function() s = server.start{ args = { "--max-message", "65536" } } end)
    teardown(function() s:stop() end)

    -- A bystander connection that must keep working whatever the others do.
    local bystander
    before_each(function() bystander = rawws.open(s.port, "/echo") end)
    after_each(function()
        assert.are.equal("still here", bystander:echo("still here"))
        bystander:close()
    end)

    local function expect_close(frames, code)
        local c = rawws.open(s.port, "/echo")
        c:send(frames)
        local got, reason = c:recv_close()
        assert.are.equal(code, got, "close code (reason: " .. tostring(reason) .. ")")
        assert.is_true(c:eof(5), "server should close TCP after the close frame")
        c:close()
        return reason
    end

    it("echoes text and binary frames byte-exact", function()
        local c = rawws.open(s.port, "/echo")
        c:send(wsframe.text("héllo"))
        local f = c:recv_frame()
        assert.are.same({ fin = true, rsv = 0, opcode = 1, payload = "héllo" }, f)
        c:send(wsframe.binary("\0\1\2\255"))
        f = c:recv_frame()
        assert.are.same({ fin = true, rsv = 0, opcode = 2, payload = "\0\1\2\255" }, f)
        c:close()
    end)

    it("sends frames with the minimal length encoding, unmasked and unfragmented", function()
        local c = rawws.open(s.port, "/echo")
        for _, n in ipairs({ 0, 125, 126, 65535 }) do
            c:send(wsframe.binary(("x"):rep(n)))
            local hdr = c:read(2)
            local b0, b1 = hdr:byte(1, 2)
            assert.are.equal(0x82, b0)
            if n < 126 then
                assert.are.equal(n, b1)
            else
                assert.are.equal(126, b1)
                assert.are.equal(n, string.unpack(">I2", c:read(2)))
            end
            assert.are.equal(n, #c:read(n))
        end
        c:close()
    end)

    it("reassembles a fragmented message with a ping between the fragments", function()
        local c = rawws.open(s.port, "/echo")
        c:send(wsframe.text("Hel", { fin = false }) .. wsframe.ping("mid")
            .. wsframe.cont("lo ", { fin = false }) .. wsframe.cont("world"))
        local pong = c:recv_frame()
        assert.are.same({ fin = true, rsv = 0, opcode = 10, payload = "mid" }, pong)
        local f = c:recv_frame()
        assert.are.same({ fin = true, rsv = 0, opcode = 1, payload = "Hello world" }, f)
        c:close()
    end)

    it("answers a ping with a pong carrying the same payload and ignores pongs", function()
        local c = rawws.open(s.port, "/echo")
        c:send(wsframe.pong("unsolicited") .. wsframe.ping("abc\0\255"))
        assert.are.same({ fin = true, rsv = 0, opcode = 10, payload = "abc\0\255" }, c:recv_frame())
        c:close()
    end)

    it("takes the request and the first frames in one packet, and frames a byte at a time", function()
        local c = rawws.connect(s.port)
        c:send(rawws.request("/echo") .. wsframe.text("early"))
        assert.are.equal(101, (c:http_head()))
        assert.are.equal("early", c:recv_frame().payload)
        local frame = wsframe.text("slow")
        for i = 1, #frame do
            c:send(frame:sub(i, i))
            require("sbt_proc").sleep(0.002)
        end
        assert.are.equal("slow", c:recv_frame().payload)
        c:close()
    end)

    it("echoes a clean close with the peer's code and reason code, then closes TCP", function()
        local c = rawws.open(s.port, "/echo")
        c:send(wsframe.close(1000, "bye"))
        local code = c:recv_close()
        assert.are.equal(1000, code)
        assert.is_true(c:eof(5))
        c:close()
    end)

    it("delivers its close echo even when the peer keeps sending after its close", function()
        for _ = 1, 20 do
            local c = rawws.open(s.port, "/echo")
            -- data still in flight behind the close: the server must not answer it
            -- with a reset that could destroy the close frame it just sent
            c:send(wsframe.close(1000, "bye") .. wsframe.binary(("j"):rep(60000)))
            local code, _, before = c:recv_close()
            assert.are.equal(1000, code)
            assert.are.same({}, before) -- nothing after a close is processed
            assert.is_true(c:eof(5))
            c:close()
        end
    end)

    it("answers an empty close with an empty close", function()
        local c = rawws.open(s.port, "/echo")
        c:send(wsframe.close())
        local code = c:recv_close()
        assert.are.equal(false, code)
        c:close()
    end)

    it("accepts close codes 1000-1003, 1007-1011 and 3000-4999", function()
        for _, code in ipairs({ 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999 }) do
            local c = rawws.open(s.port, "/echo")
            c:send(wsframe.close(code))
            assert.are.equal(code, (c:recv_close()))
            c:close()
        end
    end)

    local bad = {
        { "an unmasked client frame", function() return wsframe.text("x", { unmasked = true }) end, 1002 },
        { "RSV1 without an extension", function() return wsframe.text("x", { rsv1 = true }) end, 1002 },
        { "RSV2", function() return wsframe.text("x", { rsv2 = true }) end, 1002 },
        { "RSV3", function() return wsframe.text("x", { rsv3 = true }) end, 1002 },
        { "reserved data opcode 3", function() return wsframe.frame(3, "x") end, 1002 },
        { "reserved control opcode 11", function() return wsframe.frame(11, "x") end, 1002 },
        { "a continuation with nothing to continue", function() return wsframe.cont("x") end, 1002 },
        { "a new data frame inside a fragmented message", function()
            return wsframe.text("a", { fin = false }) .. wsframe.text("b")
        end, 1002 },
        { "a ping over 125 bytes", function() return wsframe.ping(("p"):rep(126)) end, 1002 },
        { "a fragmented ping", function() return wsframe.ping("p", { fin = false }) end, 1002 },
        { "a 64-bit length with the top bit set", function()
            return string.char(0x82, 0xff) .. "\128\0\0\0\0\0\0\1" .. wsframe.KEY
        end, 1002 },
        { "a non-minimal 16-bit length", function() return wsframe.text("x", { form = "16" }) end, 1002 },
        { "a close with a 1-byte payload", function() return wsframe.frame(8, "\3") end, 1002 },
        { "close code 1005", function() return wsframe.close(1005) end, 1002 },
        { "close code 1006", function() return wsframe.close(1006) end, 1002 },
        { "close code 999", function() return wsframe.close(999) end, 1002 },
        { "close code 2000", function() return wsframe.close(2000) end, 1002 },
        { "close code 5000", function() return wsframe.close(5000) end, 1002 },
        { "a close reason that is not UTF-8", function() return wsframe.close(1000, "\xff") end, 1007 },
        { "invalid UTF-8 text", function() return wsframe.text("ok\xc0\xaf") end, 1007 },
        { "a surrogate in text", function() return wsframe.text("\xed\xa0\x80") end, 1007 },
        { "a message over --max-message", function() return wsframe.binary(("z"):rep(65537)) end, 1009 },
        { "fragments adding up past --max-message", function()
            return wsframe.binary(("z"):rep(40000), { fin = false }) .. wsframe.cont(("z"):rep(30000))
        end, 1009 },
    }
    for _, case in ipairs(bad) do
        it("closes with " .. case[3] .. " on " .. case[1], function()
            expect_close(case[2](), case[3])
        end)
    end

    it("fails invalid UTF-8 as soon as it arrives, before the message ends", function()
        local c = rawws.open(s.port, "/echo")
        -- first fragment ends in a bad byte; the message is never finished
        c:send(wsframe.text("fine so far \xff", { fin = false }))
        local code = c:recv_close()
        assert.are.equal(1007, code)
        c:close()
    end)

    it("fails a too-long message from its header, before the payload arrives", function()
        local c = rawws.open(s.port, "/echo")
        c:send(string.char(0x82, 0xff) .. wsframe.be(1 << 40, 8) .. wsframe.KEY)
        assert.are.equal(1009, (c:recv_close()))
        c:close()
    end)

    it("accepts a message of exactly --max-message bytes", function()
        local c = rawws.open(s.port, "/echo")
        c:send(wsframe.binary(("m"):rep(65536)))
        local f = c:recv_frame()
        assert.are.equal(65536, #f.payload)
        c:close()
    end)
end)
