// Login CSRF in real Chromium: a page on another origin posts a form (and a no-cors
// fetch) to login and register. The server must refuse both, so the victim's browser is
// not signed into the attacker's account and, on a fresh install, the attacker does not
// take the first-admin slot.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startServer, launchBrowser, signUpApi, uniqueEmail, apiCall } from './helpers.mjs';

/** Serves one attacker page per path on another local port (another origin). */
async function startAttacker(pages) {
  const server = http.createServer((req, res) => {
    const page = pages[new URL(req.url, 'http://x').pathname];
    if (!page) {
      res.writeHead(404);
      res.end();
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(page());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

/** A form that posts JSON-looking text/plain, the classic login-CSRF payload. */
function formPage(action, fields) {
  const json = JSON.stringify({ ...fields, pad: '' });
  // name + "=" + value must read as the JSON object: split it before the last `"`.
  const name = json.slice(0, -2);
  const value = '"}';
  return `<!doctype html><html><body>
<form id="f" method="POST" action="${action}" enctype="text/plain">
<input type="hidden" name='${name.replace(/'/g, '&#39;')}' value='${value}'>
</form>
<script>document.getElementById('f').submit();</script>
</body></html>`;
}

/** A no-cors fetch with credentials: the response is opaque, but the request is sent. */
function fetchPage(url, fields) {
  return `<!doctype html><html><body><script>
fetch(${JSON.stringify(url)}, { method: 'POST', mode: 'no-cors', credentials: 'include',
  headers: { 'Content-Type': 'text/plain' }, body: ${JSON.stringify(JSON.stringify(fields))} })
  .then(() => { document.title = 'sent'; }, () => { document.title = 'failed'; });
</script></body></html>`;
}

describe('login CSRF', () => {
  let server;
  let browser;
  let attacker;
  let answers;
  const mallory = { email: uniqueEmail('mallory'), password: 'mallory has a long password' };
  const squatter = { email: uniqueEmail('squatter'), password: 'squatter has a long password' };

  before(async () => {
    // A fresh install: no account yet, so the first sign-up would become admin.
    server = await startServer({ builtinAgent: false });
    browser = await launchBrowser();
    const login = `${server.url}/api/v1/users/login`;
    const register = `${server.url}/api/v1/users/register`;
    attacker = await startAttacker({
      '/register-form': () => formPage(register, { ...squatter, full_name: 'Squatter' }),
      '/register-fetch': () => fetchPage(register, { ...squatter, full_name: 'Squatter' }),
      '/login-form': () => formPage(login, mallory),
      '/login-fetch': () => fetchPage(login, mallory),
    });
  });

  after(async () => {
    await browser?.close();
    await attacker?.close();
    await server?.dispose();
  });

  /** Opens an attacker page in the victim's browser and records the server's answers. */
  async function visit(context, path) {
    const page = await context.newPage();
    answers = [];
    page.on('response', (r) => {
      if (r.url().startsWith(server.url) && r.request().method() === 'POST') answers.push(r.status());
    });
    const posted = page.waitForRequest((r) => r.url().startsWith(server.url) && r.method() === 'POST');
    await page.goto(`${attacker.url}${path}`);
    await posted;
    // Let the answer arrive (the form navigates; the fetch settles).
    await page.waitForTimeout(1000);
    await page.close();
  }

  async function sessionCookie(context) {
    const cookies = await context.cookies(server.url);
    return cookies.find((c) => c.name === 'zs_session');
  }

  it('a foreign page cannot take the first-admin slot by registering', { timeout: 60000 }, async () => {
    const context = await browser.newContext();
    for (const path of ['/register-form', '/register-fetch']) {
      await visit(context, path);
      assert.equal(await sessionCookie(context), undefined, `${path} signed the victim in`);
      if (path === '/register-form') {
        assert.ok(answers.length > 0 && answers.every((s) => s === 403 || s === 415), `${path}: ${answers}`);
      }
    }
    await context.close();
    // The squatter's account does not exist: signing in fails ...
    const { status } = await apiCall(server, 'POST', '/api/v1/users/login', { body: squatter });
    assert.equal(status, 401);
    // ... and the first real account is still the admin.
    const first = await signUpApi(server, { fullName: 'Owner' });
    assert.equal(first.user.role, 'admin');
  });

  it("a foreign page cannot sign the victim into the attacker's account", { timeout: 60000 }, async () => {
    await signUpApi(server, { ...mallory, fullName: 'Mallory' });
    const context = await browser.newContext();
    for (const path of ['/login-form', '/login-fetch']) {
      await visit(context, path);
      assert.equal(await sessionCookie(context), undefined, `${path} signed the victim in`);
      if (path === '/login-form') {
        assert.ok(answers.length > 0 && answers.every((s) => s === 403 || s === 415), `${path}: ${answers}`);
      }
    }
    // The victim's own visit to the app finds them signed out.
    const page = await context.newPage();
    await page.goto(`${server.url}/dashboard.html`);
    await page.waitForURL(/\/login\.html/, { timeout: 15000 });
    await context.close();
  });
});
