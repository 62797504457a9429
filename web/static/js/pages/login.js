// /login.html
import { wireAuthForm } from './auth-form.js';

const form = document.getElementById('login-form');
wireAuthForm(form, '/api/v1/users/login', () => {
  const email = form.email.value.trim();
  const password = form.password.value;
  if (!email || !password) throw new Error('Enter your email and password.');
  return { email, password };
});
