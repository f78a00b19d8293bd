-- Prometheus metrics on the real server: scraped during a scenario and parsed
-- with prometheus_client's text parser (Debian python3-prometheus-client), the
-- counters match what the scenario did; switchboard.stats() agrees.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local cjson = require "cjson"

local PYTHON = "/usr/bin/python3"

-- Fetches a URL, parses it with the real parser, prints one JSON object:
-- { types = { family = type }, samples = { ["name{k=v,...}"] = value } }.
local SCRAPER = [=[
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
resp = urllib.request.urlopen(sys.argv[1], timeout=10)
ctype = resp.headers["Content-Type"]
text = resp.read().decode("utf-8")
types, samples = {}, {}
for fam in text_string_to_metric_families(text):
    types[fam.name] = fam.type
    for s in fam.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        samples["%s{%s}" % (s.name, labels)] = s.value
print(json.dumps({"content_type": ctype, "types": types, "samples": samples}))
]=]

local function scrape(url)
    local script = server.tmpname(".py")
    local f = assert(io.open(script, "w"))
    f:write(SCRAPER)
    f:close()
    local p = io.popen(("env -u LD_PRELOAD timeout 20 %s %s '%s' 2>&1"):format(PYTHON, script, url))
    local out = p:read("a")
    p:close()
    os.remove(script)
    local ok, parsed = pcall(cjson.decode, out)
    assert(ok, "scraper failed: " .. out)
    return parsed
end

local http_get = rawws.get

local function copy_app()
    local dir = server.tmpname(".app")
    assert(os.execute(("cp -r %s/spec/apps/metrics %s"):format(server.root, dir)))
    return dir
end

