// Losing the server: the indicator shows the reconnect attempts; after a
// restart on the same port the page is connected again and catches up;
// a client that missed messages resumes from its cursor.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, openSignedInPage, signedInContext, signUpApi, apiCall, waitForConnected, sleep, waitTaskStatus } from './helpers.mjs';

describe('reconnect and resume', () => {
  const env = useServerAndBrowser();
  let user;

  before(async () => {
    user = await signUpApi(env.server, { fullName: 'Resumer' });
  });

  it('shows reconnect attempts while the server is down and reconnects after a restart', { timeout: 120000 }, async () => {
    const context = await signedInContext(env.browser, env.server, user.token);
    const page = await context.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    await page.goto(`${env.server.url}/tasks.html`);
    await waitForConnected(page);
    await page.evaluate(() => { window.__sameDocument = true; });

    // One task before the drop, so that the page has a cursor.
    const first = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: `before the restart ${Date.now()}` }, expect: 202 });
    await waitTaskStatus(page, { server: env.server, token: user.token, id: first.body.task_id });
    const cursorBefore = await page.evaluate(() => window.zsWebSocket.cursor);
    assert.ok(cursorBefore, 'the client keeps a cursor');

    await env.server.stop();
    await page.waitForFunction(() => /^Reconnecting\.\.\. \(\d\/5\)$/.test(document.getElementById('ws-status-text').textContent.trim()), null, { timeout: 15000 });
    assert.ok(logs.includes('🔌 WebSocket disconnected'), "the guide's exact disconnected line");
    assert.ok(logs.some((l) => /^🔄 Reconnecting\.\.\. \(attempt \d\/5\)$/.test(l)), 'reconnecting line');

    await env.server.restart();
    // A task submitted right after the restart, maybe before the page is back.
    const second = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: `after the restart ${Date.now()}` }, expect: 202 });
    await waitForConnected(page, 40000);
    await waitTaskStatus(page, { server: env.server, token: user.token, id: second.body.task_id });
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload happened');
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('replays the messages a disconnected page missed when it resumes with its cursor', { timeout: 120000 }, async () => {
    const { context, page } = await openSignedInPage(env, user.token, '/tasks.html');
    await page.evaluate(() => {
      window.__resumed = [];
      window.__updates = [];
      document.addEventListener('zs:resumed', (e) => window.__resumed.push(e.detail));
      window.zsWebSocket.on('task_update', (d, m) => window.__updates.push(`${d.task_id}:${d.status}:${m.cursor}`));
    });
    // A message arrives so the client has a position, then the page goes away.
    const warm = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: `warm ${Date.now()}` }, expect: 202 });
    await waitTaskStatus(page, { server: env.server, token: user.token, id: warm.body.task_id });
    await page.evaluate(() => window.zsWebSocket.stop());

    const missed = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: `missed ${Date.now()}` }, expect: 202 });
    const id = missed.body.task_id;
    const deadline = Date.now() + 60000;
    for (;;) {
      const t = await apiCall(env.server, 'GET', `/api/v1/tasks/${id}`, { token: user.token });
      if (t.body.status === 'completed') break;
      assert.ok(Date.now() < deadline, 'task completes');
      await sleep(300);
    }
    assert.equal(await page.$(`#task-list [data-task-id="${id}"]`), null, 'the page did not see it while disconnected');

    await page.evaluate(() => window.zsWebSocket.resume());
    await waitForConnected(page);
    await waitTaskStatus(page, { server: env.server, token: user.token, id: id, timeout: 20000 });
    await page.waitForFunction(() => window.__resumed.length > 0, null, { timeout: 10000 });
    const updates = await page.evaluate(() => window.__updates);
    const mine = updates.filter((u) => u.startsWith(`${id}:`));
    assert.ok(mine.some((u) => u.startsWith(`${id}:completed:`)), `replayed updates: ${JSON.stringify(updates)}`);
    assert.equal(mine.length, new Set(mine).size, 'no message twice (by cursor)');
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('falls back to Server-Sent Events when WebSockets cannot connect', { timeout: 90000 }, async () => {
    const context = await signedInContext(env.browser, env.server, user.token);
    // A network that blocks WebSockets: every socket fails before opening.
    await context.addInitScript(() => {
      class BlockedWebSocket extends EventTarget {
        constructor(url) {
          super();
          this.url = url;
          this.readyState = 0;
          window.__wsAttempts = (window.__wsAttempts || 0) + 1;
          setTimeout(() => {
            this.readyState = 3;
            if (this.onclose) this.onclose({ code: 1006, reason: '', wasClean: false });
          }, 20);
        }
        send() { throw new Error('not open'); }
        close() {}
      }
      BlockedWebSocket.CONNECTING = 0;
      BlockedWebSocket.OPEN = 1;
      BlockedWebSocket.CLOSING = 2;
      BlockedWebSocket.CLOSED = 3;
      window.WebSocket = BlockedWebSocket;
    });
    const page = await context.newPage();
    const streams = [];
    page.on('request', (req) => { if (req.url().includes('/api/v1/events')) streams.push(req.url()); });
    await page.goto(`${env.server.url}/tasks.html`);
    await waitForConnected(page, 40000);
    assert.equal(await page.getAttribute('#ws-status', 'data-transport'), 'sse');
    assert.ok(streams.length > 0, 'the event stream was requested');
    assert.ok(await page.evaluate(() => window.__wsAttempts) >= 3, 'WebSocket was tried first');

    const res = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: `over SSE ${Date.now()}` }, expect: 202 });
    await waitTaskStatus(page, { server: env.server, token: user.token, id: res.body.task_id });
    await page.waitForSelector('.toast.toast-success:has-text("Task completed")');
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('sends {"type":"ping"} every 25 s and gets a pong', { timeout: 60000 }, async () => {
    const context = await signedInContext(env.browser, env.server, user.token);
    const page = await context.newPage();
    const sent = [];
    const received = [];
    page.on('websocket', (ws) => {
      ws.on('framesent', (f) => sent.push(String(f.payload)));
      ws.on('framereceived', (f) => received.push(String(f.payload)));
    });
    await page.goto(`${env.server.url}/dashboard.html`);
    await waitForConnected(page);
    await page.waitForTimeout(26500);
    assert.ok(sent.some((f) => JSON.parse(f).type === 'ping'), `frames sent: ${JSON.stringify(sent)}`);
    assert.ok(received.some((f) => JSON.parse(f).type === 'pong'), 'a pong came back');
    await context.close();
  });

  it('keeps retrying after the fast attempts, with a Retry button', { timeout: 150000 }, async () => {
    const { context, page } = await openSignedInPage(env, user.token, '/tasks.html');
    await env.server.stop();
    // Five fast attempts, quick retries while it may be a restart, then (30 s) "Disconnected".
    await page.waitForFunction(() => document.getElementById('ws-status-text').textContent.trim() === 'Disconnected', null, { timeout: 60000 });
    assert.equal(await page.getAttribute('#ws-status', 'data-state'), 'disconnected');
    await page.waitForSelector('#ws-status-retry');
    await env.server.restart();
    await page.click('#ws-status-retry');
    await waitForConnected(page, 10000);
    assert.equal(await page.$('#ws-status-retry'), null, 'the button goes away');
    assert.deepEqual(context.problems, []);
    await context.close();
  });
  it('reconnects at once when the network comes back or the tab becomes visible', { timeout: 200000 }, async () => {
    const { context, page } = await openSignedInPage(env, user.token, '/tasks.html');
    for (const wake of [
      () => window.dispatchEvent(new Event('online')),
      () => document.dispatchEvent(new Event('visibilitychange')),
    ]) {
      await env.server.stop();
      // Down 30 s: the client waits 15 to 30 s between slow retries...
      await page.waitForFunction(() => document.getElementById('ws-status-text').textContent.trim() === 'Disconnected', null, { timeout: 60000 });
      await env.server.restart();
      assert.equal(await page.getAttribute('#ws-status', 'data-state'), 'disconnected');
      // ...but the browser's signal brings it back well before the next one.
      await page.evaluate(wake);
      await waitForConnected(page, 8000);
    }
    assert.deepEqual(context.problems, []);
    await context.close();
  });
});
