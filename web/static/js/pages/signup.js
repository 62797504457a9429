// /signup.html
import { wireAuthForm } from './auth-form.js';

const form = document.getElementById('signup-form');
wireAuthForm(form, '/api/v1/users/register', () => {
  const full_name = form.full_name.value.trim();
  const email = form.email.value.trim();
  const password = form.password.value;
  if (!full_name) throw new Error('Enter your full name.');
  if (!email || !form.email.checkValidity()) throw new Error('Enter a valid email address.');
  if (password.length < 8) throw new Error('The password needs at least 8 characters.');
  return { full_name, email, password };
});
