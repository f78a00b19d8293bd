-- Loaded by busted (--helper) before any spec: module paths for the shipped
-- Lua modules, the spec helpers and the test-only C modules of this build.
local root = os.getenv("SB_ROOT") or "."
local build = os.getenv("SB_BUILD") or (root .. "/build")
package.path = table.concat({
    root .. "/lua/?.lua", root .. "/lua/?/init.lua", root .. "/spec/support/?.lua", package.path,
}, ";")
package.cpath = build .. "/?.so;" .. package.cpath
