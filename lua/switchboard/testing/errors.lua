-- switchboard.testing.errors: errors of the fake switchboard module raised where the
-- script called it, worded like lauxlib's, as the server's are. Each file of the
-- fake takes its pair with `local raise, argerror = require(...).here()`; a raise
-- skips the frames of every such file (one calling another included).
local errors = {}

local inside = { [debug.getinfo(1, "S").source] = true }

-- Raises `msg` at the first caller outside the fake module.
local function raise(msg)
    local level = 2
    while true do
        local info = debug.getinfo(level, "S")
        if not info or not inside[info.source] then break end
        level = level + 1
    end
    error(msg, level)
end

local function argerror(fname, n, msg)
    raise(("bad argument #%d to '%s' (%s)"):format(n, fname, msg))
end

-- The calling file's raise and argerror(fname, n, msg).
function errors.here()
    inside[debug.getinfo(2, "S").source] = true
    return raise, argerror
end

return errors
