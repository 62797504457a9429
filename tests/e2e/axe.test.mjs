// axe-core on every page, in both themes, at desktop and phone size: no serious or
// critical violation. Each page is also photographed in both themes (the README's
// screenshots, refreshed with E2E_UPDATE_SCREENSHOTS=1).
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { useServerAndBrowser, signUpApi, apiCall, signedInContext, waitForConnected, screenshot, sleep } from './helpers.mjs';

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const SIGNED_IN = ['dashboard', 'tasks', 'task-detail', 'agents', 'analytics', 'settings', 'api-keys'];
const PUBLIC = ['index', 'login', 'signup', 'not-found'];
const SIZES = { desktop: { width: 1440, height: 900 }, phone: { width: 390, height: 844 } };

describe('accessibility (axe-core) and screenshots', () => {
  const env = useServerAndBrowser();
  let user;
  let taskId;

  before(async () => {
    user = await signUpApi(env.server, { fullName: 'Ada Lovelace' });
    // Something to show: finished tasks, a queued one, an agent, a key, an alert.
    for (const query of ['Summarise the release notes', 'Translate the README into French', 'Count the words in chapter 3']) {
      const res = await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query }, expect: 202 });
      taskId = res.body.task_id;
    }
    await apiCall(env.server, 'POST', '/api/v1/tasks/submit', { token: user.token, body: { query: 'Render the video (needs a GPU agent)', capability: 'gpu' }, expect: 202 });
    await apiCall(env.server, 'POST', '/api/v1/agents/register', { token: user.token, body: { name: 'gpu-worker', description: 'Renders on the GPU box', capabilities: ['gpu'] }, expect: 201 });
    await apiCall(env.server, 'POST', '/api/v1/api-keys', { token: user.token, body: { name: 'ci-pipeline' }, expect: 201 });
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      const t = await apiCall(env.server, 'GET', `/api/v1/tasks/${taskId}`, { token: user.token });
      if ((t.body.task || t.body).status === 'completed') break;
      await sleep(300);
    }
  });

  for (const theme of ['dark', 'light']) {
    for (const [sizeName, viewport] of Object.entries(SIZES)) {
      it(`has no serious or critical violation, ${theme} theme, ${sizeName}`, { timeout: 180000 }, async () => {
        // bypassCSP: only to inject axe itself (the pages' policy forbids inline scripts).
        const context = await signedInContext(env.browser, env.server, user.token, { viewport, colorScheme: theme, bypassCSP: true });
        const page = await context.newPage();
        const failures = [];
        for (const name of [...SIGNED_IN, ...PUBLIC]) {
          let path = `/${name}.html`;
          if (name === 'index') path = '/';
          if (name === 'task-detail') path = `/tasks.html#${taskId}`;
          if (name === 'not-found') path = '/no-such-page';
          await page.goto(`${env.server.url}${path}`);
          if (SIGNED_IN.includes(name)) {
            await waitForConnected(page);
            await page.waitForLoadState('networkidle');
          }
          if (name === 'task-detail') await page.waitForSelector('#task-detail .detail');
          if (name === 'analytics') await page.waitForSelector('#chart-throughput svg, #chart-throughput .empty');
          await sleep(300); // transitions settle
          await page.addScriptTag({ content: AXE });
          const result = await page.evaluate(async () => {
            const r = await window.axe.run(document, { resultTypes: ['violations'] });
            return r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
              .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map((n) => `${n.target.join(' ')}: ${n.failureSummary}`) }));
          });
          if (result.length) failures.push({ page: name, violations: result });
          if (sizeName === 'desktop') await screenshot(page, `${name}-${theme}`);
        }
        assert.deepEqual(failures, [], JSON.stringify(failures, null, 2));
        assert.deepEqual(context.problems, []);
        await context.close();
      });
    }
  }
});
