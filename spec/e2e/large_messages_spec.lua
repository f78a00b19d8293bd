-- Large messages on their fast paths (issue 16): a whole frame is unmasked and
-- checked in place, a split one reassembled; a frame of 16 KiB or more with
-- nothing queued before it is written at once from the sender's string and
-- only the rest is queued; a text message handled is sent back without a
-- second UTF-8 pass. All must stay byte-exact and in order.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local socket = require "socket"

local APP = "spec/apps/large"

local function pattern(n, seed)
    local t = {}
    for i = 1, n do t[i] = string.char(32 + (i * 7 + seed) % 95) end
    return table.concat(t)
end

describe("large messages", function()
    local s
    setup(function() s = server.start{ app = APP } end)
    teardown(function() s:stop() end)

    it("are echoed byte-exact, text and binary, sent whole or in pieces", function()
        local c = rawws.open(s.port, "/big")
        for _, n in ipairs({ 16383, 16384, 65536, 65537, 300000, 1048576 }) do
            for _, bin in ipairs({ false, true }) do
                local p = pattern(n, n % 13)
                if bin then p = p:gsub("^.", "\xff") end
                local frame = bin and wsframe.binary(p) or wsframe.text(p .. "\xc3\xa9")
                -- whole, then cut in three (the decoder reassembles across reads)
                for _, cuts in ipairs({ { #frame }, { 3, #frame // 2, #frame } }) do
                    local from = 1
                    for _, to in ipairs(cuts) do
                        assert(c:send(frame:sub(from, to)))
                        from = to + 1
                        socket.sleep(0.01)
                    end
                    local f = assert(c:recv_frame())
                    assert.are.equal(bin and 2 or 1, f.opcode)
                    assert.is_true(f.payload == (bin and p or p .. "\xc3\xa9"), n .. (bin and " binary" or " text"))
                end
            end
        end
        c:close()
    end)

    it("keep their order with small ones to a reader that stalls, then reads", function()
        local c = rawws.open(s.port, "/big", nil, { rcvbuf = 4096 })
        local N, SIZE = 40, 100000
        assert(c:send(wsframe.text("mix " .. N .. " " .. SIZE)))
        socket.sleep(0.5) -- the kernel's buffers fill; the rest queues in the server
        for i = 1, N do
            local f = assert(c:recv_frame())
            assert.are.equal(2, f.opcode)
            assert.is_true(f.payload == string.char(65 + (i - 1) % 26):rep(SIZE), "frame " .. i)
            local k = assert(c:recv_frame())
            assert.are.same({ opcode = 1, payload = "k" .. i }, { opcode = k.opcode, payload = k.payload })
        end
        assert.are.equal("still here", c:echo("still here"))
        c:close()
    end)

    it("sent back as text are still checked when they are not the text message handled", function()
        local c = rawws.open(s.port, "/big")
        -- a binary message is not checked on the way in: sent as text, it is refused
        assert(c:send(wsframe.binary("astext:" .. ("x"):rep(20000) .. "\xff")))
        local f = assert(c:recv_frame())
        assert.are.equal(1, f.opcode)
        assert.truthy(f.payload:find("not valid UTF%-8"), f.payload)
        -- valid bytes that came as binary go out as text
        assert(c:send(wsframe.binary("astext:" .. ("y"):rep(20000))))
        f = assert(c:recv_frame())
        assert.are.same({ 1, 20000 }, { f.opcode, #f.payload })
        -- a new string made from the text message handled is checked
        assert(c:send(wsframe.text("append" .. ("z"):rep(20000))))
        f = assert(c:recv_frame())
        assert.truthy(f.payload:find("^error: .*not valid UTF%-8"), f.payload)
        c:close()
    end)
end)
