// Connection UX: an ordinary server restart (8 s down) never shows "Disconnected" and the
// page is live again within 5 s of the server being back; after 10 s without a
// connection a quiet banner says live updates are paused, and it goes with the resume.
// The guide's five attempts and console lines stay.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, signUpApi, openSignedInPage, waitForConnected, sleep } from './helpers.mjs';

/** Records every text the indicator shows and when the banner is visible. */
async function recordIndicator(page) {
  await page.evaluate(() => {
    window.__texts = [];
    window.__banner = [];
    const text = document.getElementById('ws-status-text');
    const banner = document.getElementById('live-banner');
    const note = () => {
      const t = text.textContent.trim();
      if (window.__texts[window.__texts.length - 1] !== t) window.__texts.push(t);
      const b = !banner.hidden;
      if (window.__banner[window.__banner.length - 1] !== b) window.__banner.push(b);
    };
    new MutationObserver(note).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['hidden'] });
    note();
  });
}

describe('connection UX across a server restart', () => {
  const env = useServerAndBrowser();
  let user;

  before(async () => {
    user = await signUpApi(env.server, { fullName: 'Restart Watcher' });
  });

  it('an 8 s restart never shows "Disconnected" and is live within 5 s of the server being back', { timeout: 120000 }, async () => {
    const { context, page } = await openSignedInPage(env, user.token, '/dashboard.html');
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    await recordIndicator(page);

    await env.server.stop();
    await sleep(8000);
    await env.server.restart();
    const back = Date.now();
    await waitForConnected(page, 20000);
    const liveAfter = Date.now() - back;
    const texts = await page.evaluate(() => window.__texts);
    assert.ok(!texts.includes('Disconnected'), `indicator texts: ${JSON.stringify(texts)}`);
    assert.ok(texts.some((t) => /^Reconnecting\.\.\. \(\d\/5\)$/.test(t)), `indicator texts: ${JSON.stringify(texts)}`);
    // The guide's console lines.
    assert.ok(logs.includes('🔌 WebSocket disconnected'));
    assert.ok(logs.some((l) => /^🔄 Reconnecting\.\.\. \(attempt 1\/5\)$/.test(l)));
    assert.ok(!logs.some((l) => /attempt 6\//.test(l)), 'never more than the guide\'s five attempts counted');
    assert.ok(liveAfter <= 5000, `live ${liveAfter} ms after the server was back`);
    console.log(`# live again ${liveAfter} ms after the server was back`);
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('shows a quiet "paused" banner after 10 s down, gone with the resume', { timeout: 120000 }, async () => {
    const { context, page } = await openSignedInPage(env, user.token, '/tasks.html');
    await recordIndicator(page);
    await env.server.stop();
    await page.waitForSelector('#live-banner', { state: 'visible', timeout: 20000 });
    assert.match(await page.textContent('#live-banner'), /Live updates are paused/);
    await sleep(2000);
    await env.server.restart();
    await waitForConnected(page, 20000);
    await page.waitForSelector('#live-banner', { state: 'hidden', timeout: 5000 });
    const banner = await page.evaluate(() => window.__banner);
    assert.deepEqual(banner, [false, true, false]);
    await context.close();
  });

  it('drives the indicator on a page that has only the guide\'s snippet', { timeout: 60000 }, async () => {
    // /static/ws-status.html is the guide's markup and script tag, nothing else.
    const { context, page } = await openSignedInPage(env, user.token, '/static/ws-status.html');
    assert.equal(await page.getAttribute('#ws-status', 'data-state'), 'connected');
    assert.deepEqual(context.problems, []);
    await context.close();
  });
});