describe("metrics", function()
    local s, app
    after_each(function()
        if s then s:stop() end
        s = nil
        if app then os.execute("rm -rf " .. app) end
        app = nil
    end)

    it("are off by default", function()
        s = server.start{ app = "spec/apps/metrics" }
        assert.are.equal(404, (http_get(s.port, "/metrics")))
    end)

    it("count what a scenario did, in a format prometheus_client parses", function()
        app = copy_app()
        s = server.start{ app = app, args = { "--metrics", "127.0.0.1:0", "--metrics-path", "/metrics",
                                              "--no-watch", "--lua-budget", "100000" } }
        local mport = tonumber(s:wait_log("metrics on http://127%.0%.0%.1:(%d+)/metrics"))

        -- 3 echo clients x 4 messages of 5 bytes
        local echoes = {}
        for i = 1, 3 do
            local c = rawws.open(s.port, "/echo")
            for _ = 1, 4 do assert.are.equal("hello", c:echo("hello")) end
            echoes[i] = c
        end
        -- one publish reaching one subscriber
        local r1, r2 = rawws.open(s.port, "/room"), rawws.open(s.port, "/room")
        assert(r1:send(wsframe.text("x")))
        assert.are.equal("x", assert(r2:recv_frame()).payload)
        -- refused handshakes: 403 from the script, 404 for no route
        local c = rawws.connect(s.port)
        assert(c:send(rawws.request("/echo?deny=1")))
        assert.are.equal(403, (c:http()))
        c:close()
        c = rawws.connect(s.port)
        assert(c:send(rawws.request("/nowhere")))
        assert.are.equal(404, (c:http()))
        c:close()
        -- a handler error and a budget stop: both closed with 1011
        for _, msg in ipairs({ "boom", "spin" }) do
            c = rawws.open(s.port, "/echo")
            assert(c:send(wsframe.text(msg)))
            assert.are.equal(1011, (c:recv_close()))
            assert(c:send(wsframe.close(1011)))
            assert.is_true(c:eof(5))
            c:close()
        end
        -- a client closes with 1000
        assert(echoes[3]:send(wsframe.close(1000, "bye")))
        assert.are.equal(1000, (echoes[3]:recv_close()))
        assert.is_true(echoes[3]:eof(5))
        echoes[3]:close()
        -- SIGHUP with one script broken: 2 routes reload, 1 fails
        local f = assert(io.open(app .. "/room.lua", "w"))
        f:write("error(\"broken on purpose\")")
        f:close()
        s:signal(require("sbt_proc").SIGHUP)
        s:wait_log("loading [^\n]*room%.lua")
        server.wait_for(function()
            local st = cjson.decode(select(3, http_get(s.port, "/admin")))
            return st.reloads_ok + st.reloads_failed == 3
        end, 10, "the reload of every route")

        local m = scrape(("http://127.0.0.1:%d/metrics"):format(mport))
        assert.are.equal("text/plain; version=0.0.4; charset=utf-8", m.content_type)
        local v, t = m.samples, m.types
        local function is(want, key) assert.are.equal(want, v[key], key) end

        assert.are.equal("counter", t.switchboard_connections_accepted)
        assert.are.equal("gauge", t.switchboard_websocket_connections_open)
        assert.are.equal("histogram", t.switchboard_lua_handler_duration_seconds)
        is(5, 'switchboard_websocket_connections_total{route=/echo}')
        is(2, 'switchboard_websocket_connections_total{route=/room}')
        is(0, 'switchboard_websocket_connections_total{route=/admin}')
        is(2, 'switchboard_websocket_connections_open{route=/echo}')
        is(2, 'switchboard_websocket_connections_open{route=/room}')
        is(7, 'switchboard_handshakes_total{status=101}')
        is(1, 'switchboard_handshakes_total{status=403}')
        is(1, 'switchboard_handshakes_total{status=404}')
        is(12 + 1 + 2, 'switchboard_messages_received_total{}')
        is(12 + 1, 'switchboard_messages_sent_total{}')
        is(12 * 5 + 1 + 4 + 4, 'switchboard_message_received_bytes_total{}')
        is(12 * 5 + 1, 'switchboard_message_sent_bytes_total{}')
        is(2, 'switchboard_close_frames_sent_total{code=1011}')
        is(1, 'switchboard_close_frames_sent_total{code=1000}')
        is(2, 'switchboard_close_frames_received_total{code=1011}')
        is(1, 'switchboard_close_frames_received_total{code=1000}')
        is(3, 'switchboard_websocket_clean_closes_total{}')
        is(1, 'switchboard_publishes_total{}')
        is(1, 'switchboard_deliveries_total{}')
        is(0, 'switchboard_deliveries_dropped_total{}')
        is(0, 'switchboard_backpressure_events_total{}')
        is(2 + 1, 'switchboard_lua_errors_total{}') -- boom, spin, and the broken reload
        is(1, 'switchboard_lua_budget_stops_total{}')
        is(2, 'switchboard_reloads_total{outcome=ok}')
        is(1, 'switchboard_reloads_total{outcome=failed}')
        local count = v['switchboard_lua_handler_duration_seconds_count{}']
        assert.is_true(count >= 15, "every message handler call is timed")
        is(count, 'switchboard_lua_handler_duration_seconds_bucket{le=+Inf}')
        assert.is_true(v['switchboard_lua_handler_duration_seconds_sum{}'] > 0)
        assert.is_true(v['switchboard_lua_handler_duration_seconds_bucket{le=0.0001}']
            <= v['switchboard_lua_handler_duration_seconds_bucket{le=0.001}'])
        assert.is_true(v['switchboard_lua_memory_bytes{}'] > 10000)
        assert.is_true(v['process_resident_memory_bytes{}'] > 1e6)
        for key in pairs(v) do
            local route = key:match("route=([^,}]*)")
            assert.is_true(route == nil or route == "/echo" or route == "/room" or route == "/admin", key)
        end

        -- the same exposition on the main listener, and the stats view for scripts agrees
        local status, headers, body = http_get(s.port, "/metrics")
        assert.are.equal(200, status)
        assert.are.equal(m.content_type, headers["content-type"])
        assert.truthy(body:find('switchboard_handshakes_total{status="403"} 1\n', 1, true))
        local st = cjson.decode(select(3, http_get(s.port, "/admin")))
        assert.are.equal(15, st.msgs_in)
        assert.are.equal(7, st.handshakes["101"])
        assert.are.equal(1, st.handshakes["403"])
        assert.are.equal(5, st.routes["/echo"].total)
        assert.are.equal(2, st.routes["/echo"].open)
        assert.are.equal(2, st.close_sent["1011"])
        assert.are.equal(1, st.budget_stops)
        assert.is_true(st.resident_memory > 1e6)
        assert.are.equal(404, (http_get(mport, "/other")))

        for i = 1, 2 do echoes[i]:close() end
        r1:close()
        r2:close()
    end)
end)
