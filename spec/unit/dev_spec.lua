-- ./dev installs what each command needs: `build` and `chat` only the build's
-- packages, `test` (and `deps`) the test stack too. Run against stand-ins for
-- dpkg-query (nothing is installed), apt-get, sudo, cmake, node and npm that
-- only record how they were called.
local root = os.getenv("SB_ROOT") or "."

local function sh(cmd)
    local p = io.popen("{ " .. cmd .. "; } 2>&1")
    local out = p:read("a")
    local ok = p:close()
    return ok, out
end

local function read(path)
    local f = io.open(path, "rb")
    if not f then return "" end
    local s = f:read("a")
    f:close()
    return s
end

describe("./dev", function()
    local bin, calls

    setup(function()
        bin = os.tmpname()
        os.remove(bin)
        calls = bin .. "/calls"
        assert(os.execute(("mkdir -p '%s'"):format(bin)))
        local function stub(name, body)
            local f = assert(io.open(bin .. "/" .. name, "w"))
            f:write("#!/bin/sh\n", body or "", "\necho \"" .. name .. " $*\" >> '" .. calls .. "'\n")
            f:close()
            assert(os.execute(("chmod +x '%s/%s'"):format(bin, name)))
        end
        stub("dpkg-query", "echo \"" .. "dpkg-query $*\" >> '" .. calls .. "'; exit 1")
        stub("apt-get")
        stub("sudo", "\"$@\"; exit $?")
        stub("cmake")
        stub("npm")
        stub("node", "exit 1")
    end)

    teardown(function()
        os.execute(("rm -rf '%s'"):format(bin))
    end)

    local function run(args)
        os.remove(calls)
        local ok, out = sh(("PATH='%s':\"$PATH\" '%s/dev' %s"):format(bin, root, args))
        assert(ok, out)
        local installed = read(calls):match("apt%-get install [^\n]*") or ""
        return installed, read(calls)
    end

    it("build installs the build's packages only: no test stack", function()
        local installed, all = run("build")
        for _, p in ipairs{ "build-essential", "cmake", "libevent-dev", "liblua5.4-dev", "libssl-dev",
            "zlib1g-dev", "libhiredis-dev", "lua-cjson" } do
            assert.truthy(installed:find(" " .. p:gsub("%p", "%%%0") .. "%f[%s%z]"), p .. ": " .. installed)
        end
        for _, p in ipairs{ "chromium", "redis-server", "nodejs", "npm", "lua-busted", "python3",
            "clang" } do
            assert.falsy(installed:find(" " .. p:gsub("%p", "%%%0") .. "%f[%s%z]"), p .. ": " .. installed)
        end
        assert.falsy(all:find("\nnpm ", 1, true))
        assert.truthy(all:find("cmake --build build", 1, true))
    end)

    it("deps installs the test stack too", function()
        local installed = run("deps")
        for _, p in ipairs{ "libevent-dev", "chromium", "redis-server", "lua-busted", "python3" } do
            assert.truthy(installed:find(" " .. p:gsub("%p", "%%%0") .. "%f[%s%z]"), p .. ": " .. installed)
        end
    end)
end)
