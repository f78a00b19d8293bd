-- The incremental UTF-8 validator (core/utf8.c), with the Autobahn §6 ideas:
-- overlongs, surrogates, code points above U+10FFFF, truncated sequences, and
-- every text split at every byte, through the validator and through the frame
-- decoder (fragments).
local t = require "sbt_frame"
local ws = require "wsframe"

local ACCEPT, REJECT = t.UTF8_ACCEPT, t.UTF8_REJECT

local function valid(s)
    local _, ok = t.utf8(s)
    return ok
end

local function state(s, st) return (t.utf8(s, st)) end

-- Feeds s split at every point (and byte by byte); all must end in the same verdict.
local function verdict_everywhere(s)
    local whole = state(s)
    local final = whole == REJECT and REJECT or (whole == ACCEPT and ACCEPT or "partial")
    local function norm(st) return st == REJECT and REJECT or (st == ACCEPT and ACCEPT or "partial") end
    for i = 0, #s do
        local st = state(s:sub(i + 1), state(s:sub(1, i)))
        assert.are.equal(final, norm(st), "split at " .. i)
    end
    local st = ACCEPT
    for i = 1, #s do st = state(s:sub(i, i), st) end
    assert.are.equal(final, norm(st), "byte by byte")
    return final
end

-- Lua's own decoder (strict: no surrogates, nothing above U+10FFFF, no overlongs).
local function reference(s) return utf8.len(s) ~= nil end

local VALID = {
    ["empty"] = "",
    ["ASCII"] = "Hello-\0-\127",
    ["the Greek word kosme"] = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5",
    ["U+0080, first 2-byte"] = "\xc2\x80",
    ["U+07FF, last 2-byte"] = "\xdf\xbf",
    ["U+0800, first 3-byte"] = "\xe0\xa0\x80",
    ["U+D7FF, before the surrogates"] = "\xed\x9f\xbf",
    ["U+E000, after the surrogates"] = "\xee\x80\x80",
    ["U+FFFD"] = "\xef\xbf\xbd",
    ["U+FFFF, last 3-byte"] = "\xef\xbf\xbf",
    ["U+10000, first 4-byte"] = "\xf0\x90\x80\x80",
    ["U+1F600 emoji"] = "\xf0\x9f\x98\x80",
    ["U+10FFFF, last code point"] = "\xf4\x8f\xbf\xbf",
    ["noncharacters U+FFFE U+1FFFF"] = "\xef\xbf\xbe\xf0\x9f\xbf\xbf",
}

local INVALID = {
    ["a lone continuation byte 0x80"] = "\x80",
    ["a lone continuation byte 0xBF"] = "\xbf",
    ["C0 and C1 (always overlong)"] = "\xc0\x80",
    ["overlong '/' in 2 bytes"] = "\xc0\xaf",
    ["overlong U+007F in 2 bytes"] = "\xc1\xbf",
    ["overlong '/' in 3 bytes"] = "\xe0\x80\xaf",
    ["overlong U+07FF in 3 bytes"] = "\xe0\x9f\xbf",
    ["overlong '/' in 4 bytes"] = "\xf0\x80\x80\xaf",
    ["overlong U+FFFF in 4 bytes"] = "\xf0\x8f\xbf\xbf",
    ["5-byte sequence"] = "\xf8\x88\x80\x80\x80",
    ["6-byte sequence"] = "\xfc\x84\x80\x80\x80\x80",
    ["U+D800, first high surrogate"] = "\xed\xa0\x80",
    ["U+DBFF"] = "\xed\xaf\xbf",
    ["U+DC00, first low surrogate"] = "\xed\xb0\x80",
    ["U+DFFF, last surrogate"] = "\xed\xbf\xbf",
    ["a surrogate pair as CESU-8"] = "\xed\xa0\x80\xed\xb0\x80",
    ["U+110000, above the last code point"] = "\xf4\x90\x80\x80",
    ["F5 lead byte"] = "\xf5\x80\x80\x80",
    ["0xFE"] = "\xfe",
    ["0xFF"] = "\xff",
    ["a lead byte followed by ASCII"] = "\xc3\x28",
    ["3-byte lead cut by ASCII"] = "\xe2\x82\x28",
    ["kosme, a surrogate, then 'edited'"] = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
}

local TRUNCATED = {
    ["a 2-byte lead"] = "\xc2",
    ["3-byte after one byte"] = "\xe2",
    ["3-byte after two bytes"] = "\xe2\x82",
    ["4-byte after three bytes"] = "\xf0\x9f\x98",
    ["kosme then a cut sequence"] = "\xce\xba\xe1\xbd",
}

