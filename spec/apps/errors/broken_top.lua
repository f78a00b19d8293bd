-- Raises while its top level runs (line 3).
local t = {}
t.x.y = 1
return t
