-- A token bucket kept in a plain table (so it can live in ws.data and survive a
-- reload): `burst` tokens, refilled at `rate` per second.
local bucket = {}

function bucket.new(burst, now)
    return { tokens = burst, at = now }
end

-- Takes one token at time `now`. Returns true, or false and the seconds until the
-- next token.
function bucket.take(b, burst, rate, now)
    b.tokens = math.min(burst, b.tokens + (now - b.at) * rate)
    b.at = now
    if b.tokens >= 1 then
        b.tokens = b.tokens - 1
        return true
    end
    return false, (1 - b.tokens) / rate
end

return bucket
