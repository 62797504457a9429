// /agents.html: every agent with its online state (live), the user's own agents
// with edit and delete, and registration that shows the agent token once with
// the command that runs the reference agent.
import { initPage, api, el, replaceChildren, debounce, onRealtime, timeAgo, showFormError, qs, reportError, copyText, confirmButton, toast, newestOnly, STALE } from '../app.js';
import { statusBadge } from '../task-view.js';

let me = null;
const editing = new Set();
const mine = document.getElementById('my-agents');
const others = document.getElementById('other-agents');
const searchForm = document.getElementById('agent-search');
const form = document.getElementById('agent-form');
const formError = document.getElementById('agent-form-error');
const tokenBox = document.getElementById('agent-token-box');
const tokenInput = document.getElementById('agent-token');
const execInput = document.getElementById('agent-exec');
const commandInput = document.getElementById('agent-command');

function parseCapabilities(text) {
  return [...new Set(String(text).split(',').map((c) => c.trim()).filter(Boolean))];
}

function canEdit(agent) {
  return me && (agent.owner_id === me.id || me.role === 'admin');
}

function agentCard(agent) {
  const status = agent.status || 'offline';
  const caps = el('ul', { class: 'chips', 'aria-label': 'Capabilities' },
    (agent.capabilities || []).map((c) => el('li', { class: 'chip', text: c })));
  const card = el('li', { class: 'agent-card', dataset: { agentId: agent.id, agentStatus: status } },
    el('div', { class: 'agent-head' },
      el('h3', { class: 'agent-name', text: agent.name }),
      el('span', { class: 'badge', dataset: { status, agentStatusBadge: '' }, text: status })),
    agent.description ? el('p', { class: 'agent-desc', text: agent.description }) : null,
    caps,
    el('p', { class: 'agent-meta' },
      agent.shared ? el('span', { class: 'chip', text: 'shared' }) : el('span', { text: 'private' }),
      el('span', { text: `${agent.tasks_completed ?? 0} completed` }),
      el('span', { text: `${agent.tasks_failed ?? 0} failed` }),
      el('span', { text: `last seen ${timeAgo(agent.last_seen_at)}` })));
  card.append(tasksDisclosure(agent));
  if (canEdit(agent)) card.append(editControls(agent, card));
  return card;
}

/** The agent's current and recent tasks, loaded when opened (and kept live while open). */
function tasksDisclosure(agent) {
  const body = el('div', { class: 'agent-tasks-body' }, el('p', { class: 'muted', text: 'Loading…' }));
  const details = el('details', { class: 'agent-tasks', dataset: { agentTasks: agent.id } },
    el('summary', { text: `Tasks (${agent.current_tasks ?? 0} running now)` }), body);
  details.addEventListener('toggle', () => { if (details.open) loadAgentTasks(agent.id, body).catch(reportError); });
  return details;
}

function taskLinks(tasks) {
  return el('ul', {}, tasks.map((t) => el('li', { dataset: { taskId: t.id, taskStatus: t.status } },
    statusBadge(t.status),
    el('a', { href: `/tasks.html#${t.id}`, text: t.query || t.id }),
    el('time', { class: 'muted', datetime: t.created_at || '', text: timeAgo(t.created_at) }))));
}

/** Per open task list: its newest fetch (live events refresh it often). */
const agentTaskFetches = new WeakMap();

async function loadAgentTasks(id, body) {
  const all = me && me.role === 'admin' ? 'true' : null;
  if (!agentTaskFetches.has(body)) {
    agentTaskFetches.set(body, newestOnly((agentId) => Promise.all([
      api(`/api/v1/tasks${qs({ agent_id: agentId, status: 'running', limit: 20, all })}`),
      api(`/api/v1/tasks${qs({ agent_id: agentId, limit: 5, all })}`),
    ])));
  }
  const answer = await agentTaskFetches.get(body)(id);
  if (answer === STALE) return;
  const [running, recent] = answer;
  const now = (running && running.tasks) || [];
  const last = ((recent && recent.tasks) || []).filter((t) => !now.some((r) => r.id === t.id));
  replaceChildren(body,
    el('h4', { text: 'Running now' }), now.length ? taskLinks(now) : el('p', { class: 'empty', text: 'Nothing running' }),
    el('h4', { text: 'Recent' }), last.length ? taskLinks(last) : el('p', { class: 'empty', text: 'No recent tasks' }));
}

