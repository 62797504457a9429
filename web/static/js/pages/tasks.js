// /tasks.html: submit (agent, attempts, start time), list (search, filters, all users
// for admins, paging), and the task detail as a place of its own: /tasks.html#<id>,
// reachable by link, closed by Escape, Close or Back, with the live output stream,
// the attempts, the timings, why a queued task waits, and cancel / retry.
import { initPage, api, el, replaceChildren, clear, debounce, onRealtime, formatTime, formatMs, showFormError, qs, toast, reportError, newestOnly, STALE } from '../app.js';
import { taskRow, patchTaskRow, findTaskRow, statusBadge, progressBar, FINAL, updatesDuringFetch } from '../task-view.js';

const list = document.getElementById('task-list');
const empty = document.getElementById('tasks-empty');
const filters = document.getElementById('task-filters');
const loadMoreBtn = document.getElementById('load-more');
const sheet = document.getElementById('task-detail');
const detailTitle = document.getElementById('detail-title');
const detailBody = document.getElementById('task-detail-body');
const detailClose = document.getElementById('detail-close');
const form = document.getElementById('task-form');
const formError = document.getElementById('task-form-error');

let me = null;
let nextCursor = null;
let listGeneration = 0;
/** id → agent, for names in rows and the detail. */
const agents = new Map();
const fetching = new Set();
/** Updates that arrive while a list or a task is being fetched, applied to its answer. */
const listUpdates = updatesDuringFetch();

// ------------------------------------------------------------------ agents
const fetchAgents = newestOnly((query) => api(`/api/v1/agents${qs(query)}`));

async function loadAgents() {
  const body = await fetchAgents({ limit: 200, all: me && me.role === 'admin' ? 'true' : null });
  if (body === STALE) return;
  agents.clear();
  for (const a of (body && body.agents) || []) agents.set(a.id, a);
  const capabilities = [...new Set([...agents.values()].flatMap((a) => a.capabilities || []))].sort();
  replaceChildren(document.getElementById('capability-options'), capabilities.map((c) => el('option', { value: c })));
  const picker = document.getElementById('task-agent');
  const chosen = picker.value;
  replaceChildren(picker, el('option', { value: '', text: 'Any agent that offers the capability' }),
    [...agents.values()].map((a) => el('option', { value: a.id, text: `${a.name} (${a.status || 'offline'}; ${(a.capabilities || []).join(', ') || 'no capabilities'})` })));
  picker.value = chosen;
  const agentFilter = document.getElementById('filter-agent');
  const filtered = agentFilter.value;
  replaceChildren(agentFilter, el('option', { value: '', text: 'Any' }), [...agents.values()].map((a) => el('option', { value: a.id, text: a.name })));
  agentFilter.value = filtered;
}

function agentName(id) {
  if (!id) return '—';
  const a = agents.get(id);
  return a ? a.name : `${String(id).slice(0, 8)}…`;
}

// -------------------------------------------------------------------- list
function actions(task) {
  const id = task.id || task.task_id;
  const details = el('a', { href: `#${id}`, class: 'btn btn-ghost btn-sm task-details', text: 'Details', 'aria-label': `Details of task ${shortQuery(task.query)}` });
  const cancel = el('button', { type: 'button', class: 'btn btn-danger btn-sm task-cancel', text: 'Cancel', hidden: FINAL.includes(task.status), 'aria-label': `Cancel task ${shortQuery(task.query)}` });
  cancel.addEventListener('click', () => cancelTask(id, cancel));
  return [details, cancel];
}

function shortQuery(q) {
  q = String(q || '');
  return q.length > 40 ? `${q.slice(0, 39)}…` : q;
}

function makeRow(task) {
  const row = taskRow(task, { actions });
  if (task.agent_id) row.querySelector('.task-meta').append(el('span', { class: 'task-agent', text: `agent ${agentName(task.agent_id)}` }));
  return row;
}

function filterValues() {
  return {
    q: filters.q.value.trim(),
    status: filters.status.value,
    capability: filters.capability.value.trim(),
    agent_id: filters.agent_id.value,
    all: filters.all.checked ? 'true' : null,
  };
}

