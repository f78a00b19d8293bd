-- A module under lib/: found by require, never routed.
local helper = {}

function helper.greet(name)
    return "hello " .. name
end

return helper
