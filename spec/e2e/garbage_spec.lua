-- Bad input of every kind, thrown at the real server over many connections:
-- it answers each as the protocol says and never stops serving the others.
-- Every loop is bounded; the random stream is seeded so a failure replays.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local socket = require "socket"

local SEED = tonumber(os.getenv("SB_GARBAGE_SEED") or "") or 20261125

local function random_bytes(n)
    local t = {}
    for i = 1, n do t[i] = string.char(math.random(0, 255)) end
    return table.concat(t)
end

describe("garbage in", function()
    local s, bystander
    setup(function()
        math.randomseed(SEED)
        s = server.start{ args = { "--handshake-timeout", "2", "--close-timeout", "1" } }
        bystander = rawws.open(s.port, "/echo")
    end)
    teardown(function()
        if bystander then bystander:close() end
        s:stop()
    end)

    local function still_serving(tag)
        assert.are.equal(tag, bystander:echo(tag))
        local fresh = rawws.open(s.port, "/echo")
        assert.are.equal(tag, fresh:echo(tag))
        fresh:close()
    end

    it("answers random bytes before a handshake with 400 or a close, 200 times", function()
        for i = 1, 200 do
            local c = rawws.connect(s.port)
            c:send(random_bytes(math.random(1, 600)) .. "\r\n\r\n")
            local status = c:http()
            -- a 4xx answer, or nothing at all if the bytes never formed a request line
            assert.is_true(status == nil or (status >= 400 and status < 600), "case " .. i)
            c:close()
        end
        still_serving("after http garbage")
    end)

    it("closes with 1002, 1007 or 1009 on random frames after a handshake, 200 times", function()
        local codes = {}
        for i = 1, 200 do
            local c = rawws.open(s.port, "/echo")
            -- a random first byte and length byte, masked, with random payload
            local b0 = math.random(0, 255)
            local len = math.random(0, 125)
            local frame = string.char(b0, 0x80 | len) .. wsframe.KEY .. random_bytes(len)
            c:send(frame .. wsframe.close(1000))
            c.timeout = 5
            local code = c:recv_close()
            if code then codes[code] = (codes[code] or 0) + 1 end
            assert.is_true(code == false or code == 1000 or code == 1002
                or code == 1007 or code == 1009, "case " .. i .. ": close " .. tostring(code))
            c:close()
        end
        assert.is_truthy(codes[1002], "some random frames must be protocol errors")
        still_serving("after frame garbage")
    end)

    it("survives peers that vanish mid-request, mid-frame and mid-message", function()
        for i = 1, 100 do
            local c = rawws.connect(s.port)
            local req = rawws.request("/echo")
            local kind = i % 4
            if kind == 0 then
                c:send(req:sub(1, math.random(1, #req - 1)))
            elseif kind == 1 then
                c:send(req .. wsframe.binary(("x"):rep(5000)):sub(1, 100))
            elseif kind == 2 then
                c:send(req .. wsframe.text("part", { fin = false }))
            else
                c:send(req .. wsframe.ping("x"))
            end
            -- reset instead of a clean FIN
            c.sock:setoption("linger", { on = true, timeout = 0 })
            c:close()
        end
        still_serving("after vanishing peers")
    end)

    it("drops a client that opens a connection and sends nothing, after the handshake timeout", function()
        local c = rawws.connect(s.port)
        local t0 = socket.gettime()
        assert.is_true(c:eof(6))
        local took = socket.gettime() - t0
        assert.is_true(took >= 1.5 and took < 5, "took " .. took)
        c:close()
        still_serving("after an idle socket")
    end)
end)
