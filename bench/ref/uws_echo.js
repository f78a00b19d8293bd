// Reference server: uWebSockets.js (npm @trufflesuite/uws-js-unofficial).
// /echo echoes every message; /fanout follows bench/fanout.lua's protocol
// (?role=sub subscribes to topic "t", ?role=pub messages are published to it).
// Usage: node uws_echo.js PORT
'use strict';
const uWS = require('@trufflesuite/uws-js-unofficial');

const port = Number(process.argv[2] || 9001);
const app = uWS.App();
const common = {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 << 20,
  maxBackpressure: 64 << 20,
  idleTimeout: 0, // held idle connections must not be dropped
};
app.ws('/echo', {
  ...common,
  message: (ws, msg, isBinary) => { ws.send(msg, isBinary); },
});
app.ws('/fanout', {
  ...common,
  upgrade: (res, req, context) => {
    const role = new URLSearchParams(req.getQuery() || '').get('role') || 'sub';
    res.upgrade({ role }, req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'), req.getHeader('sec-websocket-extensions'), context);
  },
  open: (ws) => { if (ws.getUserData().role === 'sub') ws.subscribe('t'); },
  message: (ws, msg, isBinary) => { app.publish('t', msg, isBinary); },
});
app.listen('127.0.0.1', port, (tok) => {
  if (!tok) { console.error(`uws: cannot listen on ${port}`); process.exit(1); }
  console.log(`uws listening on ${port}`);
});
