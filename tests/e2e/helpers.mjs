// Helpers for the browser tests: start the real server binary on a free port
// with its own data directory, create users through the API, launch Debian's
// chromium through playwright-core, and collect screenshots.
//
// With ZEROSTATE_E2E_CLUSTER=1 every "server" is a cluster instead: PostgreSQL, Redis,
// two nodes sharing them and nginx in front (scripts/cluster.sh, fresh database per
// test file), and the tests talk to nginx, so a page's connection and its API calls land
// on either node (scripts/test-e2e-cluster.sh runs the suite that way).
import { before, after } from 'node:test';
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, copyFileSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..');
export const BIN = process.env.ZEROSTATE_BIN || path.join(ROOT, 'target/debug/zerostate');
export const ARTIFACTS = path.join(here, 'artifacts');
export const SCREENSHOTS = path.join(ROOT, 'docs', 'screenshots');
/** Whether the tests run against a two-node cluster behind nginx. */
export const CLUSTER = process.env.ZEROSTATE_E2E_CLUSTER === '1';
const CLUSTER_SCRIPT = path.join(ROOT, 'scripts', 'cluster.sh');
/** Nodes per cluster (ZEROSTATE_E2E_CLUSTER_NODES, default 2). */
const CLUSTER_NODES = process.env.ZEROSTATE_E2E_CLUSTER_NODES || '2';

const LISTENING = /zerostate listening on (http:\/\/127\.0\.0\.1:(\d+))/;

