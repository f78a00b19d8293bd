-- /echo driven by an independent client: Node's `ws` (npm).
local server = require "server"
local cjson = require "cjson"

describe("the echo route with Node's ws client", function()
    local s
    setup(function() s = server.start{} end)
    teardown(function() s:stop() end)

    local result
    setup(function()
        local errf = server.tmpname(".err")
        local p = io.popen(("cd %s && env -u LD_PRELOAD timeout 60 node spec/support/node_ws_client.mjs %d 2>%s")
            :format(server.root, s.port, errf))
        local raw = p:read("a") .. server.read_file(errf)
        p:close()
        os.remove(errf)
        local ok, decoded = pcall(cjson.decode, raw)
        assert(ok and type(decoded) == "table", "node client output: " .. raw)
        assert(not decoded.error, "node client failed: " .. raw)
        result = decoded
    end)

    it("echoes text and binary of 0 B to 1 MiB byte-exact", function()
        assert.are.equal(7, #result.echoes)
        for _, e in ipairs(result.echoes) do
            assert.is_true(e.text_ok, "text of " .. e.n .. " bytes")
            assert.is_true(e.bin_ok, "binary of " .. e.n .. " bytes")
        end
    end)

    it("reassembles a message sent in three fragments", function()
        assert.are.equal("frag-ment-ed", result.fragmented)
    end)

    it("answers a ping with its payload", function()
        assert.are.equal("are you there", result.pong)
    end)

    it("echoes the client's close code", function()
        assert.are.equal(4001, result.close.code)
    end)
end)
