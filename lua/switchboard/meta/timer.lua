---@meta
-- Editor types (LuaLS) for the timers `sb.after` and `sb.every` return. Declarations only.

---A pending `sb.after` or `sb.every`.
---@class switchboard.timer
local timer = {}

---Stops it: it does not run again. An `every` may cancel itself from its function.
---@return boolean pending `true` if it was still pending.
function timer:cancel() end
