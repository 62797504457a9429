// /settings.html: profile, password and (admins only) a system broadcast.
import { initPage, api, showFormError, toast } from '../app.js';

async function main() {
  const me = await initPage('settings');

  const profile = document.getElementById('profile-form');
  const profileError = document.getElementById('profile-error');
  profile.querySelector('#profile-email').value = me.email || '';
  profile.full_name.value = me.full_name || '';
  profile.addEventListener('submit', async (event) => {
    event.preventDefault();
    showFormError(profileError, null);
    const full_name = profile.full_name.value.trim();
    if (!full_name) { showFormError(profileError, 'Enter your full name.'); return; }
    try {
      const res = await api('/api/v1/users/me', { method: 'PUT', body: { full_name } });
      const user = (res && res.user) || res;
      profile.full_name.value = (user && user.full_name) || full_name;
      const email = document.getElementById('current-user-email');
      if (email) email.title = profile.full_name.value;
      toast('Profile saved', 'success');
    } catch (err) {
      showFormError(profileError, err.message);
    }
  });

  const pw = document.getElementById('password-form');
  const pwError = document.getElementById('password-error');
  pw.addEventListener('submit', async (event) => {
    event.preventDefault();
    showFormError(pwError, null);
    const current = pw.querySelector('#current-password').value;
    const next = pw.querySelector('#new-password').value;
    const again = pw.querySelector('#confirm-password').value;
    if (!current) { showFormError(pwError, 'Enter your current password.'); return; }
    if (next.length < 8) { showFormError(pwError, 'The new password needs at least 8 characters.'); return; }
    if (next !== again) { showFormError(pwError, 'The two new passwords differ.'); return; }
    try {
      await api('/api/v1/users/me/password', { method: 'PUT', body: { current_password: current, new_password: next }, redirectOn401: false });
      pw.reset();
      toast('Password changed. Your other sessions were signed out.', 'success');
    } catch (err) {
      showFormError(pwError, err.message);
    }
  });

  if (me.role !== 'admin') return; // the broadcast form stays hidden (and the API answers 403 anyway)
  const section = document.getElementById('broadcast-section');
  section.hidden = false;
  const form = document.getElementById('broadcast-form');
  const error = document.getElementById('broadcast-error');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    showFormError(error, null);
    const message = form.querySelector('#broadcast-message').value.trim();
    const level = form.querySelector('#broadcast-level').value;
    if (!message) { showFormError(error, 'Write the message to send.'); return; }
    const button = document.getElementById('broadcast-submit');
    button.disabled = true;
    try {
      const res = await api('/api/v1/ws/broadcast', { method: 'POST', body: { type: 'system', data: { message, level } } });
      form.querySelector('#broadcast-message').value = '';
      const n = res && typeof res.delivered === 'number' ? res.delivered : null;
      toast(n === null ? 'Broadcast sent' : `Broadcast sent to ${n} connection${n === 1 ? '' : 's'}`, 'info', { duration: 4000 });
    } catch (err) {
      showFormError(error, err.message);
    } finally {
      button.disabled = false;
    }
  });
}

main();
