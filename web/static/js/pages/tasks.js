// /tasks.html: submit, list (status filter, paging), live status/progress,
// details with result or error, cancel.
import { initPage, api, el, replaceChildren, clear, debounce, onRealtime, formatTime, formatMs, showFormError, qs, toast, reportError, cssEscape } from '../app.js';
import { taskRow, patchTaskRow, findTaskRow, statusBadge, progressBar, FINAL } from '../task-view.js';

const list = document.getElementById('task-list');
const empty = document.getElementById('tasks-empty');
const filter = document.getElementById('status-filter');
const loadMoreBtn = document.getElementById('load-more');
const detailBody = document.getElementById('task-detail-body');
const detailClose = document.getElementById('detail-close');
const form = document.getElementById('task-form');
const formError = document.getElementById('task-form-error');

let nextCursor = null;
let openTaskId = null;
const fetching = new Set();
/** The newest task_update of tasks whose row is not on the page yet (being fetched). */
const pendingUpdates = new Map();

function actions(task) {
  const id = task.id || task.task_id;
  const details = el('button', { type: 'button', class: 'btn btn-ghost btn-sm', text: 'Details', 'aria-label': `Details of task ${shortQuery(task.query)}` });
  details.addEventListener('click', () => showDetail(id));
  const cancel = el('button', { type: 'button', class: 'btn btn-danger btn-sm task-cancel', text: 'Cancel', hidden: FINAL.includes(task.status) });
  cancel.addEventListener('click', () => cancelTask(id, cancel));
  return [details, cancel];
}

function shortQuery(q) {
  q = String(q || '');
  return q.length > 40 ? `${q.slice(0, 39)}…` : q;
}

function makeRow(task) {
  return taskRow(task, { actions });
}

function updateRow(row, update) {
  patchTaskRow(row, update);
  const cancel = row.querySelector('.task-cancel');
  if (cancel && update.status) cancel.hidden = FINAL.includes(update.status);
}

/** Puts a new row on top, with any update that arrived while it was on its way. */
function insertRow(task) {
  const row = makeRow(task);
  list.prepend(row);
  const late = pendingUpdates.get(row.dataset.taskId);
  pendingUpdates.delete(row.dataset.taskId);
  if (late) updateRow(row, late);
  refreshEmpty();
  return row;
}

function refreshEmpty() {
  empty.hidden = list.children.length > 0;
  if (empty.hidden) return;
  empty.textContent = filter.value ? `No ${filter.value} tasks` : 'No tasks yet';
}

async function loadTasks({ append = false } = {}) {
  const body = await api(`/api/v1/tasks${qs({ status: filter.value, limit: 50, cursor: append ? nextCursor : null })}`);
  const tasks = (body && body.tasks) || [];
  if (!append) clear(list);
  for (const t of tasks) {
    if (!findTaskRow(list, t.id)) list.appendChild(makeRow(t));
  }
  nextCursor = (body && body.next_cursor) || null;
  loadMoreBtn.hidden = !nextCursor;
  refreshEmpty();
}

/** A task we have not shown yet (submitted elsewhere or before the page loaded). */
async function addTask(id, fallback) {
  if (findTaskRow(list, id) || fetching.has(id)) return;
  fetching.add(id);
  try {
    let task;
    try {
      task = await api(`/api/v1/tasks/${encodeURIComponent(id)}`);
      task = task.task || task;
    } catch {
      task = fallback;
    }
    if (!task || findTaskRow(list, id)) return;
    if (filter.value && task.status !== filter.value) return;
    insertRow(task);
  } finally {
    fetching.delete(id);
  }
}

function field(label, value, cls) {
  return [el('dt', { text: label }), el('dd', { class: cls, text: value })];
}

async function showDetail(id) {
  openTaskId = id;
  detailClose.hidden = false;
  try {
    const body = await api(`/api/v1/tasks/${encodeURIComponent(id)}`);
    const task = body.task || body;
    if (openTaskId !== id) return;
    let duration = null;
    if (FINAL.includes(task.status) && task.status !== 'canceled') {
      try {
        const r = await api(`/api/v1/tasks/${encodeURIComponent(id)}/result`);
        duration = r && r.duration_ms;
      } catch { /* the task itself has result and error */ }
    }
    renderDetail(task, duration);
  } catch (err) {
    reportError(err);
  }
}

