// The page's reactions to the real-time client (/static/js/websocket.js), written once
// for every signed-in page: the guide's status indicator, the "live updates paused"
// banner, the toasts for task, agent and system messages, the task rows and agent
// cards patched in place, and sign-in when the session is gone. websocket.js only
// connects and dispatches `zs:*` events; everything visible happens here.
import { toast } from './toast.js';
import { patchTaskRow } from './task-view.js';
import { cssEscape } from './dom.js';
import { goToLogin } from './api.js';

const DOT = ['bg-yellow-500', 'bg-green-500', 'bg-red-500', 'bg-orange-500', 'animate-pulse'];
const toasted = new Set();

function shorten(text, n) {
  const s = String(text ?? '');
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

/** Draws the guide's indicator (#ws-status) and the paused banner for a zs:status. */
export function drawStatus(status) {
  const root = document.getElementById('ws-status');
  const dot = document.getElementById('ws-status-indicator');
  const text = document.getElementById('ws-status-text');
  if (!root || !dot || !text) return;
  dot.classList.remove(...DOT);
  let label;
  let title = '';
  switch (status.state) {
    case 'connected':
      dot.classList.add('bg-green-500');
      label = 'Connected';
      title = status.transport === 'sse' ? 'Live updates over Server-Sent Events (WebSocket unavailable)' : 'Live updates over WebSocket';
      break;
    case 'reconnecting':
      dot.classList.add('bg-orange-500', 'animate-pulse');
      label = `Reconnecting... (${Math.min(status.attempt, status.maxAttempts)}/${status.maxAttempts})`;
      break;
    case 'disconnected':
    case 'stopped':
      dot.classList.add('bg-red-500');
      label = 'Disconnected';
      title = 'Live updates are paused; retrying in the background';
      break;
    default:
      dot.classList.add('bg-yellow-500', 'animate-pulse');
      label = 'Connecting...';
  }
  text.textContent = label;
  root.dataset.state = status.state;
  root.dataset.transport = status.transport || '';
  if (title) root.title = title; else root.removeAttribute('title');
  root.classList.remove('opacity-0');
  root.classList.add('opacity-100');
  root.setAttribute('role', 'status');
  root.setAttribute('aria-live', 'polite');

  let retry = document.getElementById('ws-status-retry');
  if (status.state === 'disconnected') {
    if (!retry) {
      retry = document.createElement('button');
      retry.type = 'button';
      retry.id = 'ws-status-retry';
      retry.className = 'ws-retry';
      retry.textContent = 'Retry';
      retry.addEventListener('click', () => window.zsWebSocket && window.zsWebSocket.reconnectNow('retry button'));
      text.parentNode.appendChild(retry);
    }
  } else if (retry) {
    retry.remove();
  }

  const banner = document.getElementById('live-banner');
  if (banner) {
    const paused = Boolean(status.paused) && status.state !== 'connected';
    if (paused && banner.hidden) {
      banner.textContent = 'Live updates are paused: the server cannot be reached. What you see may be out of date; the page reconnects by itself.';
    }
    banner.hidden = !paused;
  }
}

function onTaskUpdate(data) {
  if (!data || !data.task_id) return;
  for (const row of document.querySelectorAll(`[data-task-id="${cssEscape(data.task_id)}"]`)) patchTaskRow(row, data);
  if (data.status !== 'completed' && data.status !== 'failed') return;
  const key = `${data.task_id}:${data.status}`;
  if (toasted.has(key)) return;
  toasted.add(key);
  const query = shorten(data.query || data.task_id, 80);
  if (data.status === 'completed') toast(query, 'success', { title: 'Task completed' });
  else toast(query + (data.error ? ` — ${shorten(data.error, 160)}` : ''), 'error', { title: 'Task failed' });
}

function onAgentUpdate(data) {
  if (!data) return;
  if (data.agent_id && data.status) {
    for (const card of document.querySelectorAll(`[data-agent-id="${cssEscape(data.agent_id)}"]`)) {
      card.dataset.agentStatus = data.status;
      for (const badge of card.querySelectorAll('[data-agent-status-badge]')) {
        badge.dataset.status = data.status;
        badge.textContent = data.status;
      }
    }
  }
  const name = data.name || 'An agent';
  let text;
  if (data.action === 'registered') text = `${name} was registered`;
  else if (data.action === 'deleted') text = `${name} was removed`;
  else if (data.status) text = `${name} is ${data.status}`;
  else text = `${name} was updated`;
  toast(text, 'info', { title: 'Agent', duration: 5000 });
}

function onSystem(data) {
  if (!data) return;
  const security = data.category === 'security';
  toast(data.message, data.level, { title: security ? 'Security alert' : null, category: data.category });
}

let started = false;

/** Wires the reactions once per page (app.js calls it). */
export function startRealtimeUi() {
  if (started) return;
  started = true;
  const on = (type, fn) => document.addEventListener(`zs:${type}`, (event) => fn(event.detail, event.message));
  on('status', drawStatus);
  on('task_update', onTaskUpdate);
  on('agent_update', onAgentUpdate);
  on('system', onSystem);
  on('unauthorized', () => goToLogin());
  const client = window.zsWebSocket;
  if (client) {
    // Events sent before this module ran (the client starts first).
    if (client.signedOut) goToLogin();
    else drawStatus(client.status());
  }
}
