-- Nick claims across processes (with --redis): one key per room and nick,
-- "chat:nick:<room>:<nick in lower case>" = "<node>:<ws id>" of the member who has it,
-- taken by one server-side script, so that two joins (or renames) at the same moment on
-- two processes cannot both get a nick: presence alone is read, then written, and both
-- reads can come before either write. A claim expires TTL seconds after its owner's
-- process last refreshed it (a process that dies frees its nicks, as its presence ages
-- out). Without --redis, or while Redis is away, every claim succeeds: the process's own
-- checks are all there is, as before.
local sb = require "switchboard"

local claims = {}

claims.TTL = 15 -- seconds; refresh well within it

-- KEYS: the claims; ARGV: their owners, then the ttl in ms. For each key: 1 when it is
-- (now) that owner's, 0 when someone else has it.
local CLAIM = [[
local out, ttl = {}, ARGV[#ARGV]
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v == false then
    redis.call('SET', k, ARGV[i], 'PX', ttl)
    out[i] = 1
  elseif v == ARGV[i] then
    redis.call('PEXPIRE', k, ttl)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out]]

local RELEASE = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0]]

local function key(room, nick) return "chat:nick:" .. room .. ":" .. nick:lower() end

-- Who owns a claim: this process's connection `id`.
function claims.owner(id) return sb.node .. ":" .. id end

-- Runs the claim script for `list` ({ { room, nick, owner } …}); returns the list of
-- results (1/0), or nil when Redis cannot be asked.
local function run(list)
    if not sb.redis.url or #list == 0 then return nil end
    local red = sb.redis.connect(nil, { timeout = 2 })
    if not red then return nil end
    local args = { "EVAL", CLAIM, #list }
    for _, c in ipairs(list) do args[#args + 1] = key(c[1], c[2]) end
    for _, c in ipairs(list) do args[#args + 1] = c[3] end
    args[#args + 1] = math.floor(claims.TTL * 1000)
    local r = red:call(table.unpack(args))
    red:close()
    return type(r) == "table" and r or nil
end

-- Take `nick` in `room` for `owner`. Returns false when someone else has it; true when
-- it is owner's now, or when there is no Redis to ask (waits with --redis).
function claims.take(room, nick, owner)
    local r = run({ { room, nick, owner } })
    return not r or r[1] == 1
end

-- Give it back, if owner still has it (waits with --redis).
function claims.release(room, nick, owner)
    if not sb.redis.url then return end
    local red = sb.redis.connect(nil, { timeout = 2 })
    if not red then return end
    red:call("EVAL", RELEASE, 1, key(room, nick), owner)
    red:close()
end

-- Keep the claims of `list` ({ { room, nick, owner } …}) alive, and take them again
-- when Redis lost them (a restart). Returns the entries someone else holds now.
function claims.refresh(list)
    local lost = {}
    for i = 1, #list, 256 do
        local part = { table.unpack(list, i, math.min(#list, i + 255)) }
        local r = run(part)
        for j, c in ipairs(part) do
            if r and r[j] == 0 then lost[#lost + 1] = c end
        end
    end
    return lost
end

return claims
