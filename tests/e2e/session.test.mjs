// Sessions and the 4001 close code: signing out in one tab closes the live
// connection of the others, which go to the sign-in page and come back after it.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, signedInContext, signUpApi, waitForConnected } from './helpers.mjs';

describe('sessions', () => {
  const env = useServerAndBrowser();


  it('sends every tab to sign-in when the session is revoked, and back after signing in', { timeout: 60000 }, async () => {
    const user = await signUpApi(env.server, { fullName: 'Two Tabs' });
    const context = await signedInContext(env.browser, env.server, user.token);
    const tabA = await context.newPage();
    const tabB = await context.newPage();
    const closes = [];
    tabB.on('websocket', (ws) => ws.on('close', () => closes.push(ws.url())));
    await tabA.goto(`${env.server.url}/dashboard.html`);
    await tabB.goto(`${env.server.url}/tasks.html`);
    await waitForConnected(tabA);
    await waitForConnected(tabB);

    await tabA.click('#sign-out');
    await tabA.waitForURL(/\/login\.html/);
    // The other tab learns it from its connection (close code 4001), without reloading by itself.
    await tabB.waitForURL(/\/login\.html\?next=%2Ftasks\.html/, { timeout: 15000 });
    assert.ok(closes.length >= 1);

    // Signing in again returns to the page it came from.
    await tabB.fill('#email', user.email);
    await tabB.fill('#password', user.password);
    await tabB.click('button[type="submit"]');
    await tabB.waitForURL(/\/tasks\.html$/);
    await waitForConnected(tabB);
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('reloads its data on `reset` when its stored cursor cannot be resumed', { timeout: 60000 }, async () => {
    const user = await signUpApi(env.server, { fullName: 'Stale Cursor' });
    const context = await signedInContext(env.browser, env.server, user.token);
    // A cursor from another server life (unknown epoch): the gap cannot be replayed.
    await context.addInitScript((key) => {
      if (location.protocol !== 'http:') return; // about:blank has no storage
      sessionStorage.setItem(key, '0000000000000000-999999');
      window.__resets = [];
      document.addEventListener('zs:reset', (e) => window.__resets.push(e.detail));
    }, "zs.ws.cursor");
    const page = await context.newPage();
    const frames = [];
    page.on('websocket', (ws) => {
      frames.push(ws.url());
      ws.on('framereceived', (f) => frames.push(String(f.payload).slice(0, 200)));
    });
    await page.goto(`${env.server.url}/tasks.html`);
    await waitForConnected(page);
    await page.waitForFunction(() => window.__resets.length > 0, null, { timeout: 10000 }).catch((err) => {
      throw new Error(`${err.message}\nframes: ${frames.join('\n')}`);
    });
    assert.match(frames[0], /since=0000000000000000-999999/);
    // The stale cursor is gone: the next one comes from the server.
    const cursor = await page.evaluate(() => window.zsWebSocket.cursor);
    assert.notEqual(cursor, '0000000000000000-999999');
    await page.waitForSelector('#tasks-empty:not([hidden])');
    assert.deepEqual(context.problems, []);
    await context.close();
  });
});
