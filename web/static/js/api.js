// ZeroState API client for the page modules: same-origin fetch with the session
// cookie, JSON in and out, and the contract's error shape turned into ApiError.

/** Base URL of the API. Empty: the same origin that served the page. */
export const API_BASE_URL = '';

/** An error answer of the API: `status`, `code` (the `error` field) and a readable `message`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

/** Sends the browser to the sign-in page, remembering where it was. */
export function goToLogin() {
  const next = location.pathname + location.search;
  location.replace('/login.html?next=' + encodeURIComponent(next));
}

/**
 * Calls the API. `body` is sent as JSON. A 401 sends the browser to the
 * sign-in page unless `redirectOn401` is false (the sign-in form itself).
 * Resolves to the parsed JSON (null for 204), rejects with ApiError.
 */
export async function api(path, { method = 'GET', body, redirectOn401 = true, signal } = {}) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store', signal };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(API_BASE_URL + path, init);
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    throw new ApiError(0, 'network_error', 'Cannot reach the server. Check your connection and try again.');
  }
  if (res.status === 401 && redirectOn401) {
    goToLogin();
    throw new ApiError(401, 'unauthorized', 'Your session has ended. Please sign in again.');
  }
  if (res.status === 204) return null;
  let json = null;
  const text = await res.text();
  if (text) {
    try { json = JSON.parse(text); } catch { json = null; }
  }
  if (!res.ok) {
    const code = (json && json.error) || `http_${res.status}`;
    let message = (json && json.message) || `Request failed (${res.status})`;
    if (res.status === 429) {
      const retry = res.headers.get('Retry-After');
      if (retry && !(json && json.message)) message = `Too many attempts. Try again in ${retry} s.`;
    }
    throw new ApiError(res.status, code, message);
  }
  return json;
}

/** Builds a query string from an object, skipping empty values. */
export function qs(params) {
  const sp = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') sp.set(k, String(v));
  }
  const s = sp.toString();
  return s ? `?${s}` : '';
}
