// Submitting a task from the tasks page: the built-in agent runs it and the
// row moves to completed / 100 % live, with a toast; details show the result;
// dashboard and analytics follow.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, openSignedInPage, signedInContext, signUpApi, apiCall, waitForConnected, screenshot, waitTaskStatus, deferred, untilTaskMovedOn } from './helpers.mjs';

describe('tasks page', () => {
  const env = useServerAndBrowser();
  let user;

  before(async () => {
    user = await signUpApi(env.server, { fullName: 'Task Runner' });
  });

  it('submits a task and shows it completing live, with a toast', { timeout: 90000 }, async () => {
    const context = await signedInContext(env.browser, env.server, user.token);
    const page = await context.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    await page.goto(`${env.server.url}/tasks.html`);
    await waitForConnected(page);
    await page.waitForSelector('#tasks-empty:not([hidden])');
    assert.match(await page.textContent('#tasks-empty'), /No tasks yet/);
    await page.evaluate(() => { window.__sameDocument = true; });

    const query = `Summarise the e2e run ${Date.now()}`;
    await page.fill('#task-query', query);
    assert.equal(await page.inputValue('#task-capability'), 'general');
    await page.selectOption('#task-priority', 'high');
    await page.click('#task-submit');

    const row = page.locator('#task-list [data-task-id]', { hasText: query });
    await row.waitFor({ timeout: 10000 });
    const id = await row.getAttribute('data-task-id');
    assert.match(id, /^[0-9a-f-]{36}$/i);
    const badge = page.locator(`#task-list [data-task-id="${id}"] [data-status]`);
    await waitTaskStatus(page, { server: env.server, token: user.token, id });
    assert.equal((await badge.textContent()).trim(), 'completed');
    const progress = await page.$eval(`#task-list [data-task-id="${id}"] progress`, (p) => [p.value, p.dataset.progress]);
    assert.deepEqual(progress, [100, '100']);
    await page.waitForSelector('.toast.toast-success[role="status"]:has-text("Task completed")', { timeout: 10000 });
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload happened');
    assert.ok(logs.some((l) => l.startsWith('📨 WebSocket message:')), 'message line');
    assert.ok(logs.some((l) => l.startsWith('📋 Task update:')), 'task update line');

    // Details: the result of the built-in agent.
    await row.locator(".task-details").click();
    await page.waitForSelector(`#task-detail [data-task-id="${id}"] [data-status="completed"]`);
    await page.waitForSelector('#task-result');
    assert.ok((await page.textContent('#task-result')).length > 0);
    await screenshot(page, 'tasks');

    // A second task submitted by a script appears on the page by itself.
    const other = `From a script ${Date.now()}`;
    const res = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: other }, expect: 202 });
    await waitTaskStatus(page, { server: env.server, token: user.token, id: res.body.task_id });

    // The status filter.
    await page.selectOption('#status-filter', 'failed');
    await page.waitForSelector('#tasks-empty:not([hidden])');
    assert.match(await page.textContent('#tasks-empty'), /No failed tasks/);
    await page.selectOption('#status-filter', '');
    await page.waitForSelector(`#task-list [data-task-id="${id}"]`);
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('cancels a queued task (no agent can take it)', { timeout: 60000 }, async () => {
    const { context, page } = await openSignedInPage(env, user.token, '/tasks.html');
    const query = `Needs a capability nobody has ${Date.now()}`;
    await page.fill('#task-query', query);
    await page.fill('#task-capability', 'nobody-has-this');
    await page.click('#task-submit');
    const row = page.locator('#task-list [data-task-id]', { hasText: query });
    await row.waitFor();
    assert.equal(await row.locator('[data-status]').getAttribute('data-status'), 'queued');
    await row.locator('.task-cancel').click();
    await page.waitForFunction((q) => [...document.querySelectorAll('#task-list [data-task-id]')]
      .some((r) => r.textContent.includes(q) && r.querySelector('[data-status]').dataset.status === 'canceled'), query, { timeout: 10000 });
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('shows live numbers on the dashboard and charts on analytics', { timeout: 90000 }, async () => {
    const { context, page } = await openSignedInPage(env, user.token, '/dashboard.html');
    await page.waitForFunction(() => Number(document.getElementById('stat-completed').textContent) >= 2, null, { timeout: 10000 });
    const before = Number(await page.textContent('#stat-completed'));
    const res = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: `dashboard live ${Date.now()}` }, expect: 202 });
    const id = res.body.task_id;
    await waitTaskStatus(page, { server: env.server, token: user.token, root: '#recent-tasks', id });
    await page.waitForFunction((n) => Number(document.getElementById('stat-completed').textContent) > n, before, { timeout: 10000 });
    assert.notEqual((await page.textContent('#stat-success-rate')).trim(), '—');
    await screenshot(page, 'dashboard');

    await page.goto(`${env.server.url}/analytics.html`);
    await waitForConnected(page);
    await page.waitForSelector('#chart-throughput svg polyline');
    await page.waitForSelector('#chart-durations svg rect.bar');
    assert.ok(Number(await page.textContent('#a-total')) >= 3);
    await page.click('label[for="window-1h"]');
    await page.waitForSelector('#chart-throughput svg');
    await page.click('label[for="window-7d"]');
    await page.waitForSelector('#chart-throughput svg');
    await screenshot(page, 'analytics');
    assert.deepEqual(context.problems, []);
    await context.close();
  });
  // The list is fetched while the socket is already delivering: a task that finishes
  // before the (older) list answer arrives must not be drawn back as queued.
  for (const path of ['/tasks.html', '/dashboard.html']) {
    it(`keeps an update that arrived while the list was loading (${path})`, { timeout: 60000 }, async () => {
      const runAt = new Date(Date.now() + 1500).toISOString();
      const sub = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: `late list ${Date.now()}`, run_at: runAt }, expect: 202 });
      const id = sub.body.task_id;
      const context = await signedInContext(env.browser, env.server, user.token);
      let held = 0;
      const [answered, released] = deferred();
      await context.route(/\/api\/v1\/tasks\?/, async (route) => {
        if (held++ > 0) return route.continue();
        const stale = await route.fetch(); // answered now, while the task is queued
        assert.equal((await stale.json()).tasks.find((t) => t.id === id)?.status, 'queued');
        await untilTaskMovedOn(env.server, user.token, id); // the updates reach the page first
        await route.fulfill({ response: stale });
        released();
      });
      const page = await context.newPage();
      await page.goto(`${env.server.url}${path}`);
      await waitForConnected(page);
      const root = path === '/tasks.html' ? '#task-list' : '#recent-tasks';
      await answered;
      await new Promise((r) => setTimeout(r, 500)); // the page has drawn the stale answer
      await waitTaskStatus(page, { server: env.server, token: user.token, root, id, timeout: 5000 });
      assert.deepEqual(context.problems, []);
      await context.close();
    });
  }

  // Live events refresh the dashboard's counts; an older answer that comes back after a
  // newer one must not draw the old counts over the new ones.
  it('draws the newest counts when answers come back out of order', { timeout: 60000 }, async () => {
    const context = await signedInContext(env.browser, env.server, user.token);
    const [firstHeld, releaseFirst] = deferred();
    const [firstAnswered, answeredFirst] = deferred();
    let summaries = 0;
    await context.route(/\/api\/v1\/analytics\/summary/, async (route) => {
      if (summaries++ > 0) return route.continue();
      const stale = await route.fetch(); // the counts before the task below
      await firstHeld;
      await route.fulfill({ response: stale });
      answeredFirst();
    });
    const page = await context.newPage();
    await page.goto(`${env.server.url}/dashboard.html`);
    await waitForConnected(page);
    const before = (await apiCall(env.server, 'GET', '/api/v1/analytics/summary?window=24h', { token: user.token })).body.tasks.by_status.completed ?? 0;
    const res = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: `newest counts ${Date.now()}` }, expect: 202 });
    await waitTaskStatus(page, { server: env.server, token: user.token, root: '#recent-tasks', id: res.body.task_id });
    await page.waitForFunction((n) => Number(document.getElementById('stat-completed').textContent) === n, before + 1, { timeout: 10000 });
    releaseFirst();
    await firstAnswered;
    await new Promise((r) => setTimeout(r, 500)); // the page has had the old answer
    assert.equal(Number(await page.textContent('#stat-completed')), before + 1);
    assert.ok(summaries >= 2);
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  // The form's submit answer can come after the task already finished, and the page's own
  // fetch of the task (started by the first task_update) after that: the row the submit
  // answer drew as queued must still end as completed.
  it('keeps the updates that arrived while its submit was answered', { timeout: 60000 }, async () => {
    const context = await signedInContext(env.browser, env.server, user.token);
    const [drawn, submitted] = deferred();
    await context.route(/\/api\/v1\/tasks\/submit$/, async (route) => {
      const answer = await route.fetch();
      const id = (await answer.json()).task_id;
      await untilTaskMovedOn(env.server, user.token, id); // the updates reach the page first
      await route.fulfill({ response: answer });
      submitted(id);
    });
    let fetchedOne = 0;
    await context.route(/\/api\/v1\/tasks\/[0-9a-f-]{36}$/, async (route) => {
      fetchedOne += 1;
      await drawn;
      await new Promise((r) => setTimeout(r, 500)); // the submit answer's row is drawn first
      await route.continue();
    });
    const page = await context.newPage();
    await page.goto(`${env.server.url}/tasks.html`);
    await waitForConnected(page);
    await page.fill('#task-query', `late submit ${Date.now()}`);
    await page.click('#task-submit');
    const id = await drawn;
    await waitTaskStatus(page, { server: env.server, token: user.token, id, timeout: 5000 });
    assert.ok(fetchedOne >= 1, 'the page fetched the task its first update announced');
    assert.equal(await page.isHidden(`#task-list [data-task-id="${id}"] .task-cancel`), true);
    assert.deepEqual(context.problems, []);
    await context.close();
  });
});
