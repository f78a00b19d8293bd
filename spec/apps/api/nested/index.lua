-- nested/index.lua answers /nested.
local helper = require "helper"
return {
    open = function(ws) ws:send(helper.greet("nested index " .. ws.path)) end,
}
