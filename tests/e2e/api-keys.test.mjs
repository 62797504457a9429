// API keys page: create (shown once), list, revoke; the security alerts of the
// contract appear live on the page.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, signedInContext, signUpApi, apiCall, waitForConnected, screenshot } from './helpers.mjs';

describe('api keys page', () => {
  let server;
  let browser;
  let user;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
    user = await signUpApi(server, { fullName: 'Key Holder' });
  });
  after(async () => {
    await browser?.close();
    await server?.dispose();
  });

  it('creates and revokes a key, with security alerts', { timeout: 60000 }, async () => {
    const context = await signedInContext(browser, server, user.token);
    const page = await context.newPage();
    await page.goto(`${server.url}/api-keys.html`);
    await waitForConnected(page);
    await page.waitForSelector('#keys-empty:not([hidden])');
    assert.match(await page.textContent('#keys-empty'), /No API keys yet/);

    await page.fill('#key-name', 'CI pipeline');
    await page.fill('#key-expires', '30');
    await page.click('#key-form button[type="submit"]');
    await page.waitForSelector('#new-key-box:not([hidden])');
    const key = await page.inputValue('#new-key');
    assert.match(key, /^zs_/);
    const row = page.locator('#key-list tr', { hasText: 'CI pipeline' });
    await row.waitFor();
    assert.notEqual((await row.locator('td').nth(4).textContent()).trim(), 'never', 'expiry shown');

    // The key works for scripts.
    const me = await apiCall(server, 'GET', '/api/v1/users/me', { token: key });
    assert.equal(me.status, 200);

    // Security alert, live, on the page and as a toast.
    await page.waitForSelector('#security-alerts li', { timeout: 10000 });
    await page.waitForSelector('.toast.toast-warning[data-category="security"]', { timeout: 10000 });
    await screenshot(page, 'api-keys');

    await row.locator('button:has-text("Revoke")').click();
    await row.locator('button:has-text("Confirm revoke")').click();
    await page.waitForSelector('#keys-empty:not([hidden])', { timeout: 10000 });
    await page.waitForFunction(() => document.querySelectorAll('#security-alerts li').length >= 2, null, { timeout: 10000 });
    const after = await apiCall(server, 'GET', '/api/v1/users/me', { token: key });
    assert.equal(after.status, 401, 'a revoked key stops working');
    assert.deepEqual(context.dialogs, []);
    assert.deepEqual(context.problems, []);
    await context.close();
  });
});
