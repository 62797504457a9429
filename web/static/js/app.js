// Shared start-up of the signed-in pages: find out who is signed in (or go to
// /login.html), draw the header, reveal the page. Also re-exports the helpers
// the page modules use, so a page imports one file.
import { api, ApiError, API_BASE_URL, goToLogin, qs } from './api.js';
import { renderHeader, signOut } from './layout.js';
import { toast } from './toast.js';
import { startRealtimeUi } from './realtime-ui.js';

export { api, ApiError, API_BASE_URL, qs, toast, signOut };
export * from './dom.js';

/** "Who am I", asked again every 2 s while the server cannot be reached. */
async function fetchMe() {
  for (;;) {
    try {
      const res = await fetch(`${API_BASE_URL}/api/v1/users/me`, { credentials: 'same-origin', cache: 'no-store' });
      if (res.status === 200) {
        const body = await res.json();
        return { status: 200, user: body.user || body };
      }
      if (res.status === 401) return { status: 401, user: null };
    } catch { /* server unreachable: ask again */ }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

/**
 * Starts a signed-in page: resolves to the user ({id, email, full_name, role, …})
 * after drawing the header; a signed-out visitor goes to /login.html.
 */
export async function initPage(active) {
  startRealtimeUi();
  const result = await fetchMe();
  if (result.status !== 200 || !result.user) {
    goToLogin();
    return new Promise(() => {}); // the page is going away
  }
  const user = result.user;
  renderHeader(user, active);
  document.body.classList.remove('is-loading');
  return user;
}

/**
 * Calls fn(data, message) for every real-time message of `type`
 * (DOM event `zs:<type>` dispatched by websocket.js).
 */
export function onRealtime(type, fn) {
  document.addEventListener(`zs:${type}`, (event) => fn(event.detail, event.message));
}

/**
 * The user's recent `system` messages from the server's message history, newest
 * first: [{message, level, category, at}]. The same list in every tab and device.
 */
export async function fetchNotifications(limit = 50) {
  const body = await api(`/api/v1/notifications?limit=${limit}`);
  return (body && Array.isArray(body.notifications)) ? body.notifications : [];
}

/** Shows an API error (or any error) to the user as a toast. */
export function reportError(err) {
  if (err instanceof ApiError && err.status === 401) return;
  console.error(err);
  toast(err.message || String(err), 'error');
}
