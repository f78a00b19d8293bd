-- The command line: help, version, bad usage (exit 2 with a clear message),
-- and listeners on IPv6 and on several addresses at once.
local server = require "server"
local rawws = require "rawws"
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
    for name in src:gmatch('{"([%w%-]+)",%s*[%w_]+_argument') do flags[#flags + 1] = name end
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