function renderDetail(task, duration) {
  const box = el('div', { class: 'detail', dataset: { taskId: task.id, taskStatus: task.status } },
    el('p', { class: 'detail-query', text: task.query }),
    el('div', { class: 'task-state' }, statusBadge(task.status), progressBar(task.progress)),
    el('dl', { class: 'detail-list' },
      field('Task ID', task.id, 'mono'),
      field('Capability', task.capability || 'general'),
      field('Priority', task.priority || 'normal'),
      field('Agent', task.agent_id || '—', 'mono'),
      field('Attempts', String(task.attempts ?? 0)),
      field('Submitted', formatTime(task.created_at)),
      field('Started', formatTime(task.started_at)),
      field('Finished', formatTime(task.completed_at)),
      duration !== null && duration !== undefined ? field('Duration', formatMs(duration)) : null));
  if (task.error) {
    box.append(el('h3', { text: 'Error' }), el('pre', { class: 'output output-error', text: String(task.error) }));
  }
  if (task.result !== null && task.result !== undefined && task.result !== '') {
    const text = typeof task.result === 'string' ? task.result : JSON.stringify(task.result, null, 2);
    box.append(el('h3', { text: 'Result' }), el('pre', { class: 'output', id: 'task-result', text }));
  } else if (!FINAL.includes(task.status)) {
    box.append(el('p', { class: 'muted', text: 'The result appears here when the task finishes.' }));
  }
  if (!FINAL.includes(task.status)) {
    const cancel = el('button', { type: 'button', class: 'btn btn-danger btn-sm', text: 'Cancel task' });
    cancel.addEventListener('click', () => cancelTask(task.id, cancel));
    box.append(el('div', { class: 'form-actions' }, cancel));
  }
  replaceChildren(detailBody, box);
}

function closeDetail() {
  openTaskId = null;
  detailClose.hidden = true;
  replaceChildren(detailBody, el('p', { class: 'empty', text: 'Select a task to see its result.' }));
  if (location.hash) history.replaceState(null, '', location.pathname);
}

async function cancelTask(id, button) {
  button.disabled = true;
  try {
    const body = await api(`/api/v1/tasks/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
    const row = findTaskRow(list, id);
    if (row) updateRow(row, { status: (body && body.status) || 'canceled' });
    toast('Task canceled', 'info');
    if (openTaskId === id) showDetail(id);
  } catch (err) {
    reportError(err);
  } finally {
    button.disabled = false;
  }
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  showFormError(formError, null);
  const query = form.query.value.trim();
  const capability = form.capability.value.trim() || 'general';
  const priority = form.priority.value;
  const timeout = Number(form.timeout_s.value);
  if (!query) {
    showFormError(formError, 'Describe the task in the query field.');
    form.query.focus();
    return;
  }
  const body = { query, capability, priority };
  if (Number.isFinite(timeout) && timeout > 0) body.timeout_s = Math.min(3600, Math.round(timeout));
  const button = document.getElementById('task-submit');
  button.disabled = true;
  try {
    const res = await api('/api/v1/tasks/submit', { method: 'POST', body });
    const task = res.task || { id: res.task_id, query, capability, priority, status: res.status || 'queued', progress: 0 };
    if (!findTaskRow(list, task.id) && (!filter.value || filter.value === task.status)) insertRow(task);
    form.query.value = '';
    toast('Task submitted', 'info', { duration: 3000 });
  } catch (err) {
    showFormError(formError, err.message);
  } finally {
    button.disabled = false;
  }
});

filter.addEventListener('change', () => { loadTasks().catch(reportError); });
loadMoreBtn.addEventListener('click', () => { loadTasks({ append: true }).catch(reportError); });
detailClose.addEventListener('click', closeDetail);

const refreshDetail = debounce(() => { if (openTaskId) showDetail(openTaskId); }, 300);
const reload = debounce(() => { loadTasks().catch(reportError); }, 300);

async function main() {
  await initPage('tasks');

  onRealtime('task_update', (data) => {
    if (!data || !data.task_id) return;
    const row = findTaskRow(list, data.task_id);
    if (row) updateRow(row, data);
    else {
      pendingUpdates.set(data.task_id, data);
      addTask(data.task_id, { id: data.task_id, query: data.query, status: data.status, progress: data.progress, error: data.error });
    }
    if (openTaskId === data.task_id) {
      const detail = detailBody.querySelector(`[data-task-id="${cssEscape(data.task_id)}"]`);
      if (detail) patchTaskRow(detail, data);
      refreshDetail();
    }
  });
  onRealtime('reset', reload);

  await loadTasks().catch(reportError);
  const m = /^#task-(.+)$/.exec(location.hash);
  if (m) showDetail(decodeURIComponent(m[1]));
}

main();