describe("utf8_validate", function()
    for name, s in pairs(VALID) do
        it("accepts " .. name .. ", split at every byte", function()
            assert.are.equal(ACCEPT, verdict_everywhere(s))
            assert.is_true(reference(s))
        end)
    end

    for name, s in pairs(INVALID) do
        it("rejects " .. name .. ", split at every byte", function()
            assert.are.equal(REJECT, verdict_everywhere(s))
            assert.is_false(reference(s))
        end)
    end

    for name, s in pairs(TRUNCATED) do
        it("reports " .. name .. " as incomplete, neither accepted nor rejected", function()
            assert.are.equal("partial", verdict_everywhere(s))
            assert.is_false(valid(s))
        end)
    end

    it("rejects every surrogate U+D800..U+DFFF", function()
        for cp = 0xD800, 0xDFFF do
            assert.are.equal(REJECT, state(utf8.char(cp)), string.format("U+%04X", cp))
        end
    end)

    it("agrees with Lua's strict decoder on every code point and a few past U+10FFFF", function()
        for cp = 0, 0x10FFFF do
            local s = utf8.char(cp)
            local want = cp < 0xD800 or cp > 0xDFFF
            if valid(s) ~= want then
                error(string.format("U+%04X: expected %s", cp, tostring(want)))
            end
        end
        for _, cp in ipairs({ 0x110000, 0x13FFFF, 0x140000, 0x1FFFFF, 0x200000, 0x7FFFFFFF }) do
            assert.is_false(valid(utf8.char(cp)), string.format("U+%X", cp))
        end
    end)

    it("agrees with Lua's strict decoder on every 1- and 2-byte string", function()
        for a = 0, 255 do
            local s = string.char(a)
            local st = state(s)
            assert.are.equal(reference(s), st == ACCEPT)
            for b = 0, 255 do
                local s2 = string.char(a, b)
                if valid(s2) ~= reference(s2) then
                    error(string.format("%02X %02X", a, b))
                end
            end
        end
    end)

    it("agrees with Lua's strict decoder on random 3- to 6-byte strings", function()
        math.randomseed(6455)
        local leads = { 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5 }
        for _ = 1, 100000 do
            local b = { leads[math.random(#leads)] }
            for i = 2, math.random(3, 6) do
                b[i] = math.random(4) == 1 and math.random(0, 255) or math.random(0x80, 0xbf)
            end
            local s = string.char(table.unpack(b))
            if valid(s) ~= reference(s) then
                error(string.format(string.rep("%02X ", #b), table.unpack(b)))
            end
        end
    end)

    it("stays rejected once rejected", function()
        assert.are.equal(REJECT, state("abc", REJECT))
        assert.are.equal(REJECT, state("", REJECT))
    end)

    it("finds an invalid byte at every offset behind and inside the ASCII fast path", function()
        for pre = 0, 40 do
            for post = 0, 17 do
                local s = string.rep("a", pre) .. "\xff" .. string.rep("b", post)
                assert.are.equal(REJECT, state(s), pre .. "/" .. post)
            end
        end
    end)

    it("validates multibyte sequences at every offset after ASCII runs", function()
        for pre = 0, 24 do
            for _, seq in ipairs({ "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80" }) do
                local s = string.rep("a", pre) .. seq .. string.rep("z", 9) .. seq
                assert.are.equal(ACCEPT, state(s), pre .. "/" .. #seq)
                assert.are_not.equal(ACCEPT, state(s:sub(1, -2)))
                assert.are.equal(REJECT, state(s:sub(1, -2) .. "a"))
            end
        end
    end)

    it("finds an invalid byte at every offset of the 32-byte and 8-byte steps", function()
        for pre = 0, 100 do
            for _, post in ipairs({ 0, 1, 7, 8, 31, 32, 33, 70 }) do
                local s = string.rep("a", pre) .. "\x80" .. string.rep("b", post)
                assert.are.equal(REJECT, state(s), pre .. "/" .. post)
                -- a valid sequence there is accepted, and a cut one is partial
                assert.are.equal(ACCEPT, state(string.rep("a", pre) .. "\xe2\x82\xac" .. string.rep("b", post)))
                assert.are_not.equal(ACCEPT, state(string.rep("a", pre) .. "\xe2\x82"))
            end
        end
    end)

    it("accepts a long mixed text", function()
        local s = string.rep("plain ascii text \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5 \xf0\x9f\x98\x80 ", 500)
        assert.is_true(valid(s))
        assert.is_false(valid(s .. "\xed\xa0\x80"))
    end)
end)

describe("text messages through the frame decoder", function()
    -- Splits s into fragments at i and j (i <= j): text, cont, cont.
    local function fragments(s, i, j)
        return ws.text(s:sub(1, i), { fin = false }) .. ws.cont(s:sub(i + 1, j), { fin = false })
            .. ws.cont(s:sub(j + 1))
    end

    local function decode(stream)
        local d <close> = t.new()
        local ev, n, code = d:feed(stream)
        return ev, n and nil or code
    end

    it("accepts valid text split into fragments at every pair of bytes", function()
        local s = "\xf0\x9f\x98\x80a\xe2\x82\xac\xc3\xa9\xf4\x8f\xbf\xbf"
        for i = 0, #s do
            for j = i, #s do
                local ev, code = decode(fragments(s, i, j))
                assert.is_nil(code, i .. "," .. j)
                assert.are.same({ { type = "message", opcode = 1, data = s, compressed = false } }, ev)
            end
        end
    end)

    for name, s in pairs(INVALID) do
        it("closes with 1007 for " .. name .. " split into fragments anywhere", function()
            for i = 0, #s do
                for j = i, #s do
                    local ev, code = decode(fragments(s, i, j))
                    assert.are.same({}, ev)
                    assert.are.equal(1007, code, i .. "," .. j)
                end
            end
        end)
    end

    for name, s in pairs(TRUNCATED) do
        it("closes with 1007 when a message ends on " .. name, function()
            for i = 0, #s do
                local _, code = decode(fragments(s, i, i))
                assert.are.equal(1007, code)
            end
        end)
    end

    -- A whole frame is unmasked and checked in one pass while it is ASCII
    -- (ws_unmask_ascii, 32 bytes per step), the rest by the validator; a
    -- frame split across reads is copied, unmasked and checked as it comes.
    -- Both must give the same verdict, byte-exact, wherever the odd byte is.
    local KEYS = { ws.KEY, "\0\0\0\0", "\xff\x80\x01\x7f" }
    local function feed_whole_and_split(payload, key)
        local frame = ws.text(payload, { key = key })
        local out = {}
        for _, cut in ipairs({ #frame, 7, #frame - 1, 8 + (#payload // 2) }) do
            if cut >= 1 and cut <= #frame then
                local d <close> = t.new()
                local ev, n, code = d:feed(frame:sub(1, cut))
                if n and cut < #frame then
                    local ev2
                    ev2, n, code = d:feed(frame:sub(cut + 1))
                    for _, e in ipairs(ev2 or {}) do ev[#ev + 1] = e end
                end
                out[#out + 1] = { ev = ev, code = n and 0 or code }
            end
        end
        for i = 2, #out do assert.are.same(out[1], out[i]) end
        return out[1].ev, out[1].code
    end

    it("rejects an invalid byte at every offset of a frame, whole or split, with 1007", function()
        for _, key in ipairs(KEYS) do
            for len = 1, 100 do
                for at = 1, len do
                    local p = string.rep("x", at - 1) .. "\xc0" .. string.rep("y", len - at)
                    local ev, code = feed_whole_and_split(p, key)
                    assert.are.same({}, ev)
                    assert.are.equal(1007, code, len .. "@" .. at)
                end
            end
        end
    end)

    it("delivers text with a multibyte character at every offset byte-exact, whole or split", function()
        for _, key in ipairs(KEYS) do
            for len = 4, 100, 3 do
                for at = 1, len - 3 do
                    local p = string.rep("x", at - 1) .. "\xf0\x9f\x98\x80" .. string.rep("y", len - at - 3)
                    local ev, code = feed_whole_and_split(p, key)
                    assert.are.equal(0, code, len .. "@" .. at)
                    assert.are.same({ { type = "message", opcode = 1, data = p, compressed = false } }, ev)
                    -- cut before its last byte: the message ends inside the sequence
                    local _, code2 = feed_whole_and_split(p:sub(1, at + 2), key)
                    assert.are.equal(1007, code2)
                end
            end
        end
    end)

    it("unmasks like ws_mask and reports an ASCII prefix of whole 32-byte steps", function()
        math.randomseed(16)
        for len = 0, 200 do
            for _, key in ipairs(KEYS) do
                local b = {}
                for i = 1, len do b[i] = math.random(0x20, 0x7e) end
                if len > 0 and math.random(2) == 1 then b[math.random(len)] = math.random(0x80, 0xff) end
                local plain = string.char(table.unpack(b))
                local masked = ws.mask(plain, key)
                local out, a = t.unmask_ascii(masked, key)
                assert.are.equal(plain, out)
                assert.are.equal(t.mask(masked, key), out)
                assert.are.equal(0, a % 32)
                assert.is_nil(plain:sub(1, a):find("[\x80-\xff]"))
                if a + 32 <= len then -- the next whole step holds a high byte
                    assert.is_not_nil(plain:sub(a + 1, a + 32):find("[\x80-\xff]"), len .. "/" .. a)
                end
            end
        end
    end)

    it("fails as soon as a fragment makes the text invalid, before the message ends", function()
        local d <close> = t.new()
        local _, n = d:feed(ws.text("\xed", { fin = false }))
        assert.is_not_nil(n)
        local _, n2, code = d:feed(ws.cont("\xa0", { fin = false }))
        assert.is_nil(n2)
        assert.are.equal(1007, code)
    end)
end)
