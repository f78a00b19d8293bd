-- Timeouts and liveness against the real server: handshake timeout (a half
-- request, slowloris), idle timeout, and server pings with a pong deadline.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local proc = require "sbt_proc"

local APP = "spec/apps/core"

describe("timeouts", function()
    local s, clients
    before_each(function() clients = {} end)
    after_each(function()
        for _, c in ipairs(clients) do c:close() end
        if s then s:stop() end
        s = nil
    end)
    local function track(c) clients[#clients + 1] = c return c end

    describe("handshake", function()
        before_each(function()
            s = server.start{ app = APP, args = { "--handshake-timeout", "1", "--ping-interval", "0" } }
        end)

        it("answers 408 and closes a client that sent half a request", function()
            local bystander = track(rawws.open(s.port, "/echo"))
            local c = track(rawws.connect(s.port))
            local t0 = proc.now()
            c:send("GET /echo HTTP/1.1\r\nHost: x\r\n")
            local status, headers, body = c:http()
            local dt = proc.now() - t0
            assert.are.same({ 408, "close", "408 Request Timeout\n" }, { status, headers["connection"], body })
            assert.is_true(c:eof(3))
            assert.is_true(dt >= 0.9 and dt < 3, ("closed after %.2f s"):format(dt))
            -- an open WebSocket is not subject to the handshake timeout
            assert.are.equal("still here", bystander:echo("still here"))
        end)

        it("closes a client that connects and sends nothing", function()
            local c = track(rawws.connect(s.port))
            local t0 = proc.now()
            assert.is_true(c:eof(4))
            assert.is_true(proc.now() - t0 >= 0.9)
        end)

        it("closes a slowloris sending one byte every 100 ms", function()
            local c = track(rawws.connect(s.port))
            local req = rawws.request("/echo") -- about 15 s at this pace
            local t0, closed = proc.now(), false
            for i = 1, #req do
                if not c:send(req:sub(i, i)) then closed = true break end
                local ok, err = c:fill() -- waits up to 100 ms for the server's answer
                if not ok and err == "closed" then closed = true break end
                if #c.buf > 0 then closed = true break end
                if proc.now() - t0 > 5 then break end
                c.timeout = 0.1
            end
            local dt = proc.now() - t0
            assert.is_true(closed, "the slow request was not cut off")
            assert.is_true(dt >= 0.9 and dt < 3, ("cut off after %.2f s"):format(dt))
            if #c.buf > 0 then assert.truthy(c.buf:find("^HTTP/1%.1 408 ")) end
        end)
    end)

    it("closes a silent WebSocket with 1001 after --idle-timeout and keeps a talking one", function()
        s = server.start{ app = APP, args = { "--idle-timeout", "1.5", "--ping-interval", "0" } }
        local talker = track(rawws.open(s.port, "/echo"))
        local silent = track(rawws.open(s.port, "/echo"))
        local t0 = proc.now()
        local code, reason
        while proc.now() - t0 < 5 do
            assert.are.equal("tick", talker:echo("tick"))
            silent.timeout = 0.3
            local f = silent:recv_frame()
            if f then
                assert.are.equal(8, f.opcode)
                code, reason = string.unpack(">I2", f.payload), f.payload:sub(3)
                break
            end
        end
        local dt = proc.now() - t0
        assert.are.same({ 1001, "idle timeout" }, { code, reason })
        assert.is_true(dt >= 1.4 and dt < 3.5, ("closed after %.2f s"):format(dt))
        assert.is_true(silent:eof(3))
        assert.are.equal("tick", talker:echo("tick"))
    end)

    it("pings a silent peer, drops one that never answers, keeps one that does", function()
        s = server.start{ app = APP, args = { "--ping-interval", "1", "--pong-timeout", "1" } }
        local mute = track(rawws.open(s.port, "/echo"))
        local polite = track(rawws.open(s.port, "/echo"))
        -- both get a ping with an empty payload
        mute.timeout, polite.timeout = 4, 4
        assert.are.same({ fin = true, rsv = 0, opcode = 9, payload = "" }, mute:recv_frame())
        local t_ping = proc.now()
        local pings = 0
        local t0 = proc.now()
        polite.timeout = 0.2
        local mute_gone
        while proc.now() - t0 < 4.5 do
            local f = polite:recv_frame()
            if f then
                assert.are.equal(9, f.opcode)
                pings = pings + 1
                polite:send(wsframe.pong(f.payload))
            end
            if not mute_gone then
                local closed = mute:eof(0.05)
                if closed then mute_gone = proc.now() - t_ping end
            end
        end
        assert.truthy(mute_gone, "the peer that never answered was not dropped")
        assert.is_true(mute_gone >= 0.9 and mute_gone < 3, ("dropped %.2f s after the ping"):format(mute_gone))
        assert.is_true(pings >= 2, "pings answered: " .. pings)
        assert.are.equal("alive", polite:echo("alive"))
    end)
end)
