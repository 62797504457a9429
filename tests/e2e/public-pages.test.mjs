// Landing, sign-up and sign-in pages; no real-time connection on public pages;
// the signed-in pages keep working under a strict Content-Security-Policy.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, watchContext, signedInContext, signUpApi, uniqueEmail, waitForConnected, screenshot } from './helpers.mjs';

const PUBLIC = ['/', '/login.html', '/signup.html'];
const SIGNED_IN = ['/dashboard.html', '/tasks.html', '/agents.html', '/analytics.html', '/settings.html', '/api-keys.html'];
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

describe('public pages and sign-up', () => {
  const env = useServerAndBrowser();


  it('opens no WebSocket and no event stream on /, /login.html and /signup.html', { timeout: 60000 }, async () => {
    const context = watchContext(await env.browser.newContext());
    const page = await context.newPage();
    const sockets = [];
    const streams = [];
    page.on('websocket', (ws) => sockets.push(ws.url()));
    page.on('request', (req) => {
      if (/\/api\/v1\/(events|ws\/connect)/.test(req.url())) streams.push(req.url());
    });
    for (const p of PUBLIC) {
      const res = await page.goto(env.server.url + p, { waitUntil: 'networkidle' });
      assert.equal(res.status(), 200, `${p} answers 200`);
      await page.waitForTimeout(500);
      assert.equal(await page.$('#ws-status'), null, `${p} has no status indicator`);
      assert.equal(await page.$('script[src="/static/js/websocket.js"]'), null, `${p} does not load websocket.js`);
      const name = p === '/' ? 'index' : p.slice(1, -5);
      await screenshot(page, name);
    }
    assert.deepEqual(sockets, [], 'no WebSocket opened');
    assert.deepEqual(streams, [], 'no event stream requested');
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('sends a signed-out visitor of a signed-in page to /login.html', { timeout: 60000 }, async () => {
    const context = watchContext(await env.browser.newContext());
    const page = await context.newPage();
    for (const p of ['/dashboard.html', '/tasks.html']) {
      await page.goto(env.server.url + p);
      await page.waitForURL(/\/login\.html/, { timeout: 10000 });
    }
    await context.close();
  });

  it('signs up through the page and lands on a connected dashboard', { timeout: 60000 }, async () => {
    const context = watchContext(await env.browser.newContext());
    const page = await context.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    await page.goto(`${env.server.url}/signup.html`);

    // Client-side validation: short password.
    await page.fill('#full-name', 'Ada Lovelace');
    const email = uniqueEmail('ada');
    await page.fill('#email', email);
    await page.fill('#password', 'short');
    await page.click('button[type="submit"]');
    await page.waitForSelector('#form-error:not([hidden])');
    assert.match(await page.textContent('#form-error'), /8 characters/);

    await page.fill('#password', 'a long enough password');
    await page.click('button[type="submit"]');
    await page.waitForURL(/\/dashboard\.html$/, { timeout: 15000 });
    await waitForConnected(page);
    assert.equal((await page.textContent('#ws-status-text')).trim(), 'Connected');
    assert.match(await page.textContent('#current-user-email'), new RegExp(email.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
    // Empty states, no mock data.
    await page.waitForSelector('#recent-empty:not([hidden])');
    assert.match(await page.textContent('#recent-empty'), /No tasks yet/);
    // The guide's console lines.
    assert.ok(logs.some((l) => /^🔌 Connecting to WebSocket: ws:\/\/127\.0\.0\.1:\d+\/api\/v1\/ws\/connect/.test(l)), 'connecting line');
    assert.ok(logs.includes('✅ WebSocket connected'), 'connected line');
    assert.ok(logs.includes('🚀 WebSocket client initialized'), 'initialized line');
    // The session cookie is HttpOnly: not readable from the page, and no token in storage.
    assert.equal(await page.evaluate(() => document.cookie.includes('zs_session')), false);
    assert.equal(await page.evaluate(() => JSON.stringify(localStorage).includes('zs')), false);
    await screenshot(page, 'dashboard-empty');

    // Duplicate sign-up shows the server's message.
    const page2 = await context.newPage();
    await page2.goto(`${env.server.url}/signup.html`);
    await page2.fill('#full-name', 'Ada Again');
    await page2.fill('#email', email);
    await page2.fill('#password', 'a long enough password');
    await page2.click('button[type="submit"]');
    await page2.waitForSelector('#form-error:not([hidden])');
    assert.ok((await page2.textContent('#form-error')).trim().length > 0);
    assert.match(page2.url(), /signup\.html/);

    // Sign out, then a wrong password shows an error and a right one signs in.
    await page.click('#sign-out');
    await page.waitForURL(/\/login\.html/);
    await page.fill('#email', email);
    await page.fill('#password', 'not the password');
    await page.click('button[type="submit"]');
    await page.waitForSelector('#form-error:not([hidden])');
    assert.ok((await page.textContent('#form-error')).trim().length > 0);
    await page.fill('#password', 'a long enough password');
    await page.click('button[type="submit"]');
    await page.waitForURL(/\/dashboard\.html$/);
    await waitForConnected(page);
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('serves every page with a strict Content-Security-Policy that the pages keep', { timeout: 90000 }, async () => {
    const { token } = await signUpApi(env.server);
    const context = await signedInContext(env.browser, env.server, token);
    await context.addInitScript(() => {
      window.__csp = [];
      document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
    });
    const page = await context.newPage();
    for (const p of [...SIGNED_IN, ...PUBLIC]) {
      const response = await page.goto(env.server.url + p);
      assert.equal(response.headers()['content-security-policy'], CSP, `policy on ${p}`);
      if (SIGNED_IN.includes(p)) await waitForConnected(page);
      else await page.waitForLoadState('networkidle');
      const violations = await page.evaluate(() => window.__csp);
      assert.deepEqual(violations, [], `no CSP violation on ${p}`);
    }
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('fits a phone-size screen without sideways scrolling', { timeout: 90000 }, async () => {
    const { token } = await signUpApi(env.server);
    const context = await signedInContext(env.browser, env.server, token, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    const page = await context.newPage();
    for (const p of [...PUBLIC, ...SIGNED_IN]) {
      await page.goto(env.server.url + p);
      if (SIGNED_IN.includes(p)) await waitForConnected(page);
      else await page.waitForLoadState('networkidle');
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `${p} overflows by ${overflow}px`);
    }
    // The menu button opens the navigation on small screens.
    await page.goto(`${env.server.url}/tasks.html`);
    await waitForConnected(page);
    assert.equal(await page.isVisible('.nav-links'), false);
    await page.click('.nav-toggle');
    assert.equal(await page.isVisible('a.nav-link[href="/agents.html"]'), true);
    await screenshot(page, 'mobile-tasks');
    assert.deepEqual(context.problems, []);
    await context.close();
  });
});