function matchesFilters(task) {
  const f = filterValues();
  if (f.status && task.status !== f.status) return false;
  if (f.capability && task.capability && task.capability !== f.capability) return false;
  if (f.agent_id && task.agent_id !== f.agent_id) return false;
  if (f.q && !String(task.query || '').toLowerCase().includes(f.q.toLowerCase())) return false;
  return true;
}

/** Shows a fetched task, at the top (a new one) or the bottom (a list page). */
function insertRow(task, { atEnd = false } = {}) {
  const row = makeRow(task);
  if (atEnd) list.appendChild(row);
  else list.prepend(row);
  refreshEmpty();
  return row;
}

function refreshEmpty() {
  empty.hidden = list.children.length > 0;
  if (empty.hidden) return;
  const f = filterValues();
  if (f.q || f.capability || f.agent_id) empty.textContent = 'No tasks match these filters';
  else empty.textContent = f.status ? `No ${f.status} tasks` : 'No tasks yet';
}

async function loadTasks({ append = false } = {}) {
  const generation = append ? listGeneration : ++listGeneration;
  const [body, late] = await listUpdates.during(() => api(`/api/v1/tasks${qs({ ...filterValues(), limit: 50, cursor: append ? nextCursor : null })}`));
  if (generation !== listGeneration) return; // the filters changed meanwhile
  const tasks = (body && body.tasks) || [];
  if (!append) clear(list);
  for (const t of tasks) {
    if (!findTaskRow(list, t.id)) insertRow(t, { atEnd: true });
  }
  listUpdates.apply(list, late);
  nextCursor = (body && body.next_cursor) || null;
  loadMoreBtn.hidden = !nextCursor;
  refreshEmpty();
}

/**
 * Shows a task fetched or answered by the server, unless it is shown already, then
 * applies the updates that arrived while that answer was on its way: the row may have
 * been drawn meanwhile from an even older answer (the submit's own), and these updates
 * were not there to patch it.
 */
function showTask(task, late) {
  const id = task.id || task.task_id;
  if (id && !findTaskRow(list, id) && matchesFilters(task)) insertRow(task);
  listUpdates.apply(list, late);
  for (const [lateId, update] of late) showCancel(findTaskRow(list, lateId), update.status);
}

/** A finished task's row has no Cancel button (a task never leaves a final status). */
function showCancel(row, status) {
  const cancel = row && row.querySelector('.task-cancel');
  if (cancel) cancel.hidden = FINAL.includes(status) || FINAL.includes(row.dataset.taskStatus);
}

/** A task we have not shown yet (submitted elsewhere or before the page loaded). */
async function addTask(id) {
  if (findTaskRow(list, id) || fetching.has(id)) return;
  fetching.add(id);
  try {
    // Updates that arrive meanwhile go on top of the answer, which may be older.
    const [task, late] = await listUpdates.during(() => api(`/api/v1/tasks/${encodeURIComponent(id)}`).then((b) => b.task || b).catch(() => null));
    if (task) showTask(task, late);
  } finally {
    fetching.delete(id);
  }
}

