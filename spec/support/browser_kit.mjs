// Shared by the chat's browser drivers (spec/support/chat_*.mjs): headless Chromium
// through playwright-core, one fresh profile per "browser", a report of named checks
// printed as one line of JSON at the end (the spec reads the last line).
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const STEP = 15000; // ms deadline for each awaited condition

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage'];

const profiles = [];
const contexts = [];
export const report = { checks: [], console: [], dialogs: 0 };

export function check(name, ok, detail) {
  report.checks.push({ name, ok: !!ok, detail });
  if (!ok) throw new Error(`check failed: ${name}${detail ? ` (${detail})` : ''}`);
}

function watch(page, name) {
  page.setDefaultTimeout(STEP);
  page.on('console', (m) => {
    // A refused or cut connection while a test breaks it is expected noise.
    if (m.type() === 'error' && !/WebSocket connection|ERR_CONNECTION_REFUSED|ERR_INTERNET_DISCONNECTED/.test(m.text())) {
      report.console.push(`${name}: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => report.console.push(`${name}: pageerror ${e.message}`));
  page.on('dialog', async (d) => { report.dialogs += 1; await d.dismiss(); });
}

// A browser with a fresh profile; returns its context (pages share its storage).
export async function browser(name, viewport) {
  const dir = mkdtempSync(join(tmpdir(), `sb-chromium-${name}-`));
  profiles.push(dir);
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: process.env.SB_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ARGS,
    viewport: viewport || { width: 1180, height: 760 },
    deviceScaleFactor: 1,
    timeout: 60000,
  });
  contexts.push(ctx);
  return ctx;
}

// A context of one shared browser: cheaper than a browser per person.
let shared = null;
export async function context(viewport) {
  if (!shared) {
    shared = await chromium.launch({ executablePath: process.env.SB_CHROMIUM || '/usr/bin/chromium',
      headless: true, args: ARGS, timeout: 60000 });
  }
  const ctx = await shared.newContext({ viewport: viewport || { width: 1000, height: 640 }, deviceScaleFactor: 1 });
  contexts.push(ctx);
  return ctx;
}

// A tab of `ctx` on `url`, once the page says it is online. `before(page)` runs first.
export async function tab(ctx, name, url, before) {
  const page = ctx.pages().find((p) => p.url() === 'about:blank') || await ctx.newPage();
  watch(page, name);
  if (before) await before(page);
  await page.goto(url);
  await page.locator('#status[data-state="online"]').waitFor();
  return page;
}

export async function login(page, nick, room) {
  await page.fill('#nick', nick);
  await page.fill('#room', room);
  await page.click('#join-btn');
  await page.locator('#app[data-view="chat"]').waitFor();
  await page.locator('#messages .notice', { hasText: `#${room}` }).first().waitFor();
}

export async function say(page, text) {
  await page.fill('#message', text);
  await page.press('#message', 'Enter');
}

export function messageText(page, text) {
  return page.locator('#messages .msg:not(.pending) .text').filter({ hasText: text }).first();
}

// The texts of the room messages a page shows (not the pending ones), in order.
export function shownTexts(page) {
  return page.locator('#messages .msg:not(.pending) .text').allTextContents();
}

// Runs main(), prints the report, closes every browser and exits.
export async function run(main, shot) {
  let code = 0;
  try {
    await main();
    report.ok = true;
  } catch (e) {
    report.ok = false;
    report.error = String(e && e.stack || e);
    code = 1;
    for (const [i, ctx] of contexts.entries()) {
      for (const [j, p] of ctx.pages().entries()) {
        try { await p.screenshot({ path: shot.replace(/\.png$/, `-fail-${i}-${j}.png`) }); } catch { /* best effort */ }
      }
    }
  }
  for (const ctx of contexts) { try { await ctx.close(); } catch { /* already gone */ } }
  if (shared) { try { await shared.close(); } catch { /* already gone */ } }
  for (const dir of profiles) rmSync(dir, { recursive: true, force: true });
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.exit(code);
}
