// The shared header of the signed-in pages: brand, navigation, the signed-in
// user and Sign out. Built with DOM calls (no HTML strings).
import { el, replaceChildren } from './dom.js';
import { api } from './api.js';
import { toast } from './toast.js';

/** The signed-in pages, in navigation order. */
export const NAV = [
  { href: '/dashboard.html', label: 'Dashboard', key: 'dashboard' },
  { href: '/tasks.html', label: 'Tasks', key: 'tasks' },
  { href: '/agents.html', label: 'Agents', key: 'agents' },
  { href: '/analytics.html', label: 'Analytics', key: 'analytics' },
  { href: '/settings.html', label: 'Settings', key: 'settings' },
  { href: '/api-keys.html', label: 'API keys', key: 'api-keys' },
];

/** Signs out: closes the live connection, revokes the session, goes to sign-in. */
export async function signOut() {
  try {
    if (window.zsWebSocket) window.zsWebSocket.disconnect();
    await api('/api/v1/users/logout', { method: 'POST', redirectOn401: false });
  } catch (err) {
    if (err.status !== 401) toast(err.message, 'error');
  }
  location.replace('/login.html');
}

/** Renders the header into #app-header for the page `active`. */
export function renderHeader(user, active) {
  const header = document.getElementById('app-header');
  if (!header) return;
  const menuId = 'primary-nav';
  const toggle = el('button', {
    type: 'button',
    class: 'nav-toggle btn btn-sm',
    'aria-controls': menuId,
    'aria-expanded': 'false',
    text: 'Menu',
  });
  const links = el('ul', { class: 'nav-links' },
    NAV.map((item) => el('li', {},
      el('a', {
        href: item.href,
        class: item.key === active ? 'nav-link is-active' : 'nav-link',
        'aria-current': item.key === active ? 'page' : null,
        text: item.label,
      }))));
  const signOutBtn = el('button', { type: 'button', class: 'btn btn-ghost btn-sm', id: 'sign-out', text: 'Sign out' });
  signOutBtn.addEventListener('click', signOut);
  const theme = el('button', { type: 'button', class: 'btn btn-ghost btn-sm theme-toggle', 'data-theme-toggle': '', text: 'Theme' });
  const userBox = el('div', { class: 'nav-user' },
    theme,
    el('span', { class: 'nav-email', id: 'current-user-email', title: user.full_name || '', text: user.email || '' }),
    user.role === 'admin' ? el('span', { class: 'role-badge', text: 'admin' }) : null,
    signOutBtn);
  const nav = el('nav', { class: 'nav', id: menuId, 'aria-label': 'Main' }, links, userBox);
  toggle.addEventListener('click', () => {
    const open = header.classList.toggle('nav-open');
    toggle.setAttribute('aria-expanded', String(open));
  });
  replaceChildren(header,
    el('div', { class: 'header-inner' },
      el('a', { href: '/dashboard.html', class: 'brand' }, el('span', { class: 'brand-mark', 'aria-hidden': 'true', text: '◆' }), 'ZeroState'),
      toggle,
      nav));
  if (window.zsTheme) window.zsTheme.refresh();
}
