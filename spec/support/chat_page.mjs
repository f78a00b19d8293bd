// The chat page's own behaviour in headless Chromium, for spec/e2e/browser_spec.lua:
//
//   node spec/support/chat_page.mjs BASE_URL SCREENSHOT.png
//
// Two tabs of one browser keep their own nicks across a reload; text typed faster than
// the rate limit is kept and sent in order (also when the server refuses it), with one
// notice and no toasts; links are clickable and safe; date lines; a "new messages"
// marker when scrolled up.
import { STEP, report, check, browser, tab, login, say, messageText, shownTexts, run } from './browser_kit.mjs';

const [base, shot] = process.argv.slice(2);

// Types `n` messages "PREFIX i" into the page as fast as a script can.
function burst(page, prefix, n) {
  return page.evaluate(([p, count]) => {
    const box = document.getElementById('message');
    for (let i = 1; i <= count; i++) {
      box.value = `${p} ${i}`;
      box.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
    }
  }, [prefix, n]);
}

async function inOrder(page, prefix, n) {
  const want = Array.from({ length: n }, (_, i) => `${prefix} ${i + 1}`);
  const deadline = Date.now() + STEP;
  let got;
  for (;;) {
    got = (await shownTexts(page)).filter((t) => t.startsWith(`${prefix} `));
    if (got.length >= n || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return { ok: JSON.stringify(got) === JSON.stringify(want), detail: JSON.stringify(got) };
}

async function main() {
  const one = await browser('one', { width: 1000, height: 560 });
  const ada = await tab(one, 'ada', `${base}/`);
  let refused = 0;
  ada.on('websocket', (ws) => ws.on('framereceived', (f) => {
    if (typeof f.payload === 'string' && f.payload.includes('"rate_limited"')) refused += 1;
  }));
  await login(ada, 'ada', 'lobby');

  // Two tabs of one browser are two people: a new tab only suggests the last nick.
  const grace = await tab(one, 'grace', `${base}/`);
  check('a new tab suggests the last nick used', await grace.inputValue('#nick') === 'ada');
  await login(grace, 'grace', 'lobby');
  await ada.reload();
  await ada.locator('#app[data-view="chat"]').waitFor();
  await ada.locator('#member-list .member-nick', { hasText: 'grace' }).waitFor();
  check('a reloaded tab comes back with its own nick', await ada.textContent('#me-nick') === 'ada');
  check('the other tab keeps its nick', await grace.textContent('#me-nick') === 'grace');
  await grace.locator('#messages .notice', { hasText: 'ada joined' }).waitFor();

  // Faster than the rate limit (10, then 5 a second): nothing is lost, order is kept.
  await burst(ada, 'burst', 15);
  await ada.locator('#send-notice:not([hidden])', { hasText: 'waiting' }).waitFor();
  check('text over the limit waits, with one notice', await ada.locator('#send-notice').count() === 1);
  check('waiting text is shown as waiting', await ada.locator('#messages .msg.pending .pending-tag',
    { hasText: 'waiting' }).count() > 0);
  let r = await inOrder(grace, 'burst', 15);
  check('15 messages typed at once all arrive, in order', r.ok, r.detail);
  r = await inOrder(ada, 'burst', 15);
  check('the sender sees them in the same order', r.ok, r.detail);
  await ada.locator('#send-notice').waitFor({ state: 'hidden' });
  check('no message is left pending', await ada.locator('#messages .msg.pending').count() === 0);

  // The server refuses what a page sends too fast (its own pacing is off here):
  // the refused text is kept and sent again after retry_after.
  await ada.evaluate(() => {
    const s = window.sbChat.state;
    s.limits = { burst: 1000, rate: 5 };
    s.tokens = 1000;
  });
  await burst(ada, 'again', 15);
  r = await inOrder(grace, 'again', 15);
  check('text the server refused is sent again, in order', r.ok, r.detail);
  check('the server did refuse some', refused > 0, String(refused));
  await ada.evaluate(() => { window.sbChat.state.limits = { burst: 10, rate: 5 }; });
  check('no toast for rate limiting', await ada.locator('.toast').count() === 0);

  // Links: http(s) only, opened without the opener or a referrer; everything else text.
  await ada.locator('#send-notice').waitFor({ state: 'hidden' });
  const linky = 'see https://example.com/a?b=1&c=2, javascript:alert(1) and http://x.test/<b> (or <a href="javascript:alert(2)">x</a>)';
  await say(ada, linky);
  const shown = messageText(grace, 'see https://example.com');
  await shown.waitFor();
  check('a message with links keeps its text', await shown.textContent() === linky);
  const links = await shown.locator('a').evaluateAll((as) => as.map((a) => [a.getAttribute('href'), a.textContent,
    a.rel, a.target]));
  check('only the http(s) URLs are links', JSON.stringify(links) === JSON.stringify([
    ['https://example.com/a?b=1&c=2', 'https://example.com/a?b=1&c=2', 'noopener noreferrer', '_blank'],
    ['http://x.test/', 'http://x.test/', 'noopener noreferrer', '_blank'],
  ]), JSON.stringify(links));

  // Date lines: today's messages under "Today"; seen from tomorrow, under "Yesterday".
  const days = await grace.locator('#messages .day').allTextContents();
  check('one date line above today\'s messages', JSON.stringify(days) === '["Today"]', JSON.stringify(days));
  const two = await browser('two', { width: 1000, height: 560 });
  const lin = await tab(two, 'lin', `${base}/`, (p) => p.clock.setSystemTime(new Date(Date.now() + 86400000)));
  await login(lin, 'lin', 'lobby');
  const later = await lin.locator('#messages .day').allTextContents();
  check('a date line wherever the day changes', JSON.stringify(later) === '["Yesterday","Today"]',
    JSON.stringify(later));

  // Scrolled up, a new message shows a marker instead of moving the page.
  await grace.evaluate(() => { document.getElementById('messages').scrollTop = 0; });
  await say(ada, 'read me when you are back');
  await messageText(grace, 'read me when you are back').waitFor({ state: 'attached' });
  await grace.locator('#new-marker:not([hidden])').waitFor();
  check('the marker counts the new message', await grace.textContent('#new-marker') === '1 new message ↓');
  check('the page did not scroll', await grace.evaluate(() => document.getElementById('messages').scrollTop) === 0);
  await grace.click('#new-marker');
  await grace.locator('#new-marker').waitFor({ state: 'hidden' });
  check('the marker takes the reader to the bottom', await grace.evaluate(() => {
    const box = document.getElementById('messages');
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }));
  // sbclient.js on its own, against the echo route: the outbox before the first
  // connection and while one is down, later(), the reconnect, positions.
  const sbc = await grace.evaluate(async () => {
    const { SbClient } = await import('./sbclient.js');
    const got = [];
    const statuses = [];
    const until = (n) => new Promise((resolve, reject) => {
      const deadline = Date.now() + 10000;
      const t = setInterval(() => {
        if (got.length >= n) { clearInterval(t); resolve(); }
        if (Date.now() > deadline) { clearInterval(t); reject(new Error(`echo: ${JSON.stringify(got)}`)); }
      }, 10);
    });
    const c = new SbClient('/echo', { minDelay: 50, maxDelay: 100,
      onmessage: (m) => got.push(m.n), onstatus: (st) => statuses.push(st) });
    const first = c.send({ n: 1 });
    c.start();
    await until(1);
    const online = c.send({ n: 2 });
    c.later({ n: 3 }, 0.05);
    await until(3);
    const generation = c.generation;
    c.drop();
    const offline = c.send({ n: 4 });
    await until(4);
    const seen = [c.seen('t', 1, 'e1'), c.seen('t', 1, 'e1'), c.seen('t', 3, 'e1'), c.seen('t', 2, 'e1'),
      c.position('t'), c.seen('t', 1, 'e2'), c.position('t')];
    const reconnected = c.generation === generation + 1;
    c.stop();
    return { first, online, offline, got, statuses: [...new Set(statuses)], seen, reconnected };
  });
  check('sbclient.js keeps what is sent before and between connections, in order', JSON.stringify(sbc.got)
    === '[1,2,3,4]' && sbc.first === 'queued' && sbc.online === 'sent' && sbc.offline === 'queued'
    && sbc.reconnected, JSON.stringify(sbc));
  check('sbclient.js reports connecting, online and offline',
    JSON.stringify(sbc.statuses) === '["connecting","online","offline"]', JSON.stringify(sbc.statuses));
  check('sbclient.js tells new positions from duplicates, and starts a topic over for a new epoch',
    JSON.stringify(sbc.seen) === JSON.stringify([true, false, true, false, { since: 3, epoch: 'e1' }, true,
      { since: 1, epoch: 'e2' }]), JSON.stringify(sbc.seen));

  await grace.screenshot({ path: shot });
  check('no alert dialog was opened', report.dialogs === 0);
  check('no errors in the console', report.console.length === 0, report.console.join('; '));
}

run(main, shot);
