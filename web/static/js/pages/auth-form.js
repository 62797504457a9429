// Shared behaviour of the sign-in and sign-up forms (public pages: no live
// connection here). On success the session cookie is set by the server; the
// token in the answer is not stored anywhere.
import { api } from '../api.js';
import { showFormError } from '../dom.js';

/** Where to go after signing in: a local page from ?next=, else the dashboard. */
export function nextPage() {
  const next = new URLSearchParams(location.search).get('next') || '';
  return /^\/[a-z-]+\.html(\?[^#]*)?$/.test(next) && !/^\/(login|signup|index)\.html/.test(next)
    ? next
    : '/dashboard.html';
}

/**
 * Wires a form: `collect()` returns the body or throws Error(message) for
 * invalid input; the body is POSTed to `path`.
 */
export function wireAuthForm(form, path, collect) {
  const error = document.getElementById('form-error');
  const button = form.querySelector('button[type="submit"]');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    showFormError(error, null);
    let body;
    try {
      body = collect();
    } catch (err) {
      showFormError(error, err.message);
      return;
    }
    button.disabled = true;
    try {
      await api(path, { method: 'POST', body, redirectOn401: false });
      // A new session starts its live stream afresh (no position of an earlier user).
      try { sessionStorage.removeItem('zs.ws.cursor'); } catch { /* ignore */ }
      location.assign(nextPage());
    } catch (err) {
      showFormError(error, err.message);
      button.disabled = false;
    }
  });
}
