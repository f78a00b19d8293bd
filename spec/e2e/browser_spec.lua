-- The chat page in headless Chromium (Debian `chromium`, driven by playwright-core
-- through spec/support/chat_browser.mjs) against the real server serving scripts/.
local server = require "server"
local proc = require "sbt_proc"
local cjson = require "cjson"

local root = server.root
local build = os.getenv("SB_BUILD") or (root .. "/build")
local NODE = "/usr/bin/node"
local CHROMIUM = os.getenv("SB_CHROMIUM") or "/usr/bin/chromium"

local function exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end

describe("the chat page in a browser", function()
    local s, node_pid, flag_dir, out_file

    after_each(function()
        if node_pid then
            proc.kill(node_pid, proc.SIGKILL)
            proc.wait(node_pid)
            node_pid = nil
        end
        if s then
            s:stop()
            s = nil
        end
        if flag_dir then os.execute("rm -rf '" .. flag_dir .. "'") end
        if out_file then os.remove(out_file) os.remove(out_file .. ".err") end
    end)

    it("lets two pages chat, renders an XSS attempt as text, and reconnects after a restart", function()
        assert(exists(CHROMIUM), "chromium is not installed (./dev deps installs it)")
        assert(exists(root .. "/node_modules/playwright-core/package.json"),
            "playwright-core is not installed (npm install)")
        s = server.start{ app = "scripts" }
        local port = s.port
        flag_dir = server.tmpname(".flags")
        assert(os.execute("mkdir -p '" .. flag_dir .. "'"))
        out_file = server.tmpname(".browser")
        local shot = build .. "/chat.png"
        os.remove(shot)
        node_pid = assert(proc.spawn({ NODE, root .. "/spec/support/chat_browser.mjs",
            ("http://127.0.0.1:%d"):format(port), shot, flag_dir },
            -- The sanitizer build preloads libasan into the spec runner: not into node.
            { stdout = out_file, stderr = out_file .. ".err", env = { SB_CHROMIUM = CHROMIUM, LD_PRELOAD = "" } }))

        local function output() return server.read_file(out_file) end
        local function node_done()
            local how, code = proc.wait(node_pid, true)
            if how then node_pid = nil return { how = how, code = code } end
        end

        -- Wait for the page checks, then restart the server on the same port.
        local early
        server.wait_for(function()
            if output():find("RESTART_NOW", 1, true) then return true end
            early = node_done()
            return early ~= nil
        end, 120, "the browser checks")
        if not early then
            s:stop()
            s = server.start{ app = "scripts", listen = "127.0.0.1:" .. port }
            local f = assert(io.open(flag_dir .. "/restarted", "w"))
            f:close()
        end

        local done = early or server.wait_for(node_done, 120, "the browser script to finish")
        local last = output():match("([^\n]+)\n?$") or ""
        local ok, report = pcall(cjson.decode, last)
        assert(ok and type(report) == "table",
            "no report from the browser script:\n" .. output() .. server.read_file(out_file .. ".err"))
        assert(report.ok, (report.error or "") .. "\n" .. server.read_file(out_file .. ".err"))
        assert.equal(0, done.code)
        for _, c in ipairs(report.checks) do assert.is_true(c.ok, c.name) end
        assert.truthy(#report.checks >= 10)
        assert.equal(0, report.dialogs)
        assert.is_true(exists(shot), "no screenshot at " .. shot)
    end)

    -- Runs a driver (spec/support/NAME.mjs BASE SHOT ...) to its end; returns its report.
    local function drive(name, base, shot, extra)
        out_file = server.tmpname(".browser")
        local argv = { NODE, root .. "/spec/support/" .. name .. ".mjs", base, shot }
        for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
        node_pid = assert(proc.spawn(argv, { stdout = out_file, stderr = out_file .. ".err",
            env = { SB_CHROMIUM = CHROMIUM, LD_PRELOAD = "" } }))
        local done = server.wait_for(function()
            local how, code = proc.wait(node_pid, true)
            if how then node_pid = nil return { how = how, code = code } end
        end, 180, "the browser script to finish")
        local output = server.read_file(out_file)
        local ok, report = pcall(cjson.decode, output:match("([^\n]+)\n?$") or "")
        assert(ok and type(report) == "table",
            "no report from the browser script:\n" .. output .. server.read_file(out_file .. ".err"))
        assert(report.ok, (report.error or "") .. "\n" .. server.read_file(out_file .. ".err"))
        assert.equal(0, done.code)
        for _, c in ipairs(report.checks) do assert.is_true(c.ok, c.name) end
        return report
    end

    it("keeps each tab's nick, keeps text over the rate limit, links safely, dates and marks new messages",
        function()
        assert(exists(CHROMIUM), "chromium is not installed (./dev deps installs it)")
        s = server.start{ app = "scripts" }
        local report = drive("chat_page", ("http://127.0.0.1:%d"):format(s.port), build .. "/chat-page.png")
        assert.truthy(#report.checks >= 20)
        assert.falsy(s:log():find("handler failed", 1, true))
    end)

    it("keeps text the server cannot store while its Redis is away, and sends it when Redis is back",
        function()
        assert(exists(CHROMIUM), "chromium is not installed (./dev deps installs it)")
        local redis_srv = require "redis"
        local redis = redis_srv.start()
        local ok, err = pcall(function()
            s = server.start{ app = "scripts", args = { "--redis", "redis://127.0.0.1:" .. redis.port } }
            s:wait_log("redis: connected")
            -- the script kills this redis-server, then starts (and ends) its own on that port
            drive("chat_redis_away", ("http://127.0.0.1:%d"):format(s.port), build .. "/chat-redis-away.png",
                { tostring(redis.pid), tostring(redis.port), s.logfile })
            assert.truthy(s:log():find("say in #ops not stored: redis: not connected", 1, true))
            assert.falsy(s:log():find("handler failed", 1, true))
        end)
        redis_srv.stop(redis) -- reaps the killed one
        assert(ok, err)
    end)

    it("keeps three pages on one process identical when one page's network is cut and restored", function()
        assert(exists(CHROMIUM), "chromium is not installed (./dev deps installs it)")
        s = server.start{ app = "scripts" }
        local base = ("http://127.0.0.1:%d"):format(s.port)
        drive("chat_cluster", base, build .. "/chat-cluster-1.png", { base })
        assert.falsy(s:log():find("handler failed", 1, true))
    end)

    it("keeps three pages on two processes with --redis identical when one page's network is cut", function()
        assert(exists(CHROMIUM), "chromium is not installed (./dev deps installs it)")
        local redis_srv = require "redis"
        local redis = redis_srv.start()
        local ok, err = pcall(function()
            local url = "redis://127.0.0.1:" .. redis.port
            s = server.start{ app = "scripts", args = { "--redis", url } }
            local b = server.start{ app = "scripts", args = { "--redis", url } }
            local ok2, err2 = pcall(function()
                s:wait_log("redis: connected")
                b:wait_log("redis: connected")
                drive("chat_cluster", ("http://127.0.0.1:%d"):format(s.port), build .. "/chat-cluster-2.png",
                    { ("http://127.0.0.1:%d"):format(b.port) })
            end)
            local log = b:stop()
            assert(ok2, err2)
            assert.falsy(log:find("handler failed", 1, true))
        end)
        redis_srv.stop(redis)
        assert(ok, err)
    end)
end)
