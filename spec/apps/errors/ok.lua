-- /ok: echoes text, so a spec can see the server still serves.
return {
    message = function(ws, msg) ws:send("ok:" .. msg) end,
}
