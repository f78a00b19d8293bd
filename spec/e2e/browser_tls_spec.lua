-- The chat page over https:// in headless Chromium (playwright-core, through
-- spec/support/tls_browser.mjs): two pages chat over wss:// with a self-signed
-- certificate, and the 101 each page got carried permessage-deflate
-- (Chromium offers it by default; read through the DevTools protocol).
local server = require "server"
local cjson = require "cjson"

local root = server.root
local NODE = "/usr/bin/node"
local CHROMIUM = os.getenv("SB_CHROMIUM") or "/usr/bin/chromium"

local function exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end

describe("the chat page over https in a browser", function()
    local s, dir
    after_each(function()
        if s then s:stop() s = nil end
        if dir then os.execute("rm -rf '" .. dir .. "'") end
    end)

    it("chats over wss:// with permessage-deflate negotiated", function()
        assert(exists(CHROMIUM), "chromium is not installed (./dev deps installs it)")
        assert(exists(root .. "/node_modules/playwright-core/package.json"),
            "playwright-core is not installed (npm install)")
        dir = server.tmpname("-selfsigned")
        s = server.start{ app = "scripts", args = { "--tls-self-signed", dir, "--listen-tls", "127.0.0.1:0" } }
        local port = tonumber(s:wait_log("listening on 127%.0%.0%.1:(%d+) %(wss://"))
        local p = io.popen(("env -u LD_PRELOAD SB_CHROMIUM=%s timeout 120 %s %s/spec/support/tls_browser.mjs "
            .. "https://localhost:%d 2>&1"):format(CHROMIUM, NODE, root, port))
        local out = p:read("a")
        p:close()
        local ok, res = pcall(cjson.decode, out:match("([^\n]*)\n?$"))
        assert(ok and type(res) == "table" and not res.error, "browser run failed:\n" .. out)
        assert.are.equal("https:", res.protocol)
        assert.matches("^over wss, compressed: la la", res.received)
        assert.is_true(#res.sockets >= 2, out)
        for _, sock in ipairs(res.sockets) do
            assert.matches("^wss://localhost:" .. port .. "/", sock.url)
            assert.are.equal(101, sock.status)
            assert.matches("^permessage%-deflate", sock.extensions)
        end
    end)
end)