async function cancelTask(id, button) {
  button.disabled = true;
  try {
    const body = await api(`/api/v1/tasks/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
    for (const node of document.querySelectorAll(`[data-task-id="${CSS.escape(id)}"]`)) patchTaskRow(node, { status: (body && body.status) || 'canceled' });
    toast('Task canceled', 'info', { duration: 3000 });
    if (detail && detail.id === id) detail.refresh();
  } catch (err) {
    reportError(err);
  } finally {
    button.disabled = false;
  }
}

async function retryTask(id, button) {
  button.disabled = true;
  try {
    const [body, late] = await listUpdates.during(() => api(`/api/v1/tasks/${encodeURIComponent(id)}/retry`, { method: 'POST' }));
    const task = body.task || { id: body.task_id, status: body.status || 'queued', progress: 0 };
    showTask(task, late);
    toast('Task submitted again', 'info', { duration: 3000 });
    if (task.id) location.hash = task.id;
  } catch (err) {
    reportError(err);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ output
/**
 * The output of one task, complete and in order: chunks fetched with ?after= and live
 * task_output frames applied by seq; a frame past a gap waits while the gap is fetched.
 * Follows the end (auto-scroll) until the reader scrolls up; "Follow" resumes it.
 */
class OutputView {
  constructor(taskId, pre, follow) {
    this.taskId = taskId;
    this.pre = pre;
    this.followButton = follow;
    this.last = 0;
    this.pending = new Map();
    this.queue = [];
    this.frame = 0;
    this.fetching = false;
    this.again = false;
    this.complete = false;
    this.closed = false;
    this.following = true;
    pre.addEventListener('scroll', () => {
      const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
      if (!atEnd && this.following && !this.autoScrolling) this.setFollowing(false);
      else if (atEnd && !this.following) this.setFollowing(true);
      this.autoScrolling = false;
    });
    follow.addEventListener('click', () => { this.setFollowing(true); this.scrollToEnd(); });
  }

  setFollowing(on) {
    this.following = on;
    this.followButton.hidden = on;
    this.pre.dataset.following = String(on);
  }

  scrollToEnd() {
    this.autoScrolling = true;
    this.pre.scrollTop = this.pre.scrollHeight;
  }

  /** Fetches every chunk after the last applied one, until caught up. */
  async fill() {
    if (this.closed) return;
    if (this.fetching) { this.again = true; return; }
    this.fetching = true;
    try {
      do {
        this.again = false;
        for (;;) {
          const body = await api(`/api/v1/tasks/${encodeURIComponent(this.taskId)}/output${qs({ after: this.last, limit: 1000 })}`);
          if (this.closed) return;
          const chunks = (body && body.chunks) || [];
          for (const c of chunks) this.apply(c);
          if (body && body.complete) this.markComplete();
          if (!chunks.length || (body && body.complete)) break;
        }
      } while (this.again);
    } catch (err) {
      if (err.status === 404) this.pre.dataset.unavailable = 'true';
      else if (err.status !== 0) reportError(err);
    } finally {
      this.fetching = false;
    }
  }

  markComplete() {
    this.complete = true;
    this.pre.dataset.complete = 'true';
  }

  /** A live frame: applied when next in order; a gap is fetched. */
  live(frame) {
    if (this.closed || frame.task_id !== this.taskId) return;
    this.apply(frame);
    if (this.pending.size) this.fill();
  }

  apply(chunk) {
    const seq = Number(chunk.seq);
    if (!Number.isInteger(seq) || seq <= this.last) return;
    if (seq !== this.last + 1) {
      if (this.pending.size < 20000) this.pending.set(seq, chunk);
      return;
    }
    this.push(chunk);
    while (this.pending.has(this.last + 1)) {
      const next = this.pending.get(this.last + 1);
      this.pending.delete(this.last + 1);
      this.push(next);
    }
    for (const s of this.pending.keys()) if (s <= this.last) this.pending.delete(s);
  }

  push(chunk) {
    this.last = Number(chunk.seq);
    this.queue.push(chunk);
    this.pre.dataset.lastSeq = String(this.last);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  /** Writes the queued chunks in one go (thousands of chunks: one layout per frame). */
  flush() {
    this.frame = 0;
    const frag = document.createDocumentFragment();
    let text = '';
    const spill = () => { if (text) { frag.append(document.createTextNode(text)); text = ''; } };
    for (const c of this.queue) {
      if (c.stream === 'log') {
        spill();
        frag.append(el('span', { class: 'chunk-log', text: c.text }));
      } else {
        text += c.text;
      }
    }
    spill();
    this.queue = [];
    const placeholder = this.pre.querySelector('.output-empty');
    if (placeholder) placeholder.remove();
    this.pre.append(frag);
    if (this.following) this.scrollToEnd();
  }

  close() {
    this.closed = true;
    if (this.frame) cancelAnimationFrame(this.frame);
  }
}

// ------------------------------------------------------------------ detail
const WAITING = {
  agent: () => 'The agents that can run it are busy; it starts when one of them is free.',
  no_agent_online: (t) => `No online agent you may use offers the capability “${t.capability || 'general'}”. It starts as soon as one comes online (see the Agents page).`,
  run_at: (t) => `It is scheduled: it does not start before ${formatTime(t.run_at)}.`,
  retry_backoff: (t) => `An attempt failed; it is retried after a short pause (attempt ${(t.attempts ?? 0) + 1}${t.max_attempts ? ` of ${t.max_attempts}` : ''}).`,
};

function field(label, value, cls) {
  return [el('dt', { text: label }), el('dd', { class: cls, text: value })];
}

function durationOf(task) {
  if (!task.started_at) return null;
  const end = task.completed_at ? new Date(task.completed_at) : (FINAL.includes(task.status) ? null : new Date());
  return end ? end - new Date(task.started_at) : null;
}

/** The open task detail: one at a time. */
let detail = null;

class TaskDetail {
  constructor(id) {
    this.id = id;
    this.task = null;
    this.output = null;
    this.refresh = debounce(() => this.load().catch(reportError), 250);
  }

  async load() {
    const [task, status, attempts] = await Promise.all([
      api(`/api/v1/tasks/${encodeURIComponent(this.id)}`).then((b) => b.task || b),
      api(`/api/v1/tasks/${encodeURIComponent(this.id)}/status`).catch(() => null),
      api(`/api/v1/tasks/${encodeURIComponent(this.id)}/attempts`).then((b) => (b && b.attempts) || []).catch(() => null),
    ]);
    if (detail !== this) return;
    this.task = { ...task, ...(status ? { queue_position: status.queue_position, waiting_for: status.waiting_for } : {}) };
    this.render(attempts);
  }

  render(attempts) {
    const t = this.task;
    detailTitle.textContent = 'Task';
    const actionsRow = el('div', { class: 'form-actions detail-actions' });
    if (!FINAL.includes(t.status)) {
      const cancel = el('button', { type: 'button', class: 'btn btn-danger btn-sm', id: 'detail-cancel', text: 'Cancel task' });
      cancel.addEventListener('click', () => cancelTask(t.id, cancel));
      actionsRow.append(cancel);
    } else {
      const retry = el('button', { type: 'button', class: 'btn btn-sm', id: 'detail-retry', text: 'Run again' });
      retry.addEventListener('click', () => retryTask(t.id, retry));
      actionsRow.append(retry);
    }
    const waiting = t.status === 'queued' && t.waiting_for
      ? el('p', { class: 'waiting', id: 'task-waiting', dataset: { waitingFor: t.waiting_for } },
        el('strong', { text: 'Why it waits: ' }),
        (WAITING[t.waiting_for] || (() => String(t.waiting_for)))(t),
        t.queue_position ? ` Position ${t.queue_position} in the queue.` : '')
      : null;
    const dur = durationOf(t);
    const box = el('div', { class: 'detail', dataset: { taskId: t.id, taskStatus: t.status } },
      el('p', { class: 'detail-query', text: t.query }),
      el('div', { class: 'task-state' }, statusBadge(t.status), progressBar(t.progress)),
      waiting,
      actionsRow,
      el('dl', { class: 'detail-list' },
        field('Task ID', t.id, 'mono'),
        field('Capability', t.capability || 'general'),
        field('Priority', t.priority || 'normal'),
        field('Agent', agentName(t.agent_id)),
        field('Attempts', t.max_attempts ? `${t.attempts ?? 0} of ${t.max_attempts}` : String(t.attempts ?? 0)),
        field('Submitted', formatTime(t.created_at)),
        t.run_at ? field('Starts at', formatTime(t.run_at)) : null,
        field('Started', formatTime(t.started_at)),
        field('Finished', formatTime(t.completed_at)),
        field('Duration', dur === null ? '—' : formatMs(dur))));
    if (t.error) box.append(el('h3', { text: 'Error' }), el('pre', { class: 'output output-error', id: 'task-error', text: String(t.error) }));
    if (t.result !== null && t.result !== undefined && t.result !== '') {
      const text = typeof t.result === 'string' ? t.result : JSON.stringify(t.result, null, 2);
      box.append(el('h3', { text: 'Result' }), el('pre', { class: 'output', id: 'task-result', tabindex: '0', text }));
    }
    // The output keeps its node (and what it already holds) across re-renders.
    if (!this.outputSection) {
      const pre = el('pre', { class: 'output output-stream', id: 'task-output', tabindex: '0', 'aria-label': 'Output', dataset: { following: 'true' } },
        el('span', { class: 'output-empty', text: 'No output yet.' }));
      const follow = el('button', { type: 'button', class: 'btn btn-sm output-follow', text: 'Follow the end', hidden: true });
      this.outputSection = el('section', { class: 'output-section', 'aria-labelledby': 'output-title' },
        el('div', { class: 'card-head' }, el('h3', { id: 'output-title', text: 'Output' }), follow), pre);
      this.output = new OutputView(t.id, pre, follow);
      this.output.fill();
    }
    const attemptsNode = attempts ? this.attemptsTable(attempts) : (this.attemptsNode || el('section', { class: 'attempts' }));
    if (this.infoNode && this.infoNode.isConnected) {
      // Replace the parts around the output, never the output itself: moving it would
      // lose its scroll position (and with it "follow the end").
      this.infoNode.replaceWith(box);
      if (this.attemptsNode !== attemptsNode) this.attemptsNode.replaceWith(attemptsNode);
    } else {
      replaceChildren(detailBody, box, this.outputSection, attemptsNode);
    }
    this.infoNode = box;
    this.attemptsNode = attemptsNode;
  }

  attemptsTable(attempts) {
    const section = el('section', { class: 'attempts', 'aria-labelledby': 'attempts-title' }, el('h3', { id: 'attempts-title', text: 'Attempts' }));
    if (!attempts.length) {
      section.append(el('p', { class: 'empty', text: 'Not started yet.' }));
      return section;
    }
    section.append(el('div', { class: 'table-wrap' }, el('table', { class: 'table', id: 'attempts-table' },
      el('thead', {}, el('tr', {}, ['#', 'Agent', 'Started', 'Ended', 'Outcome', 'Error'].map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody', {}, attempts.map((a) => el('tr', { dataset: { outcome: a.outcome } },
        el('td', { 'data-label': '#', text: String(a.attempt) }),
        el('td', { 'data-label': 'Agent', text: agentName(a.agent_id) }),
        el('td', { 'data-label': 'Started', text: formatTime(a.started_at) }),
        el('td', { 'data-label': 'Ended', text: formatTime(a.ended_at) }),
        el('td', { 'data-label': 'Outcome' }, el('span', { class: 'badge', dataset: { status: a.outcome }, text: String(a.outcome).replace('_', ' ') })),
        el('td', { 'data-label': 'Error', class: 'attempt-error', text: a.error || '—' })))))));
    return section;
  }

  close() {
    if (this.output) this.output.close();
  }
}

/** Where focus goes back to when the detail closes. */
let returnFocus = null;
/** Whether the open detail was reached by navigating inside this page (Back leaves it). */
let pushedHere = false;

function taskIdFromHash() {
  const raw = decodeURIComponent(location.hash.replace(/^#/, ''));
  const id = raw.replace(/^task-/, ''); // links of earlier versions
  return /^[0-9a-fA-F-]{8,64}$/.test(id) ? id : null;
}

async function openDetail(id) {
  if (detail && detail.id === id) return;
  if (detail) detail.close();
  detail = new TaskDetail(id);
  replaceChildren(detailBody, el('p', { class: 'muted', text: 'Loading…' }));
  sheet.hidden = false;
  document.body.classList.add('has-sheet');
  detailTitle.focus();
  try {
    await detail.load();
  } catch (err) {
    if (detail && detail.id === id) {
      replaceChildren(detailBody, el('p', { class: 'form-error', role: 'alert', text: err.status === 404 ? 'There is no such task, or it is not yours.' : err.message }));
    }
  }
}

function hideDetail() {
  if (detail) detail.close();
  detail = null;
  sheet.hidden = true;
  document.body.classList.remove('has-sheet');
  clear(detailBody);
  const target = returnFocus && document.contains(returnFocus) ? returnFocus : document.getElementById('list-title');
  returnFocus = null;
  if (target) {
    if (!target.hasAttribute('tabindex') && target.tagName === 'H2') target.setAttribute('tabindex', '-1');
    target.focus();
  }
}

/** Close (button or Escape): as Back when we navigated here, else drop the hash. */
function closeDetail() {
  if (pushedHere) {
    history.back();
  } else {
    history.replaceState(null, '', location.pathname + location.search);
    hideDetail();
  }
}

function route() {
  const id = taskIdFromHash();
  if (id) openDetail(id);
  else if (detail) hideDetail();
}

list.addEventListener('click', (event) => {
  const link = event.target.closest('a.task-details');
  if (!link) return;
  returnFocus = link;
  pushedHere = true;
});
window.addEventListener('hashchange', () => {
  if (!taskIdFromHash()) pushedHere = false;
  route();
});
detailClose.addEventListener('click', closeDetail);
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && detail && !event.defaultPrevented) {
    event.preventDefault();
    closeDetail();
  }
});

// ------------------------------------------------------------------ submit
form.addEventListener('submit', async (event) => {
  event.preventDefault();
  showFormError(formError, null);
  const query = form.query.value.trim();
  if (!query) {
    showFormError(formError, 'Describe the task in the query field.');
    form.query.focus();
    return;
  }
  const body = { query, capability: form.capability.value.trim() || 'general', priority: form.priority.value };
  if (form.agent_id.value) body.agent_id = form.agent_id.value;
  const timeout = Number(form.timeout_s.value);
  if (Number.isFinite(timeout) && timeout > 0) body.timeout_s = Math.min(3600, Math.round(timeout));
  const attempts = Number(form.max_attempts.value);
  if (!Number.isInteger(attempts) || attempts < 1 || attempts > 10) {
    showFormError(formError, 'Attempts must be a whole number from 1 to 10.');
    form.max_attempts.focus();
    return;
  }
  body.max_attempts = attempts;
  if (form.run_at.value) {
    const at = new Date(form.run_at.value);
    if (Number.isNaN(at.getTime())) {
      showFormError(formError, 'The start time is not a valid date.');
      return;
    }
    body.run_at = at.toISOString();
  }
  const button = document.getElementById('task-submit');
  button.disabled = true;
  try {
    const [res, late] = await listUpdates.during(() => api('/api/v1/tasks/submit', { method: 'POST', body }));
    showTask(res.task || { id: res.task_id, ...body, status: res.status || 'queued', progress: 0 }, late);
    form.query.value = '';
    form.run_at.value = '';
    toast(res.duplicate ? 'Already submitted: showing the first task' : 'Task submitted', 'info', { duration: 3000 });
  } catch (err) {
    showFormError(formError, err.message);
  } finally {
    button.disabled = false;
  }
});

const reloadList = debounce(() => {
  document.getElementById('list-title').textContent = filters.all.checked ? 'Tasks of all users' : 'Your tasks';
  loadTasks().catch(reportError);
}, 300);
filters.addEventListener('submit', (event) => { event.preventDefault(); loadTasks().catch(reportError); });
filters.addEventListener('input', reloadList);
filters.addEventListener('change', reloadList);
loadMoreBtn.addEventListener('click', () => { loadTasks({ append: true }).catch(reportError); });

async function main() {
  me = await initPage('tasks');
  if (me.role === 'admin') document.getElementById('all-users-field').hidden = false;

  onRealtime('task_update', (data) => {
    if (!data || !data.task_id) return;
    listUpdates.note(data);
    // Rows and badges are patched by realtime-ui.js; here: rows not shown yet, the
    // Cancel button, and the open detail.
    const row = findTaskRow(list, data.task_id);
    if (row) showCancel(row, data.status);
    else addTask(data.task_id);
    if (detail && detail.id === data.task_id) {
      detail.refresh();
      if (FINAL.includes(data.status) && detail.output) detail.output.fill();
    }
  });
  onRealtime('task_output', (data) => { if (detail && detail.output) detail.output.live(data); });
  onRealtime('agent_update', debounce(() => { loadAgents().catch(() => {}); }, 500));
  onRealtime('reset', () => { reloadList(); if (detail) detail.refresh(); });
  // Back after a drop: what was missed is replayed, but output frames are not kept for
  // resume: fetch what came meanwhile.
  onRealtime('connected', () => {
    if (detail) {
      detail.refresh();
      if (detail.output) detail.output.fill();
    }
  });

  await loadAgents().catch(reportError);
  route();
  await loadTasks().catch(reportError);
}

main();
