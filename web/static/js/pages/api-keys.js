// /api-keys.html: create (key shown once), list, revoke; security alerts live.
import { initPage, api, el, replaceChildren, formatTime, timeAgo, showFormError, reportError, copyText, confirmButton, onRealtime, fetchNotifications, debounce, newestOnly, STALE } from '../app.js';

const tbody = document.getElementById('key-list');
const empty = document.getElementById('keys-empty');
const form = document.getElementById('key-form');
const formError = document.getElementById('key-form-error');
const newKeyBox = document.getElementById('new-key-box');
const newKey = document.getElementById('new-key');
const alerts = document.getElementById('security-alerts');

function keyRow(key) {
  const revoke = confirmButton('Revoke', 'Confirm revoke', async () => {
    try {
      await api(`/api/v1/api-keys/${encodeURIComponent(key.id)}`, { method: 'DELETE' });
      // The "copy now" box must not keep showing a secret that no longer works.
      if (newKeyBox.dataset.keyId === key.id) clearNewKey();
      await loadKeys();
    } catch (err) {
      reportError(err);
    }
  });
  revoke.setAttribute('aria-label', `Revoke key ${key.name}`);
  const expired = key.expires_at && new Date(key.expires_at).getTime() < Date.now();
  return el('tr', { dataset: { keyId: key.id } },
    el('td', { 'data-label': 'Name', text: key.name }),
    el('td', { 'data-label': 'Prefix', class: 'mono', text: key.prefix ? `${key.prefix}…` : '—' }),
    el('td', { 'data-label': 'Created', text: formatTime(key.created_at) }),
    el('td', { 'data-label': 'Last used', text: key.last_used_at ? timeAgo(key.last_used_at) : 'never' }),
    el('td', { 'data-label': 'Expires', class: expired ? 'text-danger' : '', text: key.expires_at ? (expired ? `expired ${formatTime(key.expires_at)}` : formatTime(key.expires_at)) : 'never' }),
    el('td', { class: 'cell-actions' }, revoke));
}

const fetchKeys = newestOnly(() => api('/api/v1/api-keys'));
const fetchAlerts = newestOnly(() => fetchNotifications(200));

async function loadKeys() {
  const body = await fetchKeys();
  if (body === STALE) return;
  const keys = (body && body.api_keys) || [];
  // Revoked here, in another tab or by a script: the secret in the box is dead.
  if (newKeyBox.dataset.keyId && !keys.some((k) => k.id === newKeyBox.dataset.keyId)) clearNewKey();
  // Reuse the rows already shown, so that a live refresh (a security alert from
  // another tab) does not disarm a Revoke button the user is about to confirm.
  const shown = new Map([...tbody.children].map((r) => [r.dataset.keyId, r]));
  const rows = keys.map((k) => {
    const row = shown.get(k.id);
    if (!row) return keyRow(k);
    row.querySelector('[data-label="Last used"]').textContent = k.last_used_at ? timeAgo(k.last_used_at) : 'never';
    return row;
  });
  const same = rows.length === tbody.children.length && rows.every((r, i) => tbody.children[i] === r);
  if (!same) replaceChildren(tbody, rows);
  empty.hidden = keys.length > 0;
  document.getElementById('key-table').hidden = keys.length === 0;
}

function alertItem(n) {
  return el('li', { class: `notification notification-${n.level || 'warning'} security-alert`, role: 'listitem' },
    el('span', { class: 'notification-level', text: 'security' }),
    el('span', { class: 'notification-text', text: n.message }),
    el('time', { datetime: n.at, text: timeAgo(n.at) }));
}

async function renderAlerts() {
  const all = await fetchAlerts();
  if (all === STALE) return;
  const items = all.filter((n) => n.category === 'security').slice(0, 20);
  replaceChildren(alerts, items.map(alertItem));
  document.getElementById('security-alerts-empty').hidden = items.length > 0;
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  showFormError(formError, null);
  const name = form.name.value.trim();
  const days = form.expires_in_days.value.trim();
  if (!name) { showFormError(formError, 'Give the key a name.'); form.name.focus(); return; }
  const body = { name };
  if (days) {
    const n = Number(days);
    if (!Number.isInteger(n) || n < 1) { showFormError(formError, 'Expiry must be a whole number of days (1 or more).'); return; }
    body.expires_in_days = n;
  }
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    const res = await api('/api/v1/api-keys', { method: 'POST', body });
    newKey.value = res.key;
    newKeyBox.dataset.keyId = res.id;
    newKeyBox.hidden = false;
    newKey.focus();
    newKey.select();
    form.reset();
    await loadKeys();
  } catch (err) {
    showFormError(formError, err.message);
  } finally {
    button.disabled = false;
  }
});

document.getElementById('copy-new-key').addEventListener('click', async (event) => {
  const ok = await copyText(newKey.value);
  event.target.textContent = ok ? 'Copied' : 'Copy failed';
  setTimeout(() => { event.target.textContent = 'Copy'; }, 2000);
});

function clearNewKey() {
  newKey.value = '';
  newKeyBox.hidden = true;
  delete newKeyBox.dataset.keyId;
}

const reload = debounce(() => { loadKeys().catch(reportError); }, 300);
const reloadAlerts = debounce(() => { renderAlerts().catch(reportError); }, 300);

async function main() {
  await initPage('api-keys');
  onRealtime('system', (data) => {
    if (data && data.category === 'security') {
      reloadAlerts();
      reload(); // a key was created or revoked, maybe from another tab or a script
    }
  });
  onRealtime('reset', () => { reload(); reloadAlerts(); });
  onRealtime('connected', () => { reload(); reloadAlerts(); });
  await Promise.all([loadKeys(), renderAlerts()]).catch(reportError);
}

main();
