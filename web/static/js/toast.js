// Toast notifications: the one implementation, for the page modules and for the
// real-time reactions (realtime-ui.js). A toast is `.toast.toast-<level>` with
// role="status" inside #toasts; all text goes through textContent.
//
// Toasts sit in a dock at the bottom of the screen (left of the status indicator on
// wide screens) and the page keeps room for them at its end (body.has-toasts), so they
// never hide a control that cannot be scrolled clear; at most three are shown.

const LEVELS = ['info', 'success', 'warning', 'error'];
const MAX_SHOWN = 3;

function container() {
  let box = document.getElementById('toasts');
  if (!box) {
    box = document.createElement('div');
    box.id = 'toasts';
    box.className = 'toasts';
    box.setAttribute('aria-live', 'polite');
    document.body.appendChild(box);
  }
  return box;
}

function refreshRoom(box) {
  document.body.classList.toggle('has-toasts', box.children.length > 0);
}

/** Shows a toast coloured by level: info | success | warning | error. */
export function toast(message, level = 'info', options = {}) {
  const lvl = LEVELS.includes(level) ? level : 'info';
  const box = container();
  const node = document.createElement('div');
  node.className = `toast toast-${lvl}`;
  node.setAttribute('role', 'status');
  if (options.category) node.dataset.category = String(options.category);
  if (options.title) {
    const title = document.createElement('strong');
    title.className = 'toast-title';
    title.textContent = String(options.title);
    node.appendChild(title);
  }
  const text = document.createElement('span');
  text.className = 'toast-message';
  text.textContent = String(message ?? '');
  node.appendChild(text);
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'toast-close';
  close.setAttribute('aria-label', 'Dismiss notification');
  close.textContent = '×';
  const remove = () => { node.remove(); refreshRoom(box); };
  close.addEventListener('click', remove);
  node.appendChild(close);
  box.appendChild(node);
  while (box.children.length > MAX_SHOWN) box.removeChild(box.firstChild);
  refreshRoom(box);
  const ttl = options.duration || (lvl === 'error' || lvl === 'warning' ? 10000 : 6000);
  setTimeout(() => {
    node.classList.add('toast-leaving');
    setTimeout(remove, 300);
  }, ttl);
  return node;
}
