// Admin broadcast from the settings page reaches another user's browser as a
// toast; message text is shown as text, never as HTML.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, signedInContext, signUpApi, waitForConnected, screenshot } from './helpers.mjs';

describe('system broadcast', () => {
  const env = useServerAndBrowser();
  let admin;
  let other;

  before(async () => {
    admin = await signUpApi(env.server, { fullName: 'Admin' });
    other = await signUpApi(env.server, { fullName: 'Other User' });
    assert.equal(admin.user.role, 'admin');
    assert.equal(other.user.role, 'user');
  });

  async function broadcast(page, message, level) {
    await page.fill('#broadcast-message', message);
    await page.selectOption('#broadcast-level', level);
    await page.click('#broadcast-submit');
  }

  it('delivers an admin broadcast to another user as a toast', { timeout: 60000 }, async () => {
    const adminCtx = await signedInContext(env.browser, env.server, admin.token);
    const otherCtx = await signedInContext(env.browser, env.server, other.token);
    const adminPage = await adminCtx.newPage();
    const otherPage = await otherCtx.newPage();

    await otherPage.goto(`${env.server.url}/settings.html`);
    await waitForConnected(otherPage);
    assert.equal(await otherPage.isVisible('#broadcast-section'), false, 'non-admins do not see the form');
    await otherPage.goto(`${env.server.url}/dashboard.html`);
    await waitForConnected(otherPage);

    await adminPage.goto(`${env.server.url}/settings.html`);
    await waitForConnected(adminPage);
    await adminPage.waitForSelector('#broadcast-section:not([hidden])');
    assert.equal(await adminPage.inputValue('#profile-name'), 'Admin');
    await screenshot(adminPage, 'settings');

    const text = `Maintenance in 10 minutes ${Date.now()}`;
    await broadcast(adminPage, text, 'warning');
    const toast = otherPage.locator('#toasts .toast.toast-warning[role="status"]', { hasText: text });
    await toast.waitFor({ timeout: 10000 });
    // The dashboard lists it among this session's notifications.
    await otherPage.waitForSelector(`#notifications li:has-text("${text}")`);
    assert.deepEqual(adminCtx.problems, []);
    assert.deepEqual(otherCtx.problems, []);

    // XSS: shown as text, no element created, no dialog.
    const evil = '<img src=x onerror=alert(1)>';
    await otherPage.evaluate(() => { window.__imgsBefore = document.querySelectorAll('img').length; });
    await broadcast(adminPage, evil, 'error');
    const evilToast = otherPage.locator('#toasts .toast.toast-error', { hasText: evil });
    await evilToast.waitFor({ timeout: 10000 });
    assert.ok((await evilToast.textContent()).includes(evil));
    assert.equal(await otherPage.evaluate(() => document.querySelectorAll('#toasts img, #notifications img').length), 0);
    assert.equal(await otherPage.evaluate(() => document.querySelectorAll('img').length - window.__imgsBefore), 0);
    await otherPage.waitForTimeout(500);
    assert.deepEqual(otherCtx.dialogs, []);
    assert.deepEqual(adminCtx.dialogs, []);

    // The non-admin cannot broadcast through the API either.
    const res = await otherPage.evaluate(async () => {
      const r = await fetch('/api/v1/ws/broadcast', { method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ type: 'system', data: { message: 'x', level: 'info' } }) });
      return r.status;
    });
    assert.equal(res, 403);
    await adminCtx.close();
    await otherCtx.close();
  });
});
