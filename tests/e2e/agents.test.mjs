// Registering an agent from the agents page, running the reference agent with
// the token shown once, and seeing it come online live.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, openSignedInPage, signUpApi, apiCall, screenshot, spawnAgent, killProc } from './helpers.mjs';

describe('agents page', () => {
  const env = useServerAndBrowser({ builtinAgent: false });
  let user;
  let agentProc;

  before(async () => {
    user = await signUpApi(env.server, { fullName: 'Agent Owner' });
  });
  after(async () => {
    await killProc(agentProc);
  });

  it('registers an agent, shows its token and command once, and shows it online live', { timeout: 120000 }, async () => {
    const { context, page } = await openSignedInPage(env, user.token, '/agents.html');
    await page.waitForSelector('#my-agents-empty:not([hidden])');
    await page.evaluate(() => { window.__sameDocument = true; });

    await page.fill('#agent-name', 'echo-agent');
    await page.fill('#agent-description', 'Answers with the query');
    await page.fill('#agent-capabilities', 'general, echo');
    await page.click('#agent-form button[type="submit"]');
    await page.waitForSelector('#agent-token-box:not([hidden])');
    const token = await page.inputValue('#agent-token');
    assert.match(token, /^zsa_/);
    const command = await page.inputValue('#agent-command');
    assert.equal(command, `zerostate agent run --server ${env.server.url} --token ${token} --exec "cat"`);
    const agentId = await page.getAttribute('#agent-token-box', 'data-registered-agent-id');
    assert.ok(agentId, 'the box knows the agent id');

    const card = page.locator(`#my-agents [data-agent-id="${agentId}"]`);
    await card.waitFor({ timeout: 10000 });
    assert.equal(await card.getAttribute('data-agent-status'), 'offline');
    await screenshot(page, 'agents-registered');

    agentProc = spawnAgent(env.server, token, 'cat');
    await page.waitForFunction((id) => {
      const c = document.querySelector(`#my-agents [data-agent-id="${id}"]`);
      return c && c.dataset.agentStatus === 'online' && c.querySelector('[data-status]').textContent.trim() === 'online';
    }, agentId, { timeout: 30000 }).catch((err) => {
      throw new Error(`${err.message}\nagent output:\n${agentProc.log()}`);
    });
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload happened');

    // The agent does real work: a task for its capability comes back as the query (cat).
    const query = `echo me ${Date.now()}`;
    const res = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query, capability: 'echo' }, expect: 202 });
    const deadline = Date.now() + 30000;
    let result;
    while (Date.now() < deadline) {
      result = await apiCall(env.server, 'GET', `/api/v1/tasks/${res.body.task_id}`, { token: user.token });
      if (['completed', 'failed'].includes(result.body.status)) break;
      await page.waitForTimeout(300);
    }
    assert.equal(result.body.status, 'completed', JSON.stringify(result.body));
    assert.equal(String(result.body.result).trim(), query);

    // Edit the agent from its card.
    await card.locator('button:has-text("Edit")').click();
    await card.locator('input[name="name"]').fill('echo-agent-renamed');
    await card.locator('button:has-text("Save")').click();
    await page.waitForFunction((id) => {
      const c = document.querySelector(`#my-agents [data-agent-id="${id}"] .agent-name`);
      return c && c.textContent === 'echo-agent-renamed';
    }, agentId, { timeout: 10000 });
    await screenshot(page, 'agents');

    // (Going offline after the process stops takes the server's OFFLINE_AFTER,
    // 60 s, plus a sweep: too slow to wait for here.)
    await killProc(agentProc);
    agentProc = null;

    // Delete (two clicks: no blocking confirm dialog).
    await card.locator('button:has-text("Delete")').click();
    await card.locator('button:has-text("Confirm delete")').click();
    await page.waitForSelector(`[data-agent-id="${agentId}"]`, { state: 'detached', timeout: 10000 });
    assert.deepEqual(context.dialogs, []);
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  let slow;
  it('shows an agent\'s running and recent tasks', { timeout: 120000 }, async () => {
    const reg = await apiCall(env.server, 'POST', '/api/v1/agents/register', { token: user.token, body: { name: 'slow-agent', capabilities: ['slow'] }, expect: 201 });
    slow = { id: reg.body.agent.id, token: reg.body.agent_token };
    const { context, page } = await openSignedInPage(env, user.token, '/agents.html');
    const card = page.locator(`[data-agent-id="${slow.id}"]`);
    await card.waitFor();
    agentProc = spawnAgent(env.server, slow.token, 'sleep 4; cat');
    await page.waitForFunction((id) => document.querySelector(`[data-agent-id="${id}"]`)?.dataset.agentStatus === 'online', slow.id, { timeout: 30000 });

    const res = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: 'slow work', capability: 'slow' }, expect: 202 });
    const taskId = res.body.task_id;
    await card.locator('summary').click();
    // Running now, as a link to the task's detail; then among the recent ones.
    await page.waitForFunction((id) => {
      const li = document.querySelector(`.agent-tasks-body li[data-task-id="${id}"]`);
      return li && li.closest('ul').previousElementSibling.textContent === 'Running now';
    }, taskId, { timeout: 30000 });
    assert.equal(await card.locator(`.agent-tasks-body li[data-task-id="${taskId}"] a`).getAttribute('href'), `/tasks.html#${taskId}`);
    await page.waitForFunction((id) => {
      const li = document.querySelector(`.agent-tasks-body li[data-task-id="${id}"]`);
      return li && li.closest('ul').previousElementSibling.textContent === 'Recent' && li.querySelector('[data-status]').dataset.status === 'completed';
    }, taskId, { timeout: 30000 });
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  it('shows an agent offline at once when it stops cleanly', { timeout: 60000 }, async () => {
    const { context, page } = await openSignedInPage(env, user.token, '/agents.html');
    await page.waitForFunction((id) => document.querySelector(`[data-agent-id="${id}"]`)?.dataset.agentStatus === 'online', slow.id, { timeout: 30000 });
    // A clean stop while it works (SIGTERM: the process hands its task back with
    // `release`): offline at once, not after the 60 s of silence.
    const res = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: 'interrupted work', capability: 'slow' }, expect: 202 });
    const deadline = Date.now() + 30000;
    for (;;) {
      const t = await apiCall(env.server, 'GET', `/api/v1/tasks/${res.body.task_id}`, { token: user.token, expect: 200 });
      if ((t.body.task || t.body).status === 'running') break;
      assert.ok(Date.now() < deadline, 'the agent took the task');
      await page.waitForTimeout(100);
    }
    await killProc(agentProc);
    agentProc = null;
    await page.waitForFunction((id) => document.querySelector(`[data-agent-id="${id}"]`)?.dataset.agentStatus === 'offline', slow.id, { timeout: 15000 });
    await context.close();
  });

  it('rotates an agent\'s token and lets the admin share it', { timeout: 60000 }, async () => {
    const { context, page } = await openSignedInPage(env, user.token, '/agents.html');
    const card = page.locator(`[data-agent-id="${slow.id}"]`);
    await card.waitFor();
    // Token rotation: the new token is shown once, the old one stops working.
    await card.locator('button:has-text("New token")').click();
    await card.locator('button:has-text("Confirm: old token stops")').click();
    await page.waitForFunction((old) => /^zsa_/.test(document.getElementById('agent-token').value) && document.getElementById('agent-token').value !== old, slow.token);
    const fresh = await page.inputValue('#agent-token');
    const claim = (token) => fetch(`${env.server.url}/api/v1/runtime/claim`, { method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }, body: '{"wait_s":0}' });
    assert.equal((await claim(slow.token)).status, 401);
    // The new one works (200 with the task handed back above, or 204: nothing to do).
    const freshStatus = (await claim(fresh)).status;
    assert.ok([200, 204].includes(freshStatus), `claim with the new token: ${freshStatus}`);

    // The admin's shared switch (the first account is the admin).
    await card.locator('input[data-shared-switch]').check();
    const deadline = Date.now() + 10000;
    let shared = false;
    while (!shared && Date.now() < deadline) {
      const got = await apiCall(env.server, 'GET', `/api/v1/agents/${slow.id}`, { token: user.token, expect: 200 });
      shared = (got.body.agent || got.body).shared === true;
      if (!shared) await page.waitForTimeout(200);
    }
    assert.ok(shared, 'the agent is shared');
    assert.deepEqual(context.problems, []);
    await context.close();
  });
});
