-- The command line: help, version, bad usage (exit 2 with a clear message),
-- and listeners on IPv6 and on several addresses at once.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local cjson = require "cjson"
local socket = require "socket"

-- Run the binary to its exit; returns the exit code, stdout, stderr.
local function run(args)
    local s = server.start{ expect_exit = true, listen = "127.0.0.1:0", raw_args = true, args = args }
    local how, code = s:wait_exit(10)
    local out = server.read_file(s.logfile .. ".out")
    local err = s:stop()
    assert.are.equal("exited", how)
    return code, out, err
end

-- The long options main.c declares, read from its option table.
local function declared_flags()
    local src = server.read_file(server.root .. "/core/main.c")
    local flags = {}
    for name in src:gmatch('{"([%w%-]+)",%s*[^,{}]+,%s*set_[%w_]+') do flags[#flags + 1] = name end
    assert(#flags > 10, "could not read the option table from core/main.c")
    return flags
end

local function has_ipv6_loopback()
    local s = socket.tcp6 and socket.tcp6()
    if not s then return false end
    local ok = s:bind("::1", 0)
    s:close()
    return ok ~= nil
end

describe("command line", function()
    it("prints help listing every flag and exits 0", function()
        local code, out = run{ "--help" }
        assert.are.equal(0, code)
        assert.truthy(out:find("usage: switchboard [options] APP_DIR", 1, true))
        for _, flag in ipairs(declared_flags()) do
            assert.truthy(out:find("--" .. flag, 1, true), "--help does not list --" .. flag)
        end
        local code2, out2 = run{ "-h" }
        assert.are.same({ 0, out }, { code2, out2 })
    end)

    it("prints the version and exits 0", function()
        local code, out = run{ "--version" }
        assert.are.equal(0, code)
        assert.truthy(out:match("^switchboard %d+%.%d+%.%d+[^\n]*\n$"), out)
    end)

    local usage_errors = {
        { { "--frobnicate", "scripts" }, "unknown option '--frobnicate'" },
        { { "scripts", "--listen" }, "option '--listen' needs a value" },
        { {}, "missing APP_DIR" },
        { { "scripts", "scripts" }, "more than one APP_DIR" },
        { { "--max-message", "lots", "scripts" }, "not a size or count: 'lots'" },
        { { "--max-message", "0", "scripts" }, "--max-message must be 1..2g: 0" },
        { { "--max-header-bytes", "10", "scripts" }, "--max-header-bytes must be 64..1m: 10" },
        { { "--deflate-level", "10", "scripts" }, "--deflate-level must be 0..9: 10" },
        { { "--max-headers", "-1", "scripts" }, "not a size or count: '-1'" },
        { { "--idle-timeout", "soon", "scripts" }, "not a number of seconds: 'soon'" },
        { { "--ping-interval", "-1", "scripts" }, "not a number of seconds: '-1'" },
        { { "--slow-policy", "panic", "scripts" }, "--slow-policy is drop or close, not 'panic'" },
        { { "--log-level", "loud", "scripts" }, "--log-level is debug, info, warn or error, not 'loud'" },
        { { "--out-low", "2m", "--out-high", "1m", "scripts" }, "--out-low must not exceed --out-high" },
    }
    for _, case in ipairs(usage_errors) do
        it("exits 2 on " .. table.concat(case[1], " "), function()
            local args = {}
            for i, a in ipairs(case[1]) do
                args[i] = a == "scripts" and (server.root .. "/scripts") or a
            end
            local code, _, err = run(args)
            assert.are.equal(2, code)
            assert.truthy(err:find("switchboard: " .. case[2], 1, true), err)
            assert.truthy(err:find("Try 'switchboard --help'.", 1, true), err)
        end)
    end

    -- Every size, count and time flag, at each bound N and one past it. A value the
    -- flag takes makes the run fail later, on the missing APP_DIR; one it refuses
    -- names the flag and its range.
    local nodir = "/nonexistent/switchboard-app"
    local K, M, G = 1024, 1024 * 1024, 1024 * 1024 * 1024
    local bounds = {
        -- flag, min, max, the range as the error says it, other flags the value needs
        { "--max-header-bytes", 64, M, "64..1m" },
        { "--max-headers", 1, 1000, "1..1000" },
        { "--max-body", 0, G, "0..1g" },
        { "--max-message", 1, 2 * G, "1..2g" },
        { "--out-high", 1, 4 * G, "1..4g", { "--out-low", "0" } },
        { "--out-low", 0, 4 * G, "0..4g", { "--out-high", "4g" } },
        { "--out-max", 1, 4 * G, "1..4g" },
        { "--max-connections", 0, 10000000, "0..10000000" },
        { "--lua-budget", 1000, 1000000000000, "1000..1000000000000" },
        { "--lua-memory", K, 64 * G, "1k..64g" },
        { "--deflate-window-bits", 8, 15, "8..15" },
        { "--deflate-mem-level", 1, 9, "1..9" },
        { "--deflate-level", 0, 9, "0..9" },
        { "--deflate-min-size", 0, 2 * G, "0..2g" },
        { "--workers", 1, 256, "1..256" },
        { "--redis-out-max", 64 * K, G, "64k..1g" },
        { "--history-max-bytes", 0, 64 * G, "0..64g" },
        { "--max-outbound", 1, 1000000, "1..1000000" },
        { "--max-response-body", 0, G, "0..1g" },
    }
    local seconds = { "--slow-grace", "--handshake-timeout", "--idle-timeout", "--ping-interval",
                      "--pong-timeout", "--close-timeout", "--drain-timeout" }
    for _, flag in ipairs(seconds) do
        bounds[#bounds + 1] = { flag, 0, 1000000, "0..1000000 seconds" }
    end

    local function try_value(b, v)
        local args = { b[1], tostring(math.tointeger(v) or v) }
        for _, a in ipairs(b[5] or {}) do args[#args + 1] = a end
        args[#args + 1] = nodir
        local code, _, err = run(args)
        assert.are.equal(2, code, err)
        return err
    end
    local function takes(b, v)
        local err = try_value(b, v)
        assert.truthy(err:find("APP_DIR '" .. nodir .. "' is not a readable directory", 1, true),
            b[1] .. " " .. v .. " should be taken:\n" .. err)
    end
    local function refuses(b, v)
        local err = try_value(b, v)
        local want = ("switchboard: %s must be %s: %s"):format(b[1], b[4], math.tointeger(v) or v)
        assert.truthy(err:find(want, 1, true), want .. "\n" .. err)
    end

    for _, b in ipairs(bounds) do
        it(("bounds %s to %s, taking both ends"):format(b[1], b[4]), function()
            takes(b, b[2])
            takes(b, b[3])
            refuses(b, b[3] + 1)
            if b[2] > 0 then refuses(b, b[2] - 1) end
        end)
    end

    it("reads sizes as whole numbers and refuses what does not fit 64 bits", function()
        local cases = {
            { "--max-body", "18446744073709551616", "switchboard: --max-body must be 0..1g: 18446744073709551616" },
            { "--max-body", "99999999999999999999999", "switchboard: --max-body must be 0..1g: 9999" },
            { "--lua-memory", "16777216g", "switchboard: --lua-memory must be 1k..64g: 16777216g" },
            { "--lua-memory", "17179869184g", "switchboard: --lua-memory must be 1k..64g: 17179869184g" },
            { "--max-message", "1e30", "not a size or count: '1e30'" },
            { "--max-message", "1.5m", "not a size or count: '1.5m'" },
            { "--max-headers", "+5", "not a size or count: '+5'" },
            { "--max-body", "0x10", "not a size or count: '0x10'" },
            { "--max-body", "", "not a size or count: ''" },
            { "--idle-timeout", "inf", "not a number of seconds: 'inf'" },
            { "--idle-timeout", "nan", "not a number of seconds: 'nan'" },
        }
        for _, c in ipairs(cases) do
            local code, _, err = run{ c[1], c[2], nodir }
            assert.are.equal(2, code, err)
            assert.truthy(err:find(c[3], 1, true), c[3] .. "\n" .. err)
        end
        -- the suffixes are still powers of 1024, upper or lower case, with an optional b
        for _, v in ipairs({ "1g", "1G", "1gb", "1024m", "1048576K", "1073741824" }) do
            local code, _, err = run{ "--max-body", v, nodir }
            assert.are.equal(2, code, err)
            assert.truthy(err:find("is not a readable directory", 1, true), v .. ": " .. err)
        end
    end)

    it("serves a request with --max-headers 1000 fields and gives a script all of them", function()
        local s = server.start{ app = "spec/apps/api", args = { "--max-headers", "1000",
                                                                "--max-header-bytes", "64k" } }
        local ok, err = pcall(function()
            local extra = {}
            for i = 1, 1000 - 5 do extra[#extra + 1] = ("X-H%d: v%d"):format(i, i) end
            local c = rawws.connect(s.port)
            c:send(rawws.request("/probe", extra)) -- 5 fields of its own
            assert.are.equal(101, (c:http_head()))
            c:send(wsframe.text(cjson.encode({ op = "fields" })))
            local got = cjson.decode(assert(c:recv_frame()).payload)
            assert.are.equal("v995", got.headers["x-h995"])
            assert.are.equal("127.0.0.1", got.headers.host)
            c:close()
            -- one more field is refused before any script sees it
            extra[#extra + 1] = "X-One-Too-Many: 1"
            local c2 = rawws.connect(s.port)
            c2:send(rawws.request("/probe", extra))
            assert.are.equal(431, (c2:http_head()))
            c2:close()
        end)
        s:stop()
        assert(ok, err)
    end)

    it("exits 2 when APP_DIR is missing, a file, or unreadable", function()
        local missing = server.tmpname(".nodir")
        local code, _, err = run{ missing }
        assert.are.equal(2, code)
        assert.truthy(err:find("APP_DIR '" .. missing .. "' is not a readable directory: No such file or directory",
            1, true), err)
        local file = server.tmpname(".file")
        assert(io.open(file, "w")):close()
        code, _, err = run{ file }
        os.remove(file)
        assert.are.equal(2, code)
        assert.truthy(err:find("APP_DIR '" .. file .. "' is not a readable directory", 1, true), err)
        local uid = io.popen("id -u"):read("l")
        if uid ~= "0" then -- root reads any directory
            local dir = server.tmpname(".dir")
            assert(os.execute("mkdir -m 000 " .. dir))
            code, _, err = run{ dir }
            os.execute("rmdir " .. dir)
            assert.are.equal(2, code)
            assert.truthy(err:find("is not a readable directory", 1, true), err)
        end
    end)

    it("listens on IPv6 [::1]", function()
        if not has_ipv6_loopback() then
            pending("no IPv6 loopback on this machine")
            return
        end
        local s = server.start{ app = "spec/apps/core", listen = "[::1]:0" }
        local ok, err = pcall(function()
            assert.truthy(s:log():find("listening on [::1]:" .. s.port, 1, true))
            local c = rawws.connect(s.port, "::1")
            c:send(rawws.request("/echo"))
            assert.are.equal(101, (c:http_head()))
            assert.are.equal("over v6", c:echo("over v6"))
            c:close()
        end)
        s:stop()
        assert(ok, err)
    end)

    it("listens on two addresses at once", function()
        local s = server.start{ app = "spec/apps/core", listen = "127.0.0.1:0",
                                args = { "--listen", "127.0.0.2:0" } }
        local ok, err = pcall(function()
            local p1 = tonumber(s:log():match("listening on 127%.0%.0%.1:(%d+)"))
            local p2 = tonumber(server.wait_for(function()
                return s:log():match("listening on 127%.0%.0%.2:(%d+)")
            end, 5, "the second listener"))
            for _, addr in ipairs({ { "127.0.0.1", p1 }, { "127.0.0.2", p2 } }) do
                local c = rawws.connect(addr[2], addr[1])
                c:send(rawws.request("/echo"))
                assert.are.equal(101, (c:http_head()))
                assert.are.equal("via " .. addr[1], c:echo("via " .. addr[1]))
                c:close()
            end
        end)
        s:stop()
        assert(ok, err)
    end)
end)
