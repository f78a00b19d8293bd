// Drives the chat page over https:// in headless Chromium for
// spec/e2e/browser_tls_spec.lua: two pages join a room and chat over wss://
// (self-signed certificate: ignoreHTTPSErrors), and the 101 answer each page
// got is read from the DevTools protocol (Network.webSocketHandshakeResponseReceived)
// so the spec can check that permessage-deflate was negotiated.
//
//   node spec/support/tls_browser.mjs https://localhost:PORT
//
// Prints one line of JSON; exits non-zero on the first failed step.
import { chromium } from 'playwright-core';

const [base] = process.argv.slice(2);
const STEP = 15000;
const report = { sockets: [], console: [] };

const browser = await chromium.launch({
  executablePath: process.env.SB_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage'],
  timeout: 60000,
});

async function open(nick) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await ctx.newPage();
  page.setDefaultTimeout(STEP);
  page.on('pageerror', (e) => report.console.push(`${nick}: ${e.message}`));
  const cdp = await ctx.newCDPSession(page);
  const urls = new Map();
  cdp.on('Network.webSocketCreated', (e) => urls.set(e.requestId, e.url));
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
    const h = {};
    for (const [k, v] of Object.entries(e.response.headers)) h[k.toLowerCase()] = v;
    report.sockets.push({ page: nick, url: urls.get(e.requestId), status: e.response.status,
      extensions: h['sec-websocket-extensions'] || null });
  });
  await cdp.send('Network.enable');
  await page.goto(`${base}/`);
  await page.locator('#status[data-state="online"]').waitFor();
  await page.fill('#nick', nick);
  await page.fill('#room', 'tls');
  await page.click('#join-btn');
  await page.locator('#app[data-view="chat"]').waitFor();
  return page;
}

try {
  const ada = await open('ada');
  const bob = await open('bob');
  await ada.locator('#messages .notice', { hasText: 'bob joined' }).waitFor();
  const text = 'over wss, compressed: ' + 'la '.repeat(100);
  await ada.fill('#message', text);
  await ada.press('#message', 'Enter');
  await bob.locator('#messages .msg .text').filter({ hasText: 'over wss, compressed' }).first().waitFor();
  report.received = await bob.locator('#messages .msg .text')
    .filter({ hasText: 'over wss, compressed' }).first().textContent();
  report.protocol = await ada.evaluate(() => location.protocol);
  console.log(JSON.stringify(report));
  await browser.close();
} catch (e) {
  console.log(JSON.stringify({ ...report, error: String(e) }));
  await browser.close();
  process.exit(1);
}
