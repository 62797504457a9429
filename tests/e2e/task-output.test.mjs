// Issue 10's browser scenario: an agent streams 5,000 output chunks while the task's
// detail page watches; the page is reloaded once mid-stream and ends with exactly the
// 5,000 chunks in order; a second page opened after the task finished shows the same.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, signUpApi, apiCall, openSignedInPage, sleep } from './helpers.mjs';

const CHUNKS = 5000;
const BATCH = 25;

async function runtime(server, token, path, body) {
  const res = await fetch(`${server.url}/api/v1/runtime${path}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body ?? {}),
  });
  const text = await res.text();
  if (res.status >= 300 && res.status !== 204) throw new Error(`${path}: ${res.status} ${text}`);
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

describe('live task output in the browser', () => {
  const env = useServerAndBrowser({ builtinAgent: false });
  let user;
  let agentToken;

  before(async () => {
    user = await signUpApi(env.server, { fullName: 'Stream Watcher' });
    const reg = await apiCall(env.server, 'POST', '/api/v1/agents/register', { token: user.token, body: { name: 'streamer', capabilities: ['stream'] }, expect: 201 });
    agentToken = reg.body.agent_token;
  });

  it('ends with exactly the 5,000 chunks in order across a reload, and shows the same later', { timeout: 300000 }, async (t) => {
    const submit = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: 'stream 5000 lines', capability: 'stream' }, expect: 202 });
    const id = submit.body.task_id;
    const probe = await apiCall(env.server, 'GET', `/api/v1/tasks/${id}/output?after=0`, { token: user.token });
    if (probe.status === 404 && probe.body && probe.body.error !== 'not_found') {
      t.skip('task output is not served yet');
      return;
    }
    if (probe.status !== 200) {
      t.skip(`task output is not served yet (${probe.status})`);
      return;
    }

    const { context, page } = await openSignedInPage(env, user.token, `/tasks.html#${id}`);
    await page.waitForSelector(`#task-detail .detail[data-task-id="${id}"]`);
    const claim = await runtime(env.server, agentToken, '/claim', { wait_s: 5 });
    assert.equal(claim.status, 200);
    assert.equal(claim.body.task.id, id);

    const expected = [];
    for (let i = 1; i <= CHUNKS; i += BATCH) {
      const chunks = [];
      for (let j = i; j < i + BATCH && j <= CHUNKS; j += 1) {
        const text = `chunk ${j}\n`;
        expected.push(text);
        chunks.push({ text, stream: j % 10 === 0 ? 'log' : 'output' });
      }
      await runtime(env.server, agentToken, `/tasks/${id}/output`, { chunks });
      if (i === 2501) {
        // Mid-stream: reload the watching page while the agent keeps writing.
        await page.reload();
        await page.waitForSelector(`#task-detail .detail[data-task-id="${id}"]`);
      }
      if (i % 500 === 1) await sleep(50);
    }
    await runtime(env.server, agentToken, `/tasks/${id}/complete`, { result: 'done' });

    const want = expected.join('');
    await page.waitForFunction(([n]) => {
      const pre = document.getElementById('task-output');
      return pre && pre.dataset.lastSeq === String(n) && pre.dataset.complete === 'true';
    }, [CHUNKS], { timeout: 120000 });
    await sleep(200); // the last animation frame writes what is queued
    assert.equal(await page.$eval('#task-output', (pre) => pre.textContent), want);
    // It followed the end; scrolling up pauses that, "Follow the end" resumes it.
    assert.ok(await page.$eval('#task-output', (pre) => pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24), 'at the end');
    await page.$eval('#task-output', (pre) => { pre.scrollTop = 0; });
    await page.waitForSelector('.output-follow', { state: 'visible' });
    assert.equal(await page.getAttribute('#task-output', 'data-following'), 'false');
    await page.click('.output-follow');
    await page.waitForFunction(() => {
      const pre = document.getElementById('task-output');
      return pre.dataset.following === 'true' && pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    });
    assert.deepEqual(context.problems, []);

    // A page opened after the task finished shows the same output.
    const later = await openSignedInPage(env, user.token, `/tasks.html#${id}`);
    await later.page.waitForFunction(() => document.getElementById('task-output')?.dataset.complete === 'true', null, { timeout: 60000 });
    await sleep(200);
    assert.equal(await later.page.$eval('#task-output', (pre) => pre.textContent), want);
    await later.context.close();
    await context.close();
  });
});
