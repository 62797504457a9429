// The task detail as a place: its own URL, in view from any row (the 40th on a phone),
// focus moved to it, Escape and Back close it, a fresh tab opens it from the URL, the
// reason a queued task waits, retry, and toasts that leave its controls uncovered.
// Plus the list: search, filters, paging with next_cursor, the admin "all users"
// switch, and the submit form's agent, attempts and start time.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, signUpApi, apiCall, signedInContext, waitForConnected, screenshot } from './helpers.mjs';

describe('task detail and the tasks list', () => {
  // No built-in agent: tasks stay queued, so their state is known.
  const env = useServerAndBrowser({ builtinAgent: false });
  let admin;
  let user;
  const ids = [];

  before(async () => {
    admin = await signUpApi(env.server, { fullName: 'Admin' });
    user = await signUpApi(env.server, { fullName: 'Phone User' });
    // 55 tasks: more than one page of 50, and a 40th row far below the first screen.
    for (let i = 1; i <= 55; i += 1) {
      const res = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', {
        token: user.token,
        body: { query: `Task number ${i}${i === 7 ? ' needle' : ''}`, capability: i % 2 ? 'odd' : 'even' },
        expect: 202,
      });
      ids.push(res.body.task_id);
    }
  });

  it('opens the 40th row\'s detail in view on a phone, with focus, URL, Escape and Back', { timeout: 90000 }, async () => {
    const context = await signedInContext(env.browser, env.server, user.token, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    const page = await context.newPage();
    await page.goto(`${env.server.url}/tasks.html`);
    await waitForConnected(page);
    await page.waitForFunction(() => document.querySelectorAll('#task-list [data-task-id]').length >= 50);
    const row = page.locator('#task-list [data-task-id]').nth(39);
    const id = await row.getAttribute('data-task-id');
    await row.locator('.task-details').click();
    await page.waitForSelector(`#task-detail .detail[data-task-id="${id}"]`);
    assert.equal(new URL(page.url()).hash, `#${id}`);
    const box = await page.locator('#detail-title').boundingBox();
    assert.ok(box && box.y >= 0 && box.y + box.height <= 844, `detail title in view: ${JSON.stringify(box)}`);
    assert.equal(await page.evaluate(() => document.activeElement && document.activeElement.id), 'detail-title');
    // The close button is in view and nothing covers it.
    const covered = await page.evaluate(() => {
      const b = document.getElementById('detail-close').getBoundingClientRect();
      const hit = document.elementFromPoint(b.x + b.width / 2, b.y + b.height / 2);
      return hit && hit.id;
    });
    assert.equal(covered, 'detail-close');
    await screenshot(page, 'task-detail-phone');

    await page.keyboard.press('Escape');
    await page.waitForSelector('#task-detail', { state: 'hidden' });
    assert.equal(new URL(page.url()).hash, '');

    // Back closes it too.
    await row.locator('.task-details').click();
    await page.waitForSelector('#task-detail', { state: 'visible' });
    await page.goBack();
    await page.waitForSelector('#task-detail', { state: 'hidden' });
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('shows a task\'s detail from its URL in a fresh tab, with why it waits', { timeout: 60000 }, async () => {
    const id = ids[10];
    const context = await signedInContext(env.browser, env.server, user.token);
    const page = await context.newPage();
    await page.goto(`${env.server.url}/tasks.html#${id}`);
    await page.waitForSelector(`#task-detail .detail[data-task-id="${id}"]`);
    assert.equal(await page.textContent('#task-detail .detail-query'), 'Task number 11');
    const status = await apiCall(env.server, 'GET', `/api/v1/tasks/${id}/status`, { token: user.token });
    if (status.body && 'waiting_for' in status.body) {
      // No agent at all offers "odd": the page says so in words.
      await page.waitForSelector('#task-waiting[data-waiting-for="no_agent_online"]');
      assert.match(await page.textContent('#task-waiting'), /No online agent you may use offers the capability “odd”/);
    }
    // Close by the button: no history entry was made here, the hash is dropped.
    await page.click('#detail-close');
    await page.waitForSelector('#task-detail', { state: 'hidden' });
    assert.equal(new URL(page.url()).hash, '');
    await context.close();
  });

  it('toasts never cover the detail\'s controls', { timeout: 60000 }, async () => {
    for (const size of [{ width: 1440, height: 900 }, { width: 390, height: 844 }]) {
      const context = await signedInContext(env.browser, env.server, user.token, { viewport: size });
      const page = await context.newPage();
      await page.goto(`${env.server.url}/tasks.html#${ids[3]}`);
      await waitForConnected(page);
      await page.waitForSelector('#detail-cancel');
      // Three toasts at once (a burst of alerts).
      for (let i = 0; i < 3; i += 1) {
        await apiCall(env.server, 'POST', `/api/v1/ws/user/${user.user.id}`, {
          token: admin.token, body: { type: 'system', data: { message: `Alert ${i} with a rather long text that wraps over two lines`, level: 'warning' } }, expect: 202,
        });
      }
      await page.waitForFunction(() => document.querySelectorAll('#toasts .toast').length === 3);
      const hits = await page.evaluate(() => ['detail-close', 'detail-cancel'].map((id) => {
        const b = document.getElementById(id).getBoundingClientRect();
        const hit = document.elementFromPoint(b.x + b.width / 2, b.y + b.height / 2);
        return hit && (hit.id || hit.className);
      }));
      assert.deepEqual(hits, ['detail-close', 'detail-cancel'], `at ${size.width}px`);
      await context.close();
    }
  });

  it('pages with next_cursor, filters by status, and lets an admin see all users', { timeout: 90000 }, async () => {
    const context = await signedInContext(env.browser, env.server, user.token);
    const page = await context.newPage();
    await page.goto(`${env.server.url}/tasks.html`);
    await waitForConnected(page);
    await page.waitForFunction(() => document.querySelectorAll('#task-list [data-task-id]').length === 50);
    // Paging: the rest after Load more, no duplicates.
    await page.click('#load-more');
    await page.waitForFunction(() => document.querySelectorAll('#task-list [data-task-id]').length === 55);
    assert.equal(await page.isHidden('#load-more'), true);
    const shown = await page.$$eval('#task-list [data-task-id]', (rows) => rows.map((r) => r.dataset.taskId));
    assert.equal(new Set(shown).size, 55);
    // Status filter.
    await page.selectOption('#status-filter', 'completed');
    await page.waitForSelector('#tasks-empty:has-text("No completed tasks")');
    // A non-admin has no "all users" switch.
    assert.equal(await page.isHidden('#all-users-field'), true);
    await context.close();

    // The admin sees the user's tasks only with the switch.
    const adminContext = await signedInContext(env.browser, env.server, admin.token);
    const adminPage = await adminContext.newPage();
    await adminPage.goto(`${env.server.url}/tasks.html`);
    await waitForConnected(adminPage);
    await adminPage.waitForSelector('#tasks-empty:has-text("No tasks yet")');
    await adminPage.check('#filter-all');
    await adminPage.waitForFunction(() => document.querySelectorAll('#task-list [data-task-id]').length === 50);
    assert.equal(await adminPage.textContent('#list-title'), 'Tasks of all users');
    await adminContext.close();
  });

  it('searches the queries and filters by capability and agent', { timeout: 60000 }, async () => {
    const context = await signedInContext(env.browser, env.server, user.token);
    const page = await context.newPage();
    await page.goto(`${env.server.url}/tasks.html`);
    await waitForConnected(page);
    await page.waitForFunction(() => document.querySelectorAll('#task-list [data-task-id]').length === 50);
    await page.fill('#filter-q', 'needle');
    await page.waitForFunction(() => document.querySelectorAll('#task-list [data-task-id]').length === 1, null, { timeout: 15000 });
    assert.equal(await page.textContent('#task-list .task-query'), 'Task number 7 needle');
    await page.fill('#filter-q', '');
    await page.fill('#filter-capability', 'even');
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll('#task-list [data-task-id]')];
      return rows.length === 27 && rows.every((r) => /[02468]$/.test(r.querySelector('.task-query').textContent));
    }, null, { timeout: 15000 });
    await page.fill('#filter-capability', '');
    // No task ran on any agent here: filtered by one, the list is empty.
    const reg = await apiCall(env.server, 'POST', '/api/v1/agents/register', { token: user.token, body: { name: 'filter-agent', capabilities: ['none'] }, expect: 201 });
    await page.reload();
    await waitForConnected(page);
    await page.waitForSelector(`#filter-agent option[value="${reg.body.agent.id}"]`, { state: 'attached' });
    await page.selectOption('#filter-agent', reg.body.agent.id);
    await page.waitForSelector('#tasks-empty:has-text("No tasks match these filters")', { timeout: 15000 });
    await context.close();
  });

  it('submits with an agent, attempts and a start time', { timeout: 60000 }, async () => {
    const reg = await apiCall(env.server, 'POST', '/api/v1/agents/register', { token: user.token, body: { name: 'Picker target', capabilities: ['odd'] }, expect: 201 });
    const context = await signedInContext(env.browser, env.server, user.token);
    const page = await context.newPage();
    await page.goto(`${env.server.url}/tasks.html`);
    await waitForConnected(page);
    await page.waitForSelector(`#task-agent option[value="${reg.body.agent.id}"]`, { state: 'attached' });
    assert.match(await page.textContent('#capability-help'), /capability names the kind of work/);
    await page.fill('#task-query', 'Picked agent, later');
    await page.fill('#task-capability', 'odd');
    await page.selectOption('#task-agent', reg.body.agent.id);
    await page.fill('#task-attempts', '5');
    const later = new Date(Date.now() + 2 * 3600 * 1000);
    const local = new Date(later.getTime() - later.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
    await page.fill('#task-run-at', local);
    await page.click('#task-submit');
    const row = page.locator('#task-list [data-task-id]', { hasText: 'Picked agent, later' });
    await row.waitFor();
    const id = await row.getAttribute('data-task-id');
    const task = (await apiCall(env.server, 'GET', `/api/v1/tasks/${id}`, { token: user.token, expect: 200 })).body;
    const t = task.task || task;
    assert.equal(t.agent_id, reg.body.agent.id);
    assert.equal(t.max_attempts, 5);
    assert.ok(t.run_at && Math.abs(new Date(t.run_at) - later) < 120000, `run_at ${t.run_at}`);
    // The detail says it is scheduled.
    await row.locator('.task-details').click();
    await page.waitForSelector('#task-detail .detail-list dt:has-text("Starts at")');
    await context.close();
  });

  it('retries a finished task from its detail', { timeout: 60000 }, async () => {
    const id = ids[20];
    await apiCall(env.server, 'POST', `/api/v1/tasks/${id}/cancel`, { token: user.token, expect: 200 });
    const context = await signedInContext(env.browser, env.server, user.token);
    const page = await context.newPage();
    await page.goto(`${env.server.url}/tasks.html#${id}`);
    await waitForConnected(page);
    await page.waitForSelector('#detail-retry');
    await page.click('#detail-retry');
    await page.waitForFunction((old) => location.hash.length > 1 && location.hash !== `#${old}`, id);
    const newId = new URL(page.url()).hash.slice(1);
    await page.waitForSelector(`#task-detail .detail[data-task-id="${newId}"] [data-status="queued"]`);
    assert.equal(await page.textContent('#task-detail .detail-query'), 'Task number 21');
    await context.close();
  });
});
