-- ws://host/big for spec/e2e/large_messages_spec.lua:
--   any message       echoed with its type (large ones: written at once, conn.c send_direct)
--   "mix N SIZE"      N times: a SIZE-byte binary frame of one letter, then the text "k<i>"
--   binary "astext:"… sends the rest back as text; answers "error: …" when send refuses
--   "append"          sends the message with one more byte as text (a string not checked before)
local big = {}

function big.message(ws, msg, binary)
    local n, size = msg:match("^mix (%d+) (%d+)$")
    if n and not binary then
        for i = 1, tonumber(n) do
            local letter = string.char(65 + (i - 1) % 26)
            ws:send(letter:rep(tonumber(size)), true)
            ws:send("k" .. i)
        end
        return
    end
    if binary and msg:sub(1, 7) == "astext:" then
        local ok, err = pcall(ws.send, ws, msg:sub(8))
        if not ok then ws:send("error: " .. tostring(err)) end
        return
    end
    if not binary and msg:sub(1, 6) == "append" then
        local ok, err = pcall(ws.send, ws, msg .. "\xff")
        ws:send(ok and "sent" or ("error: " .. tostring(err)))
        return
    end
    ws:send(msg, binary)
end

return big