function editControls(agent, card) {
  const edit = el('button', { type: 'button', class: 'btn btn-ghost btn-sm', text: 'Edit', 'aria-expanded': 'false' });
  const del = confirmButton('Delete', 'Confirm delete', async () => {
    try {
      await api(`/api/v1/agents/${encodeURIComponent(agent.id)}`, { method: 'DELETE' });
      card.remove();
      reload();
    } catch (err) {
      reportError(err);
    }
  });
  const rotate = confirmButton('New token', 'Confirm: old token stops', async () => {
    try {
      const res = await api(`/api/v1/agents/${encodeURIComponent(agent.id)}/token`, { method: 'POST' });
      showToken(res.agent_token, agent.id);
      toast(`New token for ${agent.name}: the old one no longer works`, 'warning', { title: 'Agent token' });
    } catch (err) {
      reportError(err);
    }
  }, 'btn btn-sm');
  rotate.setAttribute('aria-label', `New token for ${agent.name}`);
  let shared = null;
  if (me && me.role === 'admin') {
    const box = el('input', { type: 'checkbox', checked: Boolean(agent.shared), dataset: { sharedSwitch: agent.id } });
    box.addEventListener('change', async () => {
      box.disabled = true;
      try {
        await api(`/api/v1/agents/${encodeURIComponent(agent.id)}`, { method: 'PUT', body: { shared: box.checked } });
        reload();
      } catch (err) {
        box.checked = !box.checked;
        reportError(err);
      } finally {
        box.disabled = false;
      }
    });
    shared = el('label', { class: 'check' }, box, ' Shared with every user');
  }
  const idBase = `agent-${agent.id}`;
  const editForm = el('form', { class: 'form agent-edit', hidden: true, novalidate: true },
    el('div', { class: 'field' }, el('label', { for: `${idBase}-name`, text: 'Name' }),
      el('input', { id: `${idBase}-name`, name: 'name', type: 'text', required: true, value: agent.name || '' })),
    el('div', { class: 'field' }, el('label', { for: `${idBase}-desc`, text: 'Description' }),
      el('input', { id: `${idBase}-desc`, name: 'description', type: 'text', value: agent.description || '' })),
    el('div', { class: 'field' }, el('label', { for: `${idBase}-caps`, text: 'Capabilities (comma-separated)' }),
      el('input', { id: `${idBase}-caps`, name: 'capabilities', type: 'text', value: (agent.capabilities || []).join(', ') })),
    el('p', { class: 'form-error', role: 'alert', hidden: true }),
    el('div', { class: 'form-actions' },
      el('button', { type: 'submit', class: 'btn btn-primary btn-sm', text: 'Save' }),
      el('button', { type: 'button', class: 'btn btn-ghost btn-sm edit-cancel', text: 'Cancel' })));
  const toggle = (open) => {
    editForm.hidden = !open;
    edit.setAttribute('aria-expanded', String(open));
    if (open) { editing.add(agent.id); editForm.elements.name.focus(); } else editing.delete(agent.id);
  };
  edit.addEventListener('click', () => toggle(editForm.hidden));
  editForm.querySelector('.edit-cancel').addEventListener('click', () => toggle(false));
  editForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const error = editForm.querySelector('.form-error');
    const name = editForm.elements.name.value.trim();
    if (!name) { showFormError(error, 'The name cannot be empty.'); return; }
    try {
      await api(`/api/v1/agents/${encodeURIComponent(agent.id)}`, {
        method: 'PUT',
        body: { name, description: editForm.elements.description.value.trim(), capabilities: parseCapabilities(editForm.elements.capabilities.value) },
      });
      toggle(false);
      reload();
    } catch (err) {
      showFormError(error, err.message);
    }
  });
  return el('div', { class: 'agent-controls' }, el('div', { class: 'btn-row' }, edit, rotate, del), shared, editForm);
}

const fetchAgents = newestOnly((query) => api(`/api/v1/agents${qs(query)}`));

