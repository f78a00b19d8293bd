std = "lua54"
max_line_length = 120
files["spec/**/*.lua"] = { std = "+busted" }
exclude_files = { "build*/**", "node_modules/**" }
-- LuaLS ---@meta declarations: function bodies are empty on purpose, and an
-- annotation (---@field ... description) cannot be wrapped onto a second line.
-- Their class tables are filled, never read (W241).
files["lua/switchboard/meta/*.lua"] = { unused_args = false, max_line_length = false, ignore = { "241" } }
-- bench/ref: OpenResty's side of the Redis benchmark runs under nginx's LuaJIT.
files["bench/ref/*.lua"] = { std = "ngx_lua" }
