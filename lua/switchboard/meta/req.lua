---@meta
-- Editor types (LuaLS) for what a route script returns and the request tables its
-- `upgrade` and `request` handlers receive. Declarations only.

---A plain HTTP request (in `request`) or the WebSocket upgrade request (in `upgrade`).
---@class switchboard.req
---@field method string "GET", "POST", ...
---@field path string The percent-decoded path, without the query.
---@field query table<string, string|string[]> The decoded query; a repeated key gives a list.
---@field headers table<string, string> Lower-case names; a repeated header is joined with ", ".
---@field remote string The peer's "addr:port".
---@field origin? string The Origin header, when the client sent one (browsers always do).
---@field protocols string[] The client's Sec-WebSocket-Protocol offers, in order.
---@field body? string `request` only: the body ("" when none).

---What `upgrade` may return after `true`.
---@class switchboard.accept
---@field protocol? string One of `req.protocols`.
---@field headers? table<string, string> Extra headers of the 101 answer.

---What `request` returns.
---@class switchboard.response
---@field status? integer Default 200.
---@field headers? table<string, string>
---@field body? string

---The table a route script returns; every handler is optional. Annotate it to get
---the handlers' parameter types: `---@type switchboard.route` above `local route = {}`.
---@class switchboard.route
---@field upgrade? fun(req: switchboard.req): boolean, (integer|switchboard.accept)?, string? Before the 101: `true [, accept]` or `false, status [, body]`.
---@field open? fun(ws: switchboard.ws) After the 101.
---@field message? fun(ws: switchboard.ws, msg: string, binary: boolean) Once per complete message.
---@field close? fun(ws: switchboard.ws, code: integer, reason: string) Exactly once per opened connection.
---@field drain? fun(ws: switchboard.ws) The queue fell below --out-low.
---@field request? fun(req: switchboard.req): switchboard.response Plain HTTP on the route's path.
---@field reload? fun(old: switchboard.route) On a hot reload, called on the new version with the old table.
---@field compression? boolean `false` turns permessage-deflate off for this route.
