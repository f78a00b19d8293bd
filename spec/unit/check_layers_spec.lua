-- .ci/check-layers on small made-up trees: which includes it lets through and
-- which it names, with file, line and the offending header.
local root = os.getenv("SB_ROOT") or "."
local CHECK = root .. "/.ci/check-layers"

local n = 0
local function tree(files)
    n = n + 1
    local dir = ("/tmp/sb-layers-%d-%d"):format(os.time(), n)
    assert(os.execute("mkdir -p " .. dir .. "/core"))
    for name, text in pairs(files) do
        local f = assert(io.open(dir .. "/core/" .. name, "w"))
        f:write(text)
        f:close()
    end
    return dir
end

local function run(dir)
    local p = io.popen(("env -u LD_PRELOAD %s %s 2>/dev/null"):format(CHECK, dir))
    local out = p:read("a")
    local _, _, code = p:close()
    os.execute("rm -rf " .. dir)
    return code, out
end

describe(".ci/check-layers", function()
    it("passes includes of lower layers, of its own header, and among the script*.c files", function()
        local code, out = run(tree{
            ["conn.c"] = '#include "conn.h"\n#include "frame.h"\n#include "tls.h"\n#include <stdio.h>\n',
            ["conn.h"] = '#include "deflate.h"\n',
            ["server.c"] = '#include "server.h"\n#include "script.h"\n#include "conn.h"\n',
            ["script_ws.c"] = '#include "script_int.h"\n#include "script.h"\n#include "pubsub.h"\n',
            ["script_int.h"] = '#include "script.h"\n',
            ["main.c"] = '#include "supervisor.h"\n#include "server.h"\n#include "log.h"\n',
        })
        assert.are.equal("", out)
        assert.are.equal(0, code)
    end)

    it("names an include of a higher layer, or of another module of its own layer", function()
        local code, out = run(tree{
            ["conn.c"] = '/* conn */\n#include "conn.h"\n#include "server.h"\n',
            ["script.c"] = '#include "metrics.h"\n',
            ["router.c"] = '#include "script.h"\n',
            ["reload.c"] = '#include "metrics.h"\n',
            ["tls.h"] = '#include <stddef.h>\n\n  #  include "log.h"\n',
            ["http.h"] = '#include <stddef.h>\n\n  #  include "handshake.h"\n',
        })
        assert.are.equal(1, code)
        local want = {
            'core/conn.c:3: #include "server.h": conn (layer 4) includes server, above it in layer 12',
            'core/script.c:1: #include "metrics.h": script (layer 9) includes metrics, above it in layer 10',
            'core/reload.c:1: #include "metrics.h": reload (layer 10) includes metrics, beside it',
            'core/http.h:3: #include "handshake.h": http (layer 0) includes handshake, above it in layer 1',
        }
        for _, w in ipairs(want) do assert.truthy(out:find(w, 1, true), out) end
        assert.falsy(out:find("log.h", 1, true), out)
        assert.falsy(out:find("router.c", 1, true), out)
        local lines = select(2, out:gsub("\n", ""))
        assert.are.equal(4, lines)
    end)

    it("names a file or a header that belongs to no declared layer", function()
        local code, out = run(tree{
            ["widget.c"] = '#include "log.h"\n',
            ["server.c"] = '#include "gadget.h"\n',
        })
        assert.are.equal(1, code)
        assert.truthy(out:find("core/widget.c: belongs to no declared layer", 1, true), out)
        assert.truthy(out:find('core/server.c:1: #include "gadget.h": not the header of a declared module',
            1, true), out)
    end)
end)
