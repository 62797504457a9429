// /dashboard.html: counts by status, success rate, agents online, recent tasks
// and the user's notifications (from the server's message history), all live.
import { initPage, api, el, replaceChildren, formatRate, summaryRate, debounce, onRealtime, fetchNotifications, timeAgo, reportError, newestOnly, STALE } from '../app.js';
import { taskRow, findTaskRow, updatesDuringFetch } from '../task-view.js';

const RECENT = 10;
const list = document.getElementById('recent-tasks');
const empty = document.getElementById('recent-empty');

function setStat(id, value) {
  document.getElementById(id).textContent = value === null || value === undefined ? '—' : String(value);
}

const fetchSummary = newestOnly(() => api('/api/v1/analytics/summary?window=24h'));
const fetchRecent = newestOnly(() => api(`/api/v1/tasks?limit=${RECENT}`));
const fetchRecentNotifications = newestOnly(() => fetchNotifications(10));

async function loadSummary() {
  const s = await fetchSummary();
  if (s === STALE) return;
  const tasks = (s && s.tasks) || {};
  const by = tasks.by_status || {};
  setStat('stat-total', tasks.total ?? 0);
  for (const status of ['queued', 'running', 'completed', 'failed']) setStat(`stat-${status}`, by[status] ?? 0);
  setStat('stat-success-rate', summaryRate(tasks));
  const agents = (s && s.agents) || {};
  setStat('stat-agents-online', `${agents.online ?? 0} / ${agents.total ?? 0}`);
}

const listUpdates = updatesDuringFetch();

async function loadTasks() {
  const [body, late] = await listUpdates.during(fetchRecent);
  if (body === STALE) return;
  const tasks = (body && body.tasks) || [];
  replaceChildren(list, tasks.map((t) => taskRow(t, { actions: detailLink })));
  listUpdates.apply(list, late);
  empty.hidden = tasks.length > 0;
}

function detailLink(task) {
  return el('a', { class: 'btn btn-ghost btn-sm', href: `/tasks.html#${task.id}`, text: 'Open' });
}

async function renderNotifications() {
  const items = await fetchRecentNotifications();
  if (items === STALE) return;
  const ul = document.getElementById('notifications');
  replaceChildren(ul, items.map((n) => el('li', { class: `notification notification-${n.level}` },
    el('span', { class: 'notification-level', text: n.category === 'security' ? 'security' : n.level }),
    el('span', { class: 'notification-text', text: n.message }),
    el('time', { datetime: n.at, text: timeAgo(n.at) }))));
  document.getElementById('notifications-empty').hidden = items.length > 0;
}

const refresh = debounce(() => {
  loadSummary().catch(reportError);
}, 300);
const reloadNotifications = debounce(() => {
  renderNotifications().catch(reportError);
}, 300);
const refreshTasks = debounce(() => {
  loadTasks().catch(reportError);
}, 300);

async function main() {
  await initPage('dashboard');
  onRealtime('task_update', (data) => {
    listUpdates.note(data);
    // The row itself is patched by realtime-ui.js; a new task brings the list up to date.
    if (!findTaskRow(list, data.task_id)) refreshTasks();
    refresh();
  });
  onRealtime('agent_update', () => refresh());
  onRealtime('system', () => reloadNotifications());
  onRealtime('reset', () => { refresh(); refreshTasks(); reloadNotifications(); });
  // After a reconnect, counts may have moved while we were away.
  onRealtime('connected', () => { refresh(); refreshTasks(); reloadNotifications(); });

  await Promise.all([loadSummary(), loadTasks(), renderNotifications()]).catch(reportError);
}

main();
