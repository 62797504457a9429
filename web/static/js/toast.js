// Toast notifications for the page modules. The implementation lives in
// /static/js/websocket.js (window.zsToast) so that real-time notifications
// and page notifications share one stack; pages without that script (sign-in,
// sign-up) get the same markup from the fallback below.

function fallbackToast(message, level = 'info', options = {}) {
  let container = document.getElementById('toasts');
  if (!container) {
    container = document.createElement('div');
    container.id = 'toasts';
    container.className = 'toasts';
    container.setAttribute('aria-live', 'polite');
    document.body.appendChild(container);
  }
  const toast = document.createElement('div');
  toast.className = `toast toast-${level}`;
  toast.setAttribute('role', 'status');
  if (options.title) {
    const t = document.createElement('strong');
    t.className = 'toast-title';
    t.textContent = options.title;
    toast.appendChild(t);
  }
  const span = document.createElement('span');
  span.className = 'toast-message';
  span.textContent = String(message);
  toast.appendChild(span);
  container.appendChild(toast);
  setTimeout(() => toast.remove(), options.duration || 7000);
  return toast;
}

/** Shows a toast coloured by level: info | success | warning | error. */
export function toast(message, level = 'info', options = {}) {
  const impl = window.zsToast || fallbackToast;
  return impl(message, level, options);
}
