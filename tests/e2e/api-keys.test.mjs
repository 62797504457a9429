// API keys page: create (shown once), list, revoke; the security alerts of the
// contract appear live on the page.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, openSignedInPage, signUpApi, apiCall, screenshot } from './helpers.mjs';

describe('api keys page', () => {
  const env = useServerAndBrowser();
  let user;

  before(async () => {
    user = await signUpApi(env.server, { fullName: 'Key Holder' });
  });

  it('creates and revokes a key, with security alerts', { timeout: 60000 }, async () => {
    const { context, page } = await openSignedInPage(env, user.token, '/api-keys.html');
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
    const me = await apiCall(env.server, 'GET', '/api/v1/users/me', { token: key });
    assert.equal(me.status, 200);

    // Security alert, live, on the page and as a toast.
    await page.waitForSelector('#security-alerts li', { timeout: 10000 });
    await page.waitForSelector('.toast.toast-warning[data-category="security"]', { timeout: 10000 });
    await screenshot(page, 'api-keys');

    await row.locator('button:has-text("Revoke")').click();
    await row.locator('button:has-text("Confirm revoke")').click();
    await page.waitForSelector('#keys-empty:not([hidden])', { timeout: 10000 });
    await page.waitForFunction(() => document.querySelectorAll('#security-alerts li').length >= 2, null, { timeout: 10000 });
    const after = await apiCall(env.server, 'GET', '/api/v1/users/me', { token: key });
    assert.equal(after.status, 401, 'a revoked key stops working');
    assert.deepEqual(context.dialogs, []);
    assert.deepEqual(context.problems, []);
    await context.close();
  });
});