async function loadAgents() {
  const q = searchForm.q.value.trim();
  const capability = searchForm.capability.value.trim();
  const body = await fetchAgents({ q, capability, limit: 200, all: me && me.role === 'admin' ? 'true' : null });
  if (body === STALE) return;
  const agents = (body && body.agents) || [];
  const own = agents.filter((a) => me && a.owner_id === me.id);
  const rest = agents.filter((a) => !(me && a.owner_id === me.id));
  // Keep a card that is being edited (or whose Delete is armed) as it is, so a
  // live refresh does not eat the user's typing; websocket.js still patches its status.
  const render = (ul, items) => {
    const busy = (c) => editing.has(c.dataset.agentId) || c.querySelector('.is-armed') || c.querySelector('details[open]');
    const keep = new Map([...ul.querySelectorAll('[data-agent-id]')].filter(busy).map((c) => [c.dataset.agentId, c]));
    replaceChildren(ul, items.map((a) => keep.get(a.id) || agentCard(a)));
  };
  render(mine, own);
  render(others, rest);
  const filtered = q || capability;
  const myEmpty = document.getElementById('my-agents-empty');
  myEmpty.hidden = own.length > 0;
  myEmpty.textContent = filtered ? 'None of your agents match' : 'You have no agents yet';
  const otherEmpty = document.getElementById('other-agents-empty');
  otherEmpty.hidden = rest.length > 0;
  otherEmpty.textContent = filtered ? 'No agents match' : 'No other agents yet';
  document.getElementById('mine-count').textContent = own.length ? `${own.filter((a) => a.status === 'online').length} of ${own.length} online` : '';
  document.getElementById('others-count').textContent = rest.length ? `${rest.filter((a) => a.status === 'online').length} of ${rest.length} online` : '';
}

/** Shows a token once (after registering or rotating) with the command that runs the agent. */
function showToken(token, agentId) {
  tokenInput.value = token;
  renderCommand();
  tokenBox.hidden = false;
  tokenBox.dataset.registeredAgentId = agentId || '';
  tokenBox.scrollIntoView({ block: 'center' });
  tokenInput.focus();
  tokenInput.select();
}

const reload = debounce(() => { loadAgents().catch(reportError); }, 300);

function renderCommand() {
  const exec = execInput.value.trim() || 'cat';
  const quoted = `"${exec.replace(/(["\\$`])/g, '\\$1')}"`;
  commandInput.value = `zerostate agent run --server ${location.origin} --token ${tokenInput.value} --exec ${quoted}`;
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  showFormError(formError, null);
  const name = form.name.value.trim();
  const capabilities = parseCapabilities(form.capabilities.value);
  if (!name) { showFormError(formError, 'Give the agent a name.'); form.name.focus(); return; }
  if (!capabilities.length) { showFormError(formError, 'List at least one capability, e.g. general.'); return; }
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    const res = await api('/api/v1/agents/register', {
      method: 'POST',
      body: { name, description: form.description.value.trim(), capabilities },
    });
    showToken(res.agent_token, res.agent && res.agent.id);
    form.reset();
    reload();
  } catch (err) {
    showFormError(formError, err.message);
  } finally {
    button.disabled = false;
  }
});

execInput.addEventListener('input', renderCommand);
for (const [btnId, input] of [['copy-agent-token', tokenInput], ['copy-agent-command', commandInput]]) {
  document.getElementById(btnId).addEventListener('click', async (event) => {
    const ok = await copyText(input.value);
    event.target.textContent = ok ? 'Copied' : 'Copy failed';
    setTimeout(() => { event.target.textContent = 'Copy'; }, 2000);
  });
}
searchForm.addEventListener('submit', (event) => {
  event.preventDefault();
  loadAgents().catch(reportError);
});

async function main() {
  me = await initPage('agents');
  onRealtime('agent_update', (data) => {
    reload();
    // Open task lists follow the agent's work.
    const open = data && document.querySelector(`details[open][data-agent-tasks="${CSS.escape(data.agent_id || '')}"]`);
    if (open) loadAgentTasks(data.agent_id, open.querySelector('.agent-tasks-body')).catch(() => {});
  });
  onRealtime('task_update', debounce(() => {
    for (const open of document.querySelectorAll('details[open][data-agent-tasks]')) {
      loadAgentTasks(open.dataset.agentTasks, open.querySelector('.agent-tasks-body')).catch(() => {});
    }
  }, 500));
  onRealtime('reset', reload);
  onRealtime('connected', reload); // back from a drop: states may have changed
  await loadAgents().catch(reportError);
}

main();
