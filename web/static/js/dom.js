// Small DOM helpers. Everything that comes from the server goes through
// textContent (never innerHTML), so data is always shown as text.

/**
 * Creates an element: el('a', {href: '/x', class: 'btn', dataset: {id: 1}}, 'text', child).
 * Event handlers are attached with `on: {click: fn}`; `text` sets textContent.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'on') for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else if (key in node && typeof value !== 'string' && key !== 'list') node[key] = value;
    else if (value === true) node.setAttribute(key, '');
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Removes all children of a node. */
export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** Replaces all children of a node. */
export function replaceChildren(node, ...children) {
  clear(node);
  append(node, children);
  return node;
}

/** `document.querySelector` shorthand. */
export const $ = (sel, root = document) => root.querySelector(sel);

/** Escapes a value for use inside an attribute selector. */
export function cssEscape(value) {
  return window.CSS && CSS.escape ? CSS.escape(String(value)) : String(value).replace(/["\\]/g, '\\$&');
}

/** Formats an RFC 3339 time for people ("—" when absent). */
export function formatTime(value) {
  if (!value) return '—';
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return '—';
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** "3 min ago" style relative time. */
export function timeAgo(value) {
  if (!value) return 'never';
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return '—';
  const s = Math.round((Date.now() - d.getTime()) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** Formats a duration in milliseconds ("—" for null). */
export function formatMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(Number(ms))) return '—';
  const n = Number(ms);
  if (n < 1000) return `${Math.round(n)} ms`;
  if (n < 60000) return `${(n / 1000).toFixed(n < 10000 ? 2 : 1)} s`;
  return `${(n / 60000).toFixed(1)} min`;
}

/**
 * A success rate as a percentage string. The contract does not say whether it
 * is a fraction or a percentage: values ≤ 1 are read as fractions.
 */
export function ratePercent(rate) {
  if (rate === null || rate === undefined || Number.isNaN(Number(rate))) return null;
  const n = Number(rate);
  return n <= 1 ? n * 100 : n;
}

/**
 * A summary's success rate for people: "—" while nothing has finished (the contract
 * sends null then; a server that sends 0 is read the same way when its counts say
 * that nothing completed or failed).
 */
export function summaryRate(tasks) {
  const by = (tasks && tasks.by_status) || {};
  const finished = Number(by.completed || 0) + Number(by.failed || 0);
  return finished === 0 ? '—' : formatRate(tasks.success_rate);
}

export function formatRate(rate) {
  const p = ratePercent(rate);
  return p === null ? '—' : `${p.toFixed(p >= 99.95 || p === 0 ? 0 : 1)}%`;
}

/** Calls fn at most once per `ms` after the last call. */
export function debounce(fn, ms = 300) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

/** What a `newestOnly` call answers when a newer call was started before it finished. */
export const STALE = Symbol('stale');

/**
 * Wraps an async fetch so that only the newest call's answer is drawn: a page refreshes
 * on live events, its requests may be answered out of order, and an older answer must
 * not draw over a newer one. A call overtaken by a newer one resolves to `STALE`.
 */
export function newestOnly(fetch) {
  let issued = 0;
  return async (...args) => {
    const mine = ++issued;
    const answer = await fetch(...args);
    return mine === issued ? answer : STALE;
  };
}

/** Copies text to the clipboard, with a fallback for non-secure contexts. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = el('textarea', { class: 'visually-hidden', readonly: true });
    ta.value = text;
    document.body.appendChild(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch { ok = false; }
    ta.remove();
    return ok;
  }
}

/**
 * A button that needs a second click within 4 s to act (no blocking confirm()
 * dialog). `onConfirm` runs on the second click.
 */
export function confirmButton(label, confirmLabel, onConfirm, className = 'btn btn-danger btn-sm') {
  let armed = false;
  let timer = null;
  const btn = el('button', { type: 'button', class: className, text: label });
  btn.addEventListener('click', async () => {
    if (!armed) {
      armed = true;
      btn.textContent = confirmLabel;
      btn.classList.add('is-armed');
      timer = setTimeout(() => {
        armed = false;
        btn.textContent = label;
        btn.classList.remove('is-armed');
      }, 4000);
      return;
    }
    clearTimeout(timer);
    btn.disabled = true;
    try {
      await onConfirm();
    } finally {
      btn.disabled = false;
      armed = false;
      btn.textContent = label;
      btn.classList.remove('is-armed');
    }
  });
  return btn;
}

/** Shows an error (or clears it with null) in a form's [role=alert] element. */
export function showFormError(node, message) {
  node.textContent = message || '';
  node.hidden = !message;
}
