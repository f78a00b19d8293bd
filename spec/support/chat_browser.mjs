// Drives the chat page in headless Chromium for spec/e2e/browser_spec.lua.
//
//   node spec/support/chat_browser.mjs BASE_URL SCREENSHOT.png FLAG_DIR
//
// Two browsers (each with a fresh profile) join the same room; a message typed in one
// appears in the other; an XSS attempt renders as text; the typing indicator shows.
// Then it prints RESTART_NOW, waits until FLAG_DIR/restarted exists (the spec restarted
// the server on the same port) and checks both pages reconnect, rejoin, say the room's
// history was reset (the server kept it in memory) and chat again.
// Prints one line of JSON with what it saw; exits non-zero on the first failed check.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [base, shot, flagDir] = process.argv.slice(2);
const STEP = 15000; // ms deadline for each awaited condition

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage'];

const profiles = [];
const contexts = [];
const report = { checks: [], console: [], dialogs: 0 };

function check(name, ok, detail) {
  report.checks.push({ name, ok: !!ok, detail });
  if (!ok) throw new Error(`check failed: ${name}${detail ? ` (${detail})` : ''}`);
}

async function open(name, viewport) {
  const dir = mkdtempSync(join(tmpdir(), `sb-chromium-${name}-`));
  profiles.push(dir);
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: process.env.SB_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ARGS,
    viewport,
    deviceScaleFactor: 1,
    timeout: 60000,
  });
  contexts.push(ctx);
  const page = ctx.pages()[0] || await ctx.newPage();
  page.setDefaultTimeout(STEP);
  page.on('console', (m) => {
    // A refused reconnect attempt while the server restarts is expected noise.
    if (m.type() === 'error' && !/WebSocket connection|ERR_CONNECTION_REFUSED/.test(m.text())) {
      report.console.push(`${name}: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => report.console.push(`${name}: pageerror ${e.message}`));
  page.on('dialog', async (d) => { report.dialogs += 1; await d.dismiss(); });
  await page.goto(`${base}/`);
  await page.locator('#status[data-state="online"]').waitFor();
  return page;
}

async function login(page, nick, room) {
  await page.fill('#nick', nick);
  await page.fill('#room', room);
  await page.click('#join-btn');
  await page.locator('#app[data-view="chat"]').waitFor();
  await page.locator('#messages .notice', { hasText: `You joined #${room}` }).waitFor();
}

async function say(page, text) {
  await page.fill('#message', text);
  await page.press('#message', 'Enter');
}

function messageText(page, text) {
  return page.locator('#messages .msg .text').filter({ hasText: text }).first();
}

async function main() {
  const ada = await open('ada', { width: 1180, height: 760 });
  check('page shows the connection state', await ada.locator('#status-text').textContent() === 'Connected');
  await login(ada, 'ada', 'lobby');

  const grace = await open('grace', { width: 390, height: 780 });
  await grace.fill('#nick', 'no spaces allowed');
  await grace.click('#join-btn');
  await grace.locator('#login-error', { hasText: 'letters, digits' }).waitFor();
  check('an invalid nickname gets a clear error', true);
  await grace.screenshot({ path: shot.replace(/\.png$/, '-login.png') });
  await login(grace, 'grace', 'lobby');

  await ada.locator('#messages .notice', { hasText: 'grace joined' }).waitFor();
  await ada.locator('#member-list .member-nick', { hasText: 'grace' }).waitFor();
  check('ada sees grace join and in the member list', true);

  await say(ada, 'Hi Grace! Welcome to switchboard — café au lait?');
  await messageText(grace, 'Hi Grace! Welcome to switchboard — café au lait?').waitFor();
  check('a message typed in one page appears in the other', true);

  const xss = '<img src=x onerror=alert(1)>';
  await say(grace, xss);
  const shown = messageText(ada, xss);
  await shown.waitFor();
  check('the XSS message renders as text', await shown.textContent() === xss);
  check('no element was created from it', await ada.locator('#messages img').count() === 0);

  await say(grace, 'Rooms, presence, typing and private messages — all in Lua.');
  await messageText(ada, 'all in Lua').waitFor();

  await grace.fill('#message', 'typing something');
  await grace.locator('#message').dispatchEvent('input');
  await ada.locator('#typing', { hasText: 'grace is typing' }).waitFor();
  check('ada sees the typing indicator', true);

  await ada.click('#member-list button:has-text("grace")');
  await say(ada, 'psst, this one is private');
  await grace.locator('#messages .msg.pm .text', { hasText: 'psst' }).waitFor();
  check('a private message reaches its target', true);
  await ada.click('#pm-cancel');

  await grace.fill('#message', '');
  await grace.locator('#message').dispatchEvent('input');
  await grace.fill('#message', 'Looks great on a phone too');
  await grace.locator('#message').dispatchEvent('input');
  await ada.locator('#typing', { hasText: 'grace is typing' }).waitFor();
  await ada.screenshot({ path: shot });
  await grace.screenshot({ path: shot.replace(/\.png$/, '-phone.png') });
  check('no alert dialog was opened', report.dialogs === 0);

  // The server restarts: both pages show it, reconnect with backoff and rejoin.
  process.stdout.write('RESTART_NOW\n');
  await ada.locator('#status[data-state="offline"], #status[data-state="connecting"]').waitFor();
  check('the page shows it lost the connection', true);
  const deadline = Date.now() + 30000;
  while (!existsSync(join(flagDir, 'restarted'))) {
    if (Date.now() > deadline) throw new Error('the spec did not restart the server');
    await new Promise((r) => setTimeout(r, 50));
  }
  await ada.locator('#status[data-state="online"]').waitFor({ timeout: 30000 });
  await grace.locator('#status[data-state="online"]').waitFor({ timeout: 30000 });
  // The restarted server (no Redis) lost the room's history: a new epoch, and the
  // pages say so instead of mixing the old ids with the new ones.
  await ada.locator('#messages .notice', { hasText: 'The history of #lobby was reset' }).waitFor();
  await grace.locator('#messages .notice', { hasText: 'The history of #lobby was reset' }).waitFor();
  check('both pages reconnect and rejoin after a restart', true);
  await grace.fill('#message', '');
  await say(grace, 'still here after the restart');
  await messageText(ada, 'still here after the restart').waitFor();
  check('they chat again after the restart', true);
  check('no errors in the console', report.console.length === 0, report.console.join('; '));
}

let code = 0;
try {
  await main();
  report.ok = true;
} catch (e) {
  report.ok = false;
  report.error = String(e && e.stack || e);
  code = 1;
  for (const [i, ctx] of contexts.entries()) {
    try { await ctx.pages()[0].screenshot({ path: shot.replace(/\.png$/, `-fail-${i}.png`) }); } catch { /* best effort */ }
  }
}
for (const ctx of contexts) { try { await ctx.close(); } catch { /* already gone */ } }
for (const dir of profiles) rmSync(dir, { recursive: true, force: true });
process.stdout.write(`${JSON.stringify(report)}\n`);
process.exit(code);
