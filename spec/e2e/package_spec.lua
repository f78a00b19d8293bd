-- The Debian package (cpack -G DEB from the build directory the tests run
-- from, not a fresh build): its Depends match the libraries the binary links,
-- its contents, and the binary extracted into a scratch root serves the
-- packaged sample app. The systemd unit passes `systemd-analyze verify` where
-- that tool exists.
local server = require "server"
local rawws = require "rawws"

local BUILD = os.getenv("SB_BUILD") or (server.root .. "/build")
local SANITIZED = os.getenv("SB_SANITIZE") == "ON"

-- Run cmd without the sanitizer build's preloaded runtime; returns ok, output.
local function sh(cmd)
    local p = io.popen("unset LD_PRELOAD; { " .. cmd .. "; } 2>&1")
    local out = p:read("a")
    local ok = p:close()
    return ok, out
end

local function have(tool)
    return (sh("command -v " .. tool .. " >/dev/null"))
end

local function exists(path)
    local f = io.open(path, "r")
    if f then f:close() end
    return f ~= nil
end

describe("the Debian package", function()
    if SANITIZED or not (have("cpack") and have("dpkg-deb")) then
        pending(SANITIZED and "packages are built from the normal build (this is the ASan build)"
            or "cpack or dpkg-deb is missing")
        return
    end

    local dir, deb, root, s

    setup(function()
        dir = server.tmpname(".pkg")
        root = dir .. "/root"
        local ok, out = sh(("cd '%s' && cpack -G DEB -B '%s'"):format(BUILD, dir))
        assert(ok, out)
        deb = out:match("package: (%S+%.deb) generated")
        assert(deb and exists(deb), out)
        ok, out = sh(("dpkg-deb -x '%s' '%s'"):format(deb, root))
        assert(ok, out)
    end)

    teardown(function()
        if s then s:stop() end
        if dir then os.execute("rm -rf '" .. dir .. "'") end
    end)

    it("depends on the Debian packages of every library the binary links, and lua-cjson", function()
        local _, depends = sh(("dpkg-deb -f '%s' Depends"):format(deb))
        local names = {}
        for name in depends:gmatch("([%w][%w.+-]*)%s*[(,\n]") do names[name] = true end
        assert.is_true(names["lua-cjson"], depends)
        local ok, libs = sh(("ldd '%s/usr/bin/switchboard'"):format(root))
        assert(ok, libs)
        local checked = 0
        for path in libs:gmatch("=> (/%S+)") do
            -- dpkg knows a file under the name its package ships (/lib or /usr/lib:
            -- usrmerge), and its real name or the link's
            local found, owner = sh(("real=$(readlink -f '%s'); dpkg -S \"$real\" || dpkg -S \"${real#/usr}\""
                .. " || dpkg -S '%s'"):format(path, path))
            if found then -- a library from a Debian package: that package is a dependency
                local pkg = owner:match("([%w][%w.+-]*):[%w]+: /")
                assert.is_true(names[pkg], pkg .. " (for " .. path .. ") is missing from Depends: "
                    .. depends)
                checked = checked + 1
            end
        end
        assert.is_true(checked >= 8, libs) -- libc, libm, ssl, crypto, z, event, lua, hiredis
    end)

    it("installs the binary, the Lua modules, the sample app, the unit and the man page", function()
        local ok, list = sh(("dpkg-deb -c '%s'"):format(deb))
        assert(ok, list)
        for _, path in ipairs{
            "./usr/bin/switchboard",
            "./usr/share/lua/5.4/switchboard/testing.lua",
            "./usr/share/switchboard/scripts/chat.lua",
            "./usr/share/switchboard/scripts/echo.lua",
            "./usr/share/switchboard/scripts/public/index.html",
            "./usr/lib/systemd/system/switchboard.service",
            "./usr/share/man/man1/switchboard.1.gz",
        } do
            assert.truthy(list:find(path, 1, true), path .. " missing from:\n" .. list)
        end
        assert.falsy(list:find("/spec/", 1, true))
        -- the man page lists the options the binary has
        local _, page = sh(("gzip -dc '%s/usr/share/man/man1/switchboard.1.gz'"):format(root))
        assert.truthy(page:find(".TH SWITCHBOARD 1", 1, true))
        assert.truthy(page:find("\\-\\-log\\-format", 1, true))
        assert.truthy(page:find("\\-\\-reload\\-debounce", 1, true))
    end)

    it("runs the extracted binary on the packaged sample app: a WebSocket handshake and an echo",
        function()
        local saved = server.bin
        server.bin = root .. "/usr/bin/switchboard"
        local ok, started = pcall(server.start, { app = root .. "/usr/share/switchboard/scripts" })
        server.bin = saved
        assert(ok, started)
        s = started
        local c = rawws.open(s.port, "/echo")
        assert.equal("from the package", c:echo("from the package"))
        c:close()
        local status, _, body = rawws.get(s.port, "/")
        assert.equal(200, status)
        assert.truthy(body:find("<html", 1, true))
        s:stop()
        s = nil
    end)

    it("ships a hardened systemd unit that systemd-analyze verify accepts", function()
        local unit = server.read_file(root .. "/usr/lib/systemd/system/switchboard.service")
        for _, line in ipairs{ "DynamicUser=yes", "ProtectSystem=strict", "ProtectHome=yes",
            "NoNewPrivileges=yes", "PrivateTmp=yes", "CapabilityBoundingSet=\n",
            "ExecStart=/usr/bin/switchboard " } do
            assert.truthy(unit:find(line, 1, true), line)
        end
        -- a capability only as a documented, commented-out override
        assert.falsy(unit:find("\nAmbientCapabilities", 1, true))
        assert.truthy(unit:find("#   AmbientCapabilities=CAP_NET_BIND_SERVICE", 1, true))
        if not have("systemd-analyze") then
            pending("systemd-analyze is missing: the unit is not verified")
            return
        end
        -- verify in the scratch root: ExecStart and the man page are the package's;
        -- ExecReload's kill is the system's
        assert(os.execute(("mkdir -p '%s/bin' && cp /bin/kill '%s/bin/'"):format(root, root)))
        local ok, out = sh(("MANPATH='%s/usr/share/man' systemd-analyze verify --root='%s' "
            .. "--recursive-errors=no /usr/lib/systemd/system/switchboard.service")
            :format(root, root))
        assert(ok, out)
        assert.falsy(out:find("switchboard.service", 1, true), out)
    end)
end)
