// Notifications that persist (the server's message history: a new tab shows them), key
// names in security alerts, the secret box cleared on revoke, the light theme and its
// switch, the HTML 404 page for browsers (JSON for /api/), and analytics with nothing to
// rate ("—"), even time ticks and legible text on a phone.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, signUpApi, apiCall, signedInContext, openSignedInPage, waitForConnected } from './helpers.mjs';

describe('notifications, theme, 404 and analytics', () => {
  const env = useServerAndBrowser({ builtinAgent: false });
  let admin;
  let user;

  before(async () => {
    admin = await signUpApi(env.server, { fullName: 'Admin' });
    user = await signUpApi(env.server, { fullName: 'Alert Reader' });
  });

  it('shows the dashboard\'s and the API keys page\'s alerts in a new tab, with key names', { timeout: 90000 }, async () => {
    // Created by a script while no page was open.
    await apiCall(env.server, 'POST', '/api/v1/api-keys', { token: user.token, body: { name: 'ci-deploy' }, expect: 201 });
    await apiCall(env.server, 'POST', `/api/v1/ws/user/${user.user.id}`, {
      token: admin.token, body: { type: 'system', data: { message: 'Maintenance tonight', level: 'info' } }, expect: 202,
    });
    const { context, page } = await openSignedInPage(env, user.token, '/dashboard.html');
    await page.waitForSelector('#notifications li:has-text("Maintenance tonight")');
    await page.waitForSelector('#notifications li:has-text("API key \\"ci-deploy\\" was created")');

    // Another tab (a new context: nothing shared but the cookie) sees the same.
    const other = await signedInContext(env.browser, env.server, user.token);
    const keysPage = await other.newPage();
    await keysPage.goto(`${env.server.url}/api-keys.html`);
    await waitForConnected(keysPage);
    await keysPage.waitForSelector('#security-alerts li:has-text("ci-deploy")');
    assert.equal(await keysPage.$('#security-alerts li:has-text("Maintenance tonight")'), null, 'only security alerts there');

    // Create in the page, then revoke it: the alert names it and the secret box is cleared.
    await keysPage.fill('#key-name', 'laptop');
    await keysPage.click('#key-form button[type="submit"]');
    await keysPage.waitForSelector('#new-key-box', { state: 'visible' });
    assert.match(await keysPage.inputValue('#new-key'), /^zs_/);
    const revoke = keysPage.locator('#key-list tr', { hasText: 'laptop' }).locator('button');
    await revoke.click();
    await revoke.click();
    await keysPage.waitForSelector('#new-key-box', { state: 'hidden' });
    assert.equal(await keysPage.inputValue('#new-key'), '');
    await keysPage.waitForSelector('#security-alerts li:has-text("API key \\"laptop\\" was revoked")');
    // ...and the first tab got it live.
    await page.waitForSelector('#notifications li:has-text("API key \\"laptop\\" was revoked")');

    // A reload keeps them all.
    await page.reload();
    await waitForConnected(page);
    await page.waitForSelector('#notifications li:has-text("ci-deploy")');
    assert.deepEqual([...context.problems, ...other.problems], []);
    await context.close();
    await other.close();
  });

  it('follows prefers-color-scheme and switches theme, remembered across pages', { timeout: 60000 }, async () => {
    const context = await signedInContext(env.browser, env.server, user.token, { colorScheme: 'light' });
    const page = await context.newPage();
    await page.goto(`${env.server.url}/dashboard.html`);
    await waitForConnected(page);
    const bg = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    assert.equal(await bg(), 'rgb(245, 246, 250)', 'light from the system');
    await page.click('#app-header [data-theme-toggle]');
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
    assert.equal(await bg(), 'rgb(11, 16, 32)');
    await page.goto(`${env.server.url}/tasks.html`);
    assert.equal(await bg(), 'rgb(11, 16, 32)', 'the choice is kept');
    await page.click('#app-header [data-theme-toggle]');
    assert.equal(await bg(), 'rgb(245, 246, 250)');
    // Public pages have the switch too.
    await page.goto(`${env.server.url}/login.html`);
    assert.equal(await bg(), 'rgb(245, 246, 250)');
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('answers an unknown page with an HTML 404 for browsers and JSON under /api/', { timeout: 30000 }, async () => {
    const context = await env.browser.newContext();
    const page = await context.newPage();
    const res = await page.goto(`${env.server.url}/no-such-page.html`);
    assert.equal(res.status(), 404);
    assert.match(res.headers()['content-type'], /^text\/html/);
    assert.equal(await page.textContent('h1'), 'Page not found');
    const nested = await page.goto(`${env.server.url}/some/where`);
    assert.equal(nested.status(), 404);
    assert.equal(await page.textContent('h1'), 'Page not found');
    const api = await fetch(`${env.server.url}/api/v1/nope`, { headers: { Accept: 'text/html' } });
    assert.equal(api.status, 404);
    assert.equal((await api.json()).error, 'not_found');
    const script = await fetch(`${env.server.url}/nope`);
    assert.equal(script.status, 404);
    assert.equal((await script.json()).error, 'not_found');
    await context.close();
  });

  it('shows "—" with nothing to rate, even time ticks, and legible charts on a phone', { timeout: 60000 }, async () => {
    const fresh = await signUpApi(env.server, { fullName: 'No Tasks Yet' });
    const { context, page } = await openSignedInPage(env, fresh.token, '/dashboard.html');
    await page.waitForFunction(() => document.getElementById('stat-total').textContent === '0');
    assert.equal(await page.textContent('#stat-success-rate'), '—');
    await page.goto(`${env.server.url}/analytics.html`);
    await waitForConnected(page);
    await page.waitForFunction(() => document.getElementById('a-total').textContent === '0');
    assert.equal(await page.textContent('#a-success'), '—');
    await context.close();

    // The user with tasks, on a phone, over 7 days and 24 hours.
    const phone = await signedInContext(env.browser, env.server, user.token, { viewport: { width: 390, height: 844 }, isMobile: true });
    const p = await phone.newPage();
    await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: 'chart me' }, expect: 202 });
    await p.goto(`${env.server.url}/analytics.html`);
    await waitForConnected(p);
    for (const win of ['24h', '7d', '1h']) {
      await p.click(`label[for="window-${win}"]`);
      await p.waitForSelector(`#chart-throughput svg[aria-label="Throughput over the last ${win}"]`);
      const ticks = await p.$$eval('#chart-throughput text[text-anchor]:not([text-anchor="end"]), #chart-throughput text[text-anchor="end"]', (nodes) => nodes
        .filter((n) => Number(n.getAttribute('y')) > 200)
        .map((n) => ({ text: n.textContent, x: n.getBoundingClientRect().x, w: n.getBoundingClientRect().width, h: n.getBoundingClientRect().height })));
      assert.ok(ticks.length >= 2, `${win}: ${JSON.stringify(ticks)}`);
      assert.equal(new Set(ticks.map((t) => t.text)).size, ticks.length, `${win}: labels repeat: ${JSON.stringify(ticks)}`);
      for (let i = 1; i < ticks.length; i += 1) assert.ok(ticks[i].x >= ticks[i - 1].x + ticks[i - 1].w, `${win}: labels collide: ${JSON.stringify(ticks)}`);
      assert.ok(ticks.every((t) => t.h >= 10), `${win}: text too small: ${JSON.stringify(ticks)}`);
      if (win === '7d') assert.ok(ticks.some((t) => /[A-Za-z]/.test(t.text)), `7d ticks carry dates: ${JSON.stringify(ticks)}`);
    }
    await phone.close();
  });
});
