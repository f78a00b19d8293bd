// Reference server: uWebSockets.js (npm @trufflesuite/uws-js-unofficial).
// /echo echoes every message; /fanout follows bench/fanout.lua's protocol
// (?role=sub subscribes to topic "t", ?role=pub messages are published to it).
// Usage: node uws_echo.js PORT [--tls CERT KEY] [--compression shared|dedicated]
//   --tls: SSLApp (https/wss) with this PEM certificate and key
//   --compression: permessage-deflate with uWS's SHARED_COMPRESSOR or
//     DEDICATED_COMPRESSOR (256 KB: windowBits 15, memLevel 8, as zlib's and
//     switchboard's defaults); every answer and publish is sent compressed
'use strict';
const uWS = require('@trufflesuite/uws-js-unofficial');

const args = process.argv.slice(2);
const port = Number(args[0] || 9001);
let tls = null;
let compression = uWS.DISABLED;
for (let i = 1; i < args.length; i++) {
  if (args[i] === '--tls') { tls = { cert_file_name: args[i + 1], key_file_name: args[i + 2] }; i += 2; }
  else if (args[i] === '--compression') {
    const c = args[++i];
    if (c === 'shared') compression = uWS.SHARED_COMPRESSOR;
    else if (c === 'dedicated') compression = uWS.DEDICATED_COMPRESSOR;
    else { console.error(`uws: unknown compression ${c}`); process.exit(2); }
  } else { console.error(`uws: unknown argument ${args[i]}`); process.exit(2); }
}
const compress = compression !== uWS.DISABLED;
const app = tls ? uWS.SSLApp(tls) : uWS.App();
const common = {
  compression,
  maxPayloadLength: 64 << 20,
  maxBackpressure: 64 << 20,
  idleTimeout: 0, // held idle connections must not be dropped
};
app.ws('/echo', {
  ...common,
  message: (ws, msg, isBinary) => { ws.send(msg, isBinary, compress); },
});
app.ws('/fanout', {
  ...common,
  upgrade: (res, req, context) => {
    const role = new URLSearchParams(req.getQuery() || '').get('role') || 'sub';
    res.upgrade({ role }, req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'), req.getHeader('sec-websocket-extensions'), context);
  },
  open: (ws) => { if (ws.getUserData().role === 'sub') ws.subscribe('t'); },
  message: (ws, msg, isBinary) => { app.publish('t', msg, isBinary, compress); },
});
app.listen('127.0.0.1', port, (tok) => {
  if (!tok) { console.error(`uws: cannot listen on ${port}`); process.exit(1); }
  console.log(`uws listening on ${port}`);
});
