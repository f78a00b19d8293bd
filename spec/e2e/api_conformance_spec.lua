-- One API conformance suite, run twice: against switchboard.testing (the fake
-- users' specs run on) and against the real server. The same route script
-- answers the same cases in both, so the fake cannot drift from the server
-- unnoticed. Each case's expected answer is the contract (README, DESIGN.md).
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local testing = require "switchboard.testing"

local MAX = 1000 -- --max-message for both sides

-- Every case answers with one text message starting with "=" (after any
-- messages the case itself sends).
local SCRIPT = [[
local sb = require "switchboard"
local MAX = %d

-- error text without the position, digits of ids as N
local function show(v)
    return (tostring(v):gsub("^[^\n]-:%%d+: ", ""):gsub("ws %%d+", "ws N"))
end

local function try(f, ...)
    local ok, res = pcall(f, ...)
    return (ok and "ok " or "error ") .. show(res)
end

sb.history.keep("hc:", { size = 3, format = function(msg, pos) return pos .. ":" .. msg end })
sb.history.keep("hcbad:", { format = function() error("no") end })

local cases = {
    hist_read = function()
        for i = 1, 4 do sb.publish("hc:r", "m" .. i) end
        local items, epoch = sb.history.read("hc:r")
        local out = {}
        for _, it in ipairs(items) do
            out[#out + 1] = it.pos .. "=" .. it.msg .. "/" .. tostring(it.binary)
        end
        local last = sb.history.read("hc:r", { limit = 1 })
        local after = sb.history.read("hc:r", { since = 2, limit = 1 })
        return table.concat(out, ",") .. " " .. type(epoch) .. " " .. last[1].pos .. " "
            .. after[1].pos .. " " .. #sb.history.read("nohist")
    end,
    hist_recover = function(ws)
        for i = 1, 3 do sb.publish("hc:c", "m" .. i) end
        local _, epoch = sb.history.read("hc:c")
        local out = {}
        for _, opts in ipairs({ { since = 2, epoch = epoch }, { since = 2, epoch = epoch .. "x" },
                { since = 4, epoch = epoch }, { since = "x", epoch = epoch }, { since = 0 } }) do
            local ok, e = ws:subscribe("hc:c", opts)
            out[#out + 1] = tostring(ok) .. "/" .. tostring(e == epoch)
            ws:unsubscribe("hc:c")
        end
        out[#out + 1] = tostring(ws:subscribe("nohist", { since = 0, epoch = epoch }))
        ws:unsubscribe("nohist")
        return table.concat(out, " ")
    end,
    hist_format_error = function() return try(sb.publish, "hcbad:a", "z") end,
    hist_keep_bad_size = function() return try(sb.history.keep, "x", { size = 0 }) end,
    hist_keep_bad_opts = function() return try(sb.history.keep, "x", 5) end,
    hist_read_bad_since = function() return try(sb.history.read, "hc:r", { since = -1 }) end,
    hist_subscribe_bad_opts = function(ws) return try(ws.subscribe, ws, "hc:r", 5) end,
    tostring = function(ws) return show(tostring(ws)) end,
    tostring_closed = function() return show(tostring(sb.shared.closed_ws)) end,
    closed_send = function() return try(sb.shared.closed_ws.send, sb.shared.closed_ws, "x") end,
    closed_id = function() return math.type(sb.shared.closed_ws.id) end,
    last_close = function() return sb.shared.last_close or "none" end,
    close_1001 = function(ws) return try(ws.close, ws, 1001) end,
    close_1012 = function(ws) return try(ws.close, ws, 1012) end,
    close_1014 = function(ws) return try(ws.close, ws, 1014) end,
    close_2999 = function(ws) return try(ws.close, ws, 2999) end,
    close_5000 = function(ws) return try(ws.close, ws, 5000) end,
    close_fraction = function(ws) return try(ws.close, ws, 1000.5) end,
    close_string = function(ws) return try(ws.close, ws, "1000") end,
    close_long_reason = function(ws) return try(ws.close, ws, 1000, ("r"):rep(124)) end,
    send_max = function(ws) return try(ws.send, ws, ("x"):rep(MAX)) end,
    send_over_max = function(ws) return try(ws.send, ws, ("x"):rep(MAX + 1)) end,
    send_binary_over_max = function(ws) return try(ws.send, ws, ("\255"):rep(MAX + 1), true) end,
    publish_over_max = function(ws) return try(ws.publish, ws, "t", ("x"):rep(MAX + 1)) end,
    sb_publish_over_max = function() return try(sb.publish, "t", ("x"):rep(MAX + 1)) end,
    send_bad_utf8 = function(ws) return try(ws.send, ws, "\255") end,
    send_table = function(ws) return try(ws.send, ws, {}) end,
    send_number = function(ws) return try(ws.send, ws, 42) end,
    ping_long = function(ws) return try(ws.ping, ws, ("p"):rep(126)) end,
    subscribe_empty = function(ws) return try(ws.subscribe, ws, "") end,
    subscribe_twice = function(ws)
        return tostring(ws:subscribe("twice")) .. " " .. tostring(ws:subscribe("twice"))
    end,
    unsubscribe_unknown = function(ws) return try(ws.unsubscribe, ws, "never") end,
    read_only = function(ws) return try(function() ws.nick = "x" end) end,
    data_not_table = function(ws) return try(function() ws.data = 5 end) end,
    after_negative = function() return try(sb.after, -1, function() end) end,
    every_too_often = function() return try(sb.every, 0.0001, function() end) end,
    after_no_function = function() return try(sb.after, 1) end,
    log_nothing = function() return try(sb.log.info) end,
    now_type = function() return math.type(sb.now()) end,
    node = function() return tostring(#sb.node) .. " " .. tostring(sb.node:match("^%%x+$") ~= nil) end,
    topics_sorted = function(ws)
        ws:subscribe("b") ws:subscribe("a")
        return table.concat(sb.topics(), ",")
    end,
    bad_self = function(ws) return try(ws.send, "nope", "x") end,
    json_slash = function() return sb.json.encode({ url = "https://example.com/a/b" }) end,
    json_empty_array = function() return sb.json.encode({ list = sb.json.array() }) end,
    json_marked_array = function() return sb.json.encode(sb.json.array({ 1, 2 })) end,
    json_array_mt = function() return sb.json.encode(setmetatable({}, sb.json.array_mt)) end,
    json_empty_table = function() return sb.json.encode({}) end,
    json_null = function()
        local t = sb.json.decode('{"a":null,"b":[1,null,3]}')
        return tostring(t.a == sb.json.null) .. " " .. sb.json.encode(t.b) .. " "
            .. sb.json.encode({ n = sb.json.null })
    end,
    json_escapes = function() return sb.json.encode("q\"b\\n\n\1/\127é") end,
    json_numbers = function() return sb.json.encode({ 9007199254740993, 0.1, 1 / 3, 1e300, 2.5, -3 }) end,
    json_sparse = function() return try(sb.json.encode, { [20] = 1 }) end,
    json_function = function() return try(sb.json.encode, { f = print }) end,
    json_nan = function() return try(sb.json.encode, 0 / 0) end,
    json_key = function() return try(sb.json.encode, { [true] = 1 }) end,
    json_cycle = function() local t = {} t[1] = t return try(sb.json.encode, t) end,
    json_array_misuse = function() return try(sb.json.array, "x") end,
    json_array_twice = function() return try(sb.json.array, setmetatable({}, {})) end,
    sleep_negative = function() return try(sb.sleep, -1) end,
    sleep_too_long = function() return try(sb.sleep, 1e10) end,
    sleep_string = function() return try(sb.sleep, "1") end,
    sleep_nan = function() return try(sb.sleep, 0 / 0) end,
    sleep_waits = function()
        local t = sb.now()
        sb.sleep(0.05)
        return tostring(sb.now() - t >= 0.05)
    end,
    sleep_in_coroutine = function()
        return coroutine.wrap(function() return try(sb.sleep, 0) end)()
    end,
    spawn_wait = function()
        local th = sb.spawn(function(a, b) sb.sleep(0.01) return a + b, "x" end, 1, 2)
        local ok, sum, x = sb.wait(th)
        return tostring(ok) .. " " .. sum .. " " .. x
    end,
    spawn_error = function()
        local ok, err = sb.wait(sb.spawn(function() error("oops", 0) end))
        return tostring(ok) .. " " .. show(err)
    end,
    spawn_twice_waited = function()
        local th = sb.spawn(function() return 7 end)
        sb.wait(th)
        local ok, v = sb.wait(th)
        return tostring(ok) .. " " .. v
    end,
    spawn_order = function()
        local log = {}
        local a = sb.spawn(function() sb.sleep(0.02) log[#log + 1] = "a" end)
        local b = sb.spawn(function() sb.sleep(0.01) log[#log + 1] = "b" end)
        log[#log + 1] = "main"
        sb.wait(a) sb.wait(b)
        return table.concat(log, ",")
    end,
    spawn_no_function = function() return try(sb.spawn) end,
    sub_a_publish = function()
        local function record(msg, binary)
            sb.shared.sub_seen = (sb.shared.sub_seen or "") .. msg .. (binary and "b" or "t") .. ","
        end
        local first, again = sb.subscribe("sub", record), sb.subscribe("sub", record)
        sb.publish("sub", "one")
        sb.publish("sub", "\0", true)
        -- the functions run after the publish returns, never inside it
        return tostring(first) .. " " .. tostring(again) .. " " .. tostring(sb.shared.sub_seen)
    end,
    sub_b_seen = function(ws)
        ws:publish("sub", "two")
        return sb.shared.sub_seen:gsub("%%z", "0")
    end,
    sub_c_unsubscribe = function()
        return tostring(sb.unsubscribe("sub")) .. " " .. tostring(sb.unsubscribe("sub"))
            .. " " .. #sb.topics()
    end,
    sub_misuse = function()
        return try(sb.subscribe, "") .. "; " .. try(sb.subscribe, "x", "f") .. "; "
            .. try(sb.unsubscribe, "x", 1)
    end,
    presence_self = function(ws)
        ws:subscribe("pres", { presence = { nick = "me" } })
        local list = sb.presence("pres")
        local r = #list .. " " .. list[1].nick
        ws:unsubscribe("pres")
        return r .. " " .. #sb.presence("pres")
    end,
    presence_misuse = function(ws)
        return try(ws.subscribe, ws, "pm", { presence = "me" }) .. "; "
            .. try(ws.subscribe, ws, "pm", { presence = { n = ("x"):rep(1100) } }) .. "; "
            .. try(ws.subscribe, ws, "pm", 5) .. "; " .. try(sb.presence, {})
    end,
    wait_not_thread = function() return try(sb.wait, {}) end,
}

return {
    message = function(ws, msg)
        local case = cases[msg]
        ws:send("=" .. (case and tostring(case(ws)) or ("echo " .. #msg)))
    end,
    close = function(ws, code, reason)
        sb.shared.last_close = code .. " " .. reason
        sb.shared.closed_ws = ws
    end,
}
]]

-- The two sides, one interface: side.open() -> conn; conn:ask(msg) -> the
-- case's answer, or nil and the close code when the connection was closed
-- instead; conn:peer_close(code, reason); conn:close().

local function fake_side(dir)
    local app = testing.app(dir, { max_message = MAX })
    local route = app:load("conformance")
    local side = {}
    function side.open()
        local c = assert(route:connect())
        local conn = {}
        function conn.ask(_, msg)
            c:clear()
            c:message(msg)
            if not c:is_open() then return nil, c.closed and c.closed.code end
            local last = c.sent[#c.sent]
            return last and last.data:match("^=(.*)$")
        end
        function conn.peer_close(_, code, reason) c:close(code, reason) end
        function conn.close() if c:is_open() then c:close(1000) end end
        return conn
    end
    function side.stop() end
    return side
end

local function real_side(dir)
    local s = server.start{ app = dir, args = { "--max-message", tostring(MAX), "--no-watch" } }
    local side, open = {}, {}
    function side.open()
        local c = rawws.open(s.port, "/conformance")
        open[#open + 1] = c
        local conn = {}
        function conn.ask(_, msg)
            assert(c:send(wsframe.text(msg)))
            while true do
                local f = c:recv_frame()
                if not f then return nil end
                if f.opcode == 8 then
                    c:send(wsframe.close(1000, "")) -- finish the closing handshake
                    c:close()
                    return nil, string.unpack(">I2", f.payload)
                end
                local answer = f.payload:match("^=(.*)$")
                if answer then return answer end
            end
        end
        function conn.peer_close(_, code, reason)
            c:send(wsframe.close(code, reason))
            c:recv_close()
            c:close()
        end
        function conn.close() end
        return conn
    end
    function side.stop()
        for _, c in ipairs(open) do c:close() end
        s:stop()
    end
    return side
end

-- case -> the answer every side must give
local EXPECT = {
    hist_read = "2=m2/false,3=m3/false,4=m4/false string 4 3 0",
    hist_recover = "true/true false/true false/true false/true false/true false",
    hist_format_error = "ok 0",
    hist_keep_bad_size = "error bad argument #2 to 'keep' (opts.size must be an integer from 1 to 1e6)",
    hist_keep_bad_opts = "error bad argument #2 to 'keep' (table expected, got number)",
    hist_read_bad_since = "error bad argument #2 to 'read' (opts.since must be an integer >= 0)",
    hist_subscribe_bad_opts = "error bad argument #2 to 'subscribe' (table expected, got number)",
    tostring = "ws N",
    close_1001 = "error bad argument #1 to 'close' (close code must be 1000 or 3000-4999)",
    close_1012 = "error bad argument #1 to 'close' (close code must be 1000 or 3000-4999)",
    close_1014 = "error bad argument #1 to 'close' (close code must be 1000 or 3000-4999)",
    close_2999 = "error bad argument #1 to 'close' (close code must be 1000 or 3000-4999)",
    close_5000 = "error bad argument #1 to 'close' (close code must be 1000 or 3000-4999)",
    close_fraction = "error bad argument #1 to 'close' (close code must be 1000 or 3000-4999)",
    close_string = "error bad argument #1 to 'close' (number expected, got string)",
    close_long_reason = "error bad argument #2 to 'close' (reason longer than 123 bytes)",
    send_max = "ok true",
    send_over_max = "error bad argument #1 to 'send' (message longer than --max-message)",
    send_binary_over_max = "error bad argument #1 to 'send' (message longer than --max-message)",
    publish_over_max = "error bad argument #2 to 'publish' (message longer than --max-message)",
    sb_publish_over_max = "error bad argument #2 to 'publish' (message longer than --max-message)",
    send_bad_utf8 = "error bad argument #1 to 'send' (text is not valid UTF-8 (send it as binary))",
    send_table = "error bad argument #1 to 'send' (string expected, got table)",
    send_number = "ok true",
    ping_long = "error bad argument #1 to 'ping' (ping payload longer than 125 bytes)",
    subscribe_empty = "error bad argument #1 to 'subscribe' (topic must not be empty)",
    subscribe_twice = "true false",
    unsubscribe_unknown = "ok false",
    read_only = "error ws.nick is read-only (keep your state in ws.data)",
    after_negative = "error bad argument #1 to 'after' (seconds must be between 0 and 1e9)",
    every_too_often = "error bad argument #1 to 'every' (an 'every' interval must be at least 0.001 seconds)",
    after_no_function = "error bad argument #2 to 'after' (function expected, got no value)",
    log_nothing = "error bad argument #1 to 'info' (string expected, got no value)",
    now_type = "float",
    node = "16 true",
    topics_sorted = "a,b,twice",
    bad_self = "error calling 'send' on bad self (ws expected, got string)",
    json_slash = '{"url":"https://example.com/a/b"}',
    json_empty_array = '{"list":[]}',
    json_marked_array = "[1,2]",
    json_array_mt = "[]",
    json_empty_table = "{}",
    json_null = 'true [1,null,3] {"n":null}',
    json_escapes = '"q\\"b\\\\n\\n\\u0001/\127é"',
    json_numbers = "[9007199254740993,0.1,0.3333333333333333,1e+300,2.5,-3]",
    json_sparse = "error bad argument #1 to 'encode' (excessively sparse array)",
    json_function = "error bad argument #1 to 'encode' (cannot encode a function)",
    json_nan = "error bad argument #1 to 'encode' (cannot encode NaN or infinity)",
    json_key = "error bad argument #1 to 'encode' (table keys must be strings or numbers)",
    json_cycle = "error bad argument #1 to 'encode' (nested more than 1000 deep (a table that contains itself?))",
    json_array_misuse = "error bad argument #1 to 'array' (table expected, got string)",
    json_array_twice = "error bad argument #1 to 'array' (the table already has a metatable)",
    sleep_negative = "error bad argument #1 to 'sleep' (seconds must be between 0 and 1e9)",
    sleep_too_long = "error bad argument #1 to 'sleep' (seconds must be between 0 and 1e9)",
    sleep_string = "error bad argument #1 to 'sleep' (number expected, got string)",
    sleep_nan = "error bad argument #1 to 'sleep' (seconds must be between 0 and 1e9)",
    sleep_waits = "true",
    sleep_in_coroutine = "error 'sleep' cannot wait inside a coroutine of the script's own "
        .. "(coroutine.wrap/resume): use sb.spawn",
    spawn_wait = "true 3 x",
    spawn_error = "false oops",
    spawn_twice_waited = "true 7",
    spawn_order = "main,b,a",
    spawn_no_function = "error bad argument #1 to 'spawn' (function expected, got no value)",
    wait_not_thread = "error bad argument #1 to 'wait' (thread from sb.spawn expected, got table)",
    sub_a_publish = "true false nil",
    sub_b_seen = "onet,0b,",
    sub_c_unsubscribe = "true false 0",
    sub_misuse = "error bad argument #1 to 'subscribe' (topic must not be empty); "
        .. "error bad argument #2 to 'subscribe' (function expected, got string); "
        .. "error bad argument #2 to 'unsubscribe' (function expected, got number)",
    presence_self = "1 me 0",
    presence_misuse = "error bad argument #2 to 'subscribe' (presence must be a table); "
        .. "error bad argument #2 to 'subscribe' (presence longer than 1024 bytes as JSON); "
        .. "error bad argument #2 to 'subscribe' (table expected, got number); "
        .. "error bad argument #1 to 'presence' (string expected, got table)",
}

local ORDER = {}
for name in pairs(EXPECT) do ORDER[#ORDER + 1] = name end
table.sort(ORDER)

for _, which in ipairs({ "switchboard.testing", "the server" }) do
    describe("the API on " .. which, function()
        local dir, side

        setup(function()
            dir = server.tmpname("-app")
            assert(os.execute("mkdir -p '" .. dir .. "'"))
            server.write_file(dir .. "/conformance.lua", SCRIPT:format(MAX))
            side = (which == "the server" and real_side or fake_side)(dir)
        end)

        teardown(function()
            if side then side.stop() end
            os.execute("rm -rf '" .. dir .. "'")
        end)

        it("answers every case as the contract says", function()
            local conn = side.open()
            local got = {}
            for _, name in ipairs(ORDER) do got[name] = conn:ask(name) end
            conn:close()
            assert.same(EXPECT, got)
        end)

        -- the close handler has run once the last close shows on another connection
        local function last_close(probe, want)
            server.wait_for(function() return probe:ask("last_close") == want end, 10, "close " .. want)
        end

        it("passes the peer's close codes 1012-1014 and its reason to close", function()
            local probe = side.open()
            for _, code in ipairs({ 1012, 1013, 1014, 3000, 4999 }) do
                local c = side.open()
                c:peer_close(code, "bye " .. code)
                last_close(probe, code .. " bye " .. code)
            end
            probe:close()
        end)

        it("shows a closed ws as closed, keeps its id, and raises from its methods", function()
            local probe = side.open()
            local c = side.open()
            c:peer_close(1000, "done")
            last_close(probe, "1000 done")
            assert.equal("ws N (closed)", probe:ask("tostring_closed"))
            assert.equal("integer", probe:ask("closed_id"))
            assert.equal("error bad argument #1 to 'send' (ws N is closed)", probe:ask("closed_send"))
            probe:close()
        end)

        it("closes with 1009 on a message longer than --max-message, and takes one at it", function()
            local c = side.open()
            assert.equal("echo " .. MAX, (c:ask(("m"):rep(MAX))))
            local answer, code = c:ask(("m"):rep(MAX + 1))
            assert.same({ nil, 1009 }, { answer, code })
            local probe = side.open()
            server.wait_for(function() return (probe:ask("last_close") or ""):match("^1009") end, 10, "close 1009")
            probe:close()
        end)
    end)
end
