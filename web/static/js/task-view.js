// How a task looks on a page, shared by the dashboard and the tasks page.
// Contract: every task is an element [data-task-id] holding its status badge
// [data-status] and its progress (a <progress data-progress>), so that
// websocket.js and custom handlers can patch it in place.
import { el, cssEscape, timeAgo } from './dom.js';

export const FINAL = ['completed', 'failed', 'canceled'];

/** A status badge: <span class="badge" data-status="running">running</span>. */
export function statusBadge(status) {
  return el('span', { class: 'badge', dataset: { status: status || 'unknown' }, text: status || 'unknown' });
}

/** A progress bar with its percentage, both carrying data-progress. */
export function progressBar(progress) {
  const p = clampProgress(progress);
  const bar = el('progress', { class: 'progress', max: 100, 'aria-label': 'Progress', dataset: { progress: String(p) } });
  bar.value = p;
  bar.textContent = `${p}%`;
  return el('span', { class: 'progress-wrap' }, bar, el('span', { class: 'progress-text', dataset: { progress: String(p) }, text: `${p}%` }));
}

export function clampProgress(progress) {
  const n = Number(progress);
  return Number.isFinite(n) ? Math.max(0, Math.min(100, Math.round(n))) : 0;
}

/**
 * A task row. `actions(task)` may return extra controls (details, cancel).
 */
export function taskRow(task, { actions } = {}) {
  const id = task.id || task.task_id;
  const meta = el('p', { class: 'task-meta' },
    el('span', { text: task.capability || 'general' }),
    task.priority ? el('span', { text: task.priority }) : null,
    el('time', { datetime: task.created_at || '', text: task.created_at ? timeAgo(task.created_at) : 'just now' }));
  const row = el('li', { class: 'task-row', dataset: { taskId: id, taskStatus: task.status } },
    el('div', { class: 'task-main' },
      el('p', { class: 'task-query', text: task.query || '' }),
      meta,
      el('p', { class: 'task-error', hidden: !task.error, text: task.error || '' })),
    el('div', { class: 'task-state' }, statusBadge(task.status), progressBar(task.progress)),
    actions ? el('div', { class: 'task-actions' }, actions(task)) : null);
  return row;
}

/**
 * Applies a task_update (or a task) to an existing row. A finished task never
 * goes back to queued/running, so an older update arriving after a newer
 * snapshot (a row fetched while updates were streaming) is ignored.
 */
export function patchTaskRow(row, update) {
  if (FINAL.includes(row.dataset.taskStatus) && update.status && !FINAL.includes(update.status)) return;
  if (update.status) {
    row.dataset.taskStatus = update.status;
    for (const badge of row.querySelectorAll('[data-status]')) {
      badge.dataset.status = update.status;
      badge.textContent = update.status;
    }
  }
  if (update.progress !== undefined && update.progress !== null) {
    const p = clampProgress(update.progress);
    const bar = row.querySelector('progress');
    if (bar) {
      bar.value = p;
      bar.dataset.progress = String(p);
      bar.textContent = `${p}%`;
    }
    const text = row.querySelector('.progress-text');
    if (text) {
      text.dataset.progress = String(p);
      text.textContent = `${p}%`;
    }
  }
  const err = row.querySelector('.task-error');
  if (err && 'error' in update) {
    err.textContent = update.error || '';
    err.hidden = !update.error;
  }
}

/** The row of a task inside `root`, if shown. */
export function findTaskRow(root, id) {
  return root.querySelector(`[data-task-id="${cssEscape(id)}"]`);
}

/**
 * Updates that arrive while a list of tasks is being fetched. The fetch may be answered
 * from a snapshot taken before them, so they are applied again to the rows it brings;
 * without this a task that finished during the fetch would stay "queued" on the page.
 */
export function updatesDuringFetch(limit = 1000) {
  const open = new Set();
  return {
    /** Call with every task_update. */
    note(update) {
      if (!update || !update.task_id) return;
      for (const seen of open) {
        if (seen.size < limit || seen.has(update.task_id)) seen.set(update.task_id, update);
      }
    },
    /** Runs `fetch()`; answers its result and the updates that came meanwhile, by task id. */
    async during(fetch) {
      const seen = new Map();
      open.add(seen);
      try {
        return [await fetch(), seen];
      } finally {
        open.delete(seen);
      }
    },
    /** Applies the updates that came during a fetch to the rows now in `root`. */
    apply(root, seen) {
      for (const [id, update] of seen) {
        const row = findTaskRow(root, id);
        if (row) patchTaskRow(row, update);
      }
    },
  };
}
