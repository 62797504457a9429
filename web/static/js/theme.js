/*!
 * ZeroState colour theme (/static/js/theme.js), loaded in <head> of every page so the
 * chosen theme applies before the first paint.
 *
 * Without a choice the pages follow the system (`prefers-color-scheme`, done in CSS
 * alone). A button with [data-theme-toggle] switches between light and dark and
 * remembers the choice in localStorage ("zs.theme"). A classic script, so that it runs
 * before the stylesheet is applied; no inline script is needed (strict CSP).
 */
(function () {
    'use strict';
    var KEY = 'zs.theme';
    var root = document.documentElement;

    function stored() {
        try {
            var v = localStorage.getItem(KEY);
            return v === 'light' || v === 'dark' ? v : null;
        } catch (e) {
            return null;
        }
    }

    function systemTheme() {
        return window.matchMedia && window.matchMedia('(prefers-color-scheme: light)').matches ? 'light' : 'dark';
    }

    /** The theme in effect: the user's choice, else the system's. */
    function current() {
        return stored() || systemTheme();
    }

    function apply() {
        var choice = stored();
        if (choice) root.dataset.theme = choice; else delete root.dataset.theme;
        var theme = current();
        var buttons = document.querySelectorAll('[data-theme-toggle]');
        for (var i = 0; i < buttons.length; i += 1) {
            var next = theme === 'dark' ? 'light' : 'dark';
            buttons[i].textContent = next === 'light' ? 'Light theme' : 'Dark theme';
            buttons[i].setAttribute('aria-label', 'Switch to the ' + next + ' theme');
            buttons[i].dataset.currentTheme = theme;
        }
    }

    /** Sets the theme ('light' | 'dark'), or follows the system again with null. */
    function set(theme) {
        try {
            if (theme) localStorage.setItem(KEY, theme); else localStorage.removeItem(KEY);
        } catch (e) { /* private mode: the choice lasts for this page only */ }
        if (theme) root.dataset.theme = theme; else delete root.dataset.theme;
        apply();
        document.dispatchEvent(new CustomEvent('zs:theme', { detail: { theme: current() } }));
    }

    apply();
    document.addEventListener('click', function (event) {
        var button = event.target.closest && event.target.closest('[data-theme-toggle]');
        if (button) set(current() === 'dark' ? 'light' : 'dark');
    });
    document.addEventListener('DOMContentLoaded', apply);
    if (window.matchMedia) {
        var mq = window.matchMedia('(prefers-color-scheme: light)');
        if (mq.addEventListener) mq.addEventListener('change', apply);
    }
    window.addEventListener('storage', function (event) { if (event.key === KEY) apply(); });
    window.zsTheme = { current: current, set: set, refresh: apply };
})();