/** Spawns `zerostate serve` and resolves once it printed its address. */
function spawnServe({ addr, dataDir, builtinAgent, extraArgs = [] }) {
  const args = ['serve', '--addr', addr, '--data-dir', dataDir, ...extraArgs];
  if (!builtinAgent) args.push('--no-builtin-agent');
  const proc = spawn(BIN, args, {
    cwd: ROOT,
    // Tests sign up many accounts from one address: no sign-up limit unless a test sets one.
    env: { ZEROSTATE_REGISTRATION_LIMIT: '0', ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`server did not print its address within 30 s; output:\n${log}`));
    }, 30000);
    const onData = (chunk) => {
      log += chunk.toString();
      const m = LISTENING.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, url: m[1], port: Number(m[2]), log: () => log });
      }
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', (c) => { log += c.toString(); if (process.env.E2E_SERVER_LOG) process.stderr.write(c); });
    proc.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? signal}) before listening; output:\n${log}`));
    });
  });
}

function waitExit(proc, ms = 10000) {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => { proc.kill('SIGKILL'); }, ms);
    proc.once('exit', () => { clearTimeout(t); resolve(); });
  });
}

/**
 * Starts a server with a fresh (or the given) data directory on a free port.
 * Returns {url, port, dataDir, proc, stop(), restart()} — restart() starts it
 * again on the same port and data directory.
 */
export async function startServer({ dataDir, builtinAgent = true, extraArgs = [] } = {}) {
  if (CLUSTER) return startCluster({ dataDir, builtinAgent, extraArgs });
  const ownDir = !dataDir;
  const dir = dataDir || mkdtempSync(path.join(tmpdir(), 'zs-e2e-'));
  let current = await spawnServe({ addr: '127.0.0.1:0', dataDir: dir, builtinAgent, extraArgs });
  const server = {
    url: current.url,
    port: current.port,
    dataDir: dir,
    get proc() { return current.proc; },
    log: () => current.log(),
    /** Stops the server (SIGTERM, then SIGKILL after 10 s). */
    async stop() {
      if (!current) return;
      current.proc.kill('SIGTERM');
      await waitExit(current.proc);
    },
    /** Starts the server again on the same port with the same data. */
    async restart() {
      await server.stop();
      let lastErr;
      // The port may linger for a moment after the old process exits.
      for (let i = 0; i < 20; i += 1) {
        try {
          current = await spawnServe({ addr: `127.0.0.1:${server.port}`, dataDir: dir, builtinAgent, extraArgs });
          return server;
        } catch (err) {
          lastErr = err;
          await sleep(250);
        }
      }
      throw lastErr;
    },
    /** Stops the server and removes its data directory (if we created it). */
    async dispose() {
      await server.stop();
      if (ownDir) rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}

/** Runs scripts/cluster.sh with `args`; resolves with its stdout, rejects with its output. */
function clusterScript(args, timeoutMs = 180000) {
  return new Promise((resolve, reject) => {
    execFile(CLUSTER_SCRIPT, args, {
      cwd: ROOT,
      timeout: timeoutMs,
      // As for one server: no sign-up limit unless a test sets one.
      env: { ZEROSTATE_REGISTRATION_LIMIT: '0', ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    }, (err, stdout, stderr) => {
      if (err) reject(new Error(`cluster.sh ${args.join(' ')} failed: ${err.message}\n${stdout}${stderr}`));
      else resolve(stdout);
    });
  });
}

/**
 * The cluster twin of startServer: two nodes (ZEROSTATE_E2E_CLUSTER_NODES) behind nginx with a fresh database, the
 * same interface ({url, port, dataDir, stop(), restart(), dispose(), log()}). `url` is
 * nginx's; stop() stops both nodes (the service is down, nginx answers 502), restart()
 * starts them again on their ports with the same database.
 */
async function startCluster({ dataDir, builtinAgent, extraArgs }) {
  const ownDir = !dataDir;
  const dir = dataDir || mkdtempSync(path.join(tmpdir(), 'zs-e2e-cluster-'));
  const serveArgs = [...extraArgs];
  if (!builtinAgent) serveArgs.push('--no-builtin-agent');
  let out;
  try {
    out = await clusterScript(['start', '--dir', dir, '--nodes', CLUSTER_NODES, '--bin', BIN, '--', ...serveArgs]);
  } catch (err) {
    // The script stopped what it had started; its output (in err) has the logs' tails.
    if (ownDir) rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const m = /^ZEROSTATE_CLUSTER_URL=(http:\/\/127\.0\.0\.1:(\d+))$/m.exec(out);
  if (!m) throw new Error(`cluster.sh printed no URL:\n${out}`);
  let running = true;
  const server = {
    url: m[1],
    port: Number(m[2]),
    dataDir: dir,
    cluster: true,
    /** The nodes' logs, one after the other. */
    log: () => readdirSync(dir).filter((d) => d.startsWith('node')).sort().map((d) => {
      let text = '';
      try { text = readFileSync(path.join(dir, d, 'server.log'), 'utf8'); } catch { /* not started */ }
      return `---- ${d}\n${text}`;
    }).join('\n'),
    /** Stops both nodes (SIGTERM); nginx, PostgreSQL and Redis keep running. */
    async stop() {
      if (!running) return;
      await clusterScript(['stop-nodes', '--dir', dir]);
      running = false;
    },
    /**
     * Starts the nodes again on the same ports with the same database, and returns once
     * nginx passes requests to them again: while the nodes were down, each refused
     * connection made nginx skip that node for its `fail_timeout` (1 s), so a request
     * in the first second after the start can still get nginx's 502.
     */
    async restart() {
      await server.stop();
      await clusterScript(['start-nodes', '--dir', dir]);
      running = true;
      const deadline = Date.now() + 30000;
      for (;;) {
        const ok = await fetch(`${server.url}/health`).then((r) => r.ok, () => false);
        if (ok) break;
        if (Date.now() > deadline) throw new Error(`the cluster did not answer through nginx after a restart:\n${server.log()}`);
        await sleep(100);
      }
      // Every nginx worker keeps its own marks; they expire 1 s after the last refusal.
      await sleep(1100);
      return server;
    },
    /** Stops everything and removes the directory (if we created it). */
    async dispose() {
      await clusterScript(['stop', '--dir', dir, ...(ownDir ? ['--rm'] : [])]);
      running = false;
    },
  };
  return server;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let counter = 0;
/** A unique email for this run. */
export function uniqueEmail(prefix = 'user') {
  counter += 1;
  return `${prefix}-${Date.now().toString(36)}-${counter}@example.com`;
}

/** Calls the API with fetch; throws with the body on an unexpected status. */
export async function apiCall(server, method, pathname, { token, body, expect } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(server.url + pathname, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = text; }
  if (expect !== undefined && res.status !== expect) {
    throw new Error(`${method} ${pathname}: expected ${expect}, got ${res.status}: ${text}`);
  }
  return { status: res.status, body: json, headers: res.headers };
}

/** Registers a user through the API: {token, user, email, password}. The first account is admin. */
export async function signUpApi(server, { email = uniqueEmail(), password = 'correct horse battery', fullName = 'Test User' } = {}) {
  const { body } = await apiCall(server, 'POST', '/api/v1/users/register', {
    body: { email, password, full_name: fullName },
    expect: 201,
  });
  return { token: body.token, user: body.user, email, password };
}

/** Launches chromium (Debian's by default) headless. */
export async function launchBrowser(extraArgs = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
      ...extraArgs,
    ],
  });
}

/**
 * A browser context signed in as the user with `token` (the zs_session cookie),
 * with console errors and page errors collected in `context.problems`.
 */
export async function signedInContext(browser, server, token, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...options });
  if (token) await context.addCookies([{ name: 'zs_session', value: token, url: server.url }]);
  watchContext(context);
  return context;
}

/** Collects page errors and dialogs of every page of a context. */
export function watchContext(context) {
  context.problems = [];
  context.dialogs = [];
  context.on('page', (page) => watchPage(page, context));
  return context;
}

export function watchPage(page, context) {
  page.on('pageerror', (err) => context.problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && /Content Security Policy|Uncaught|TypeError|ReferenceError|SyntaxError/.test(msg.text())) {
      context.problems.push(`console: ${msg.text()}`);
    }
  });
  page.on('dialog', (dialog) => {
    context.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
}

/** Reads the visible text of the status indicator. */
export async function statusText(page) {
  return (await page.textContent('#ws-status-text')).trim();
}

/** Waits until the status indicator says exactly `text` (default "Connected"). */
export async function waitForConnected(page, timeout = 20000) {
  await page.waitForFunction(() => {
    const t = document.getElementById('ws-status-text');
    return t && t.textContent.trim() === 'Connected';
  }, null, { timeout });
}

/**
 * Full-page screenshot into tests/e2e/artifacts/<name>.png; with E2E_UPDATE_SCREENSHOTS=1
 * the README's ones (every page in both themes: names ending in -dark or -light, taken
 * by axe.test.mjs) also into docs/screenshots/<name>.png.
 */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  // From the top: a scrolled page would show its sticky header in the middle.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: file, fullPage: true });
  if (process.env.E2E_UPDATE_SCREENSHOTS === '1' && /-(dark|light)$/.test(name)) {
    mkdirSync(SCREENSHOTS, { recursive: true });
    copyFileSync(file, path.join(SCREENSHOTS, `${name}.png`));
  }
  return file;
}

/** Spawns the reference agent process; returns the child (kill it in after()). */
export function spawnAgent(server, token, exec = 'cat') {
  const proc = spawn(BIN, ['agent', 'run', '--server', server.url, '--token', token, '--exec', exec], {
    cwd: ROOT,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  proc.stdout.on('data', (c) => { log += c; });
  proc.stderr.on('data', (c) => { log += c; });
  proc.log = () => log;
  return proc;
}

/** Kills a child process and waits for it. */
export async function killProc(proc) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill('SIGTERM');
  await waitExit(proc, 5000);
}

/**
 * Waits until the task row `[data-task-id=id]` inside `root` shows `status`.
 * On timeout the error carries the row's markup and the task as the API sees it,
 * to tell a page problem from a server problem.
 */
export async function waitTaskStatus(page, { server, token, root = '#task-list', id, status = 'completed', timeout = 60000 }) {
  try {
    await page.waitForFunction(([r, taskId, s]) => {
      const b = document.querySelector(`${r} [data-task-id="${taskId}"] [data-status]`);
      return b && b.dataset.status === s;
    }, [root, id, status], { timeout });
  } catch (err) {
    const row = await page.evaluate(([r, taskId]) => {
      const el = document.querySelector(`${r} [data-task-id="${taskId}"]`);
      return el ? el.outerHTML : '(no row)';
    }, [root, id]).catch(() => '(page gone)');
    let task = '(not fetched)';
    if (server && token) {
      const res = await apiCall(server, 'GET', `/api/v1/tasks/${id}`, { token }).catch((e) => ({ body: String(e) }));
      task = JSON.stringify(res.body);
    }
    throw new Error(`${err.message}\nwanted ${status}; row: ${row}\nAPI task: ${task}`);
  }
}

/** A promise and the function that resolves it: `const [done, finish] = deferred()`. */
export function deferred() {
  let resolve;
  const promise = new Promise((r) => { resolve = r; });
  return [promise, resolve];
}

/**
 * Waits (at most `timeout` ms) until the API says task `id` has `status`, then 500 ms
 * more, so that its task_updates have reached the open pages: for tests that hold an
 * answer back until the task has moved on.
 */
export async function untilTaskMovedOn(server, token, id, { status = 'completed', timeout = 30000 } = {}) {
  for (const deadline = Date.now() + timeout; Date.now() < deadline;) {
    const t = await apiCall(server, 'GET', `/api/v1/tasks/${id}`, { token });
    if (t.body.status === status) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 500));
}

/**
 * A fresh server and browser for one `describe` block: started in `before`, stopped in
 * `after`. The returned object's `server` and `browser` are set once `before` has run.
 */
export function useServerAndBrowser(serverOptions = {}) {
  const env = { server: undefined, browser: undefined };
  before(async () => {
    env.server = await startServer(serverOptions);
    env.browser = await launchBrowser();
  });
  after(async () => {
    await env.browser?.close();
    await env.server?.dispose();
  });
  return env;
}

/** Opens `pathname` in a new browser context signed in with `token`, once Connected. */
export async function openSignedInPage(env, token, pathname) {
  const context = await signedInContext(env.browser, env.server, token);
  const page = await context.newPage();
  await page.goto(`${env.server.url}${pathname}`);
  await waitForConnected(page);
  return { context, page };
}
