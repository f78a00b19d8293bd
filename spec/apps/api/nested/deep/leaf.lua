-- nested/deep/leaf.lua answers /nested/deep/leaf.
return {
    open = function(ws) ws:send("leaf " .. ws.path) end,
}
