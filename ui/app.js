// The web UI's entry point: sign-in, the header with the signed-in user and the navigation,
// and the hash router that mounts one view at a time.
//
// Routes: #/tasks[/<id>] (inspectors, QA, admins), #/ncrs[/<id>], #/line and #/inspect (every
// role). A view module exports `mount(root, context)` and returns `{ update(params)?,
// unmount()? }`: `update` takes a new id within the same view (so the list keeps its place),
// `unmount` stops what the view runs in the background (timers, the live stream).
//
// Whenever the server answers 401 — the session ended after `api.session_idle_minutes` without
// activity, or was signed out elsewhere — the current view is unmounted and the sign-in form
// shown; after signing in again the user returns to the page they were on.

import { api, setCsrfToken, onSessionLost } from './api.js';
import {
  h, say, sentence, errorLine, statusLine, field, busy, describeError, ROLE_LABELS,
} from './dom.js';
import { can, homeFor } from './roles.js';
import * as tasks from './tasks.js';
import * as ncrs from './ncrs.js';
import * as line from './line.js';
import * as inspect from './inspect.js';
import { passwordDialog } from './password.js';

const VIEWS = [
  { name: 'tasks', label: 'Tasks', pattern: /^#\/tasks(?:\/(\d+))?$/, allowed: can.inspectTasks, module: tasks },
  { name: 'ncrs', label: 'NCRs and lots', pattern: /^#\/ncrs(?:\/(\d+))?$/, allowed: () => true, module: ncrs },
  { name: 'line', label: 'Line', pattern: /^#\/line$/, allowed: () => true, module: line },
  { name: 'inspect', label: 'Manual inspection', pattern: /^#\/inspect$/, allowed: () => true, module: inspect },
];

const main = document.getElementById('main');
const header = document.getElementById('top');
const nav = document.getElementById('nav');
const who = document.getElementById('who');

let session = null;
let active = null;
let returnTo = null;

// Changing the password ends every session of the user: back to the sign-in form.
const passwords = passwordDialog({
  onChanged: () => {
    session = null;
    setCsrfToken(null);
    returnTo = location.hash;
    showSignIn('Your password has been changed. Sign in with the new one.');
  },
});
document.body.append(passwords.element);

function navigate(hash, { replace = false } = {}) {
  if (location.hash === hash) {
    route();
  } else if (replace) {
    location.replace(hash);
  } else {
    location.hash = hash;
  }
}

function unmount() {
  active?.instance?.unmount?.();
  active = null;
}

function renderHeader() {
  header.hidden = false;
  nav.replaceChildren(...VIEWS.filter((v) => v.allowed(session.role)).map((v) => h('li', {},
    h('a', { href: `#/${v.name}`, 'data-testid': `nav-${v.name}`, 'data-view': v.name }, v.label))));
  const signOut = h('button', { type: 'button', 'data-testid': 'sign-out', onClick: onSignOut }, 'Sign out');
  const password = h('button', { type: 'button', 'data-testid': 'change-password', onClick: () => passwords.open() }, 'Change password');
  who.replaceChildren(
    h('span', { class: 'user' },
      h('span', { class: 'name', 'data-testid': 'header-user' }, session.full_name),
      h('span', { class: 'username' }, session.username)),
    h('span', { class: 'role', 'data-testid': 'header-role', 'data-role': session.role }, ROLE_LABELS[session.role] ?? session.role),
    password,
    signOut);
}

function markNav(name) {
  nav.querySelectorAll('a').forEach((a) => {
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  });
}

function route() {
  if (!session) {
    showSignIn();
    return;
  }
  const hash = location.hash;
  const view = VIEWS.find((v) => v.pattern.test(hash));
  if (!view) {
    navigate(homeFor(session.role), { replace: true });
    return;
  }
  const match = hash.match(view.pattern);
  const params = { id: match[1] ? Number(match[1]) : null };
  markNav(view.name);
  if (!view.allowed(session.role)) {
    unmount();
    main.replaceChildren(h('section', { class: 'view' },
      h('h1', { tabindex: -1 }, 'Not available to your role'),
      h('p', {}, `As ${ROLE_LABELS[session.role] ?? session.role} you do not work on ${view.label.toLowerCase()}. `,
        h('a', { href: homeFor(session.role) }, 'Go to your start page'), '.')));
    main.querySelector('h1').focus();
    return;
  }
  if (active?.view === view) {
    active.instance?.update?.(params);
    return;
  }
  unmount();
  active = { view, instance: view.module.mount(main, { session, params, navigate }) };
  document.title = `${view.label} · linesight`;
  main.querySelector('h1')?.focus();
}

function signedIn(answer) {
  session = answer;
  setCsrfToken(answer.csrf_token);
  renderHeader();
}

function showSignIn(notice) {
  unmount();
  say(document.getElementById('sign-out-error'));
  header.hidden = true;
  if (location.hash && location.hash !== '#/login') returnTo = location.hash;
  // Replaced without a hashchange, so the router does not run again.
  history.replaceState(null, '', '#/login');
  document.title = 'Sign in · linesight';

  const username = h('input', { name: 'username', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false', 'data-testid': 'login-username' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true, 'data-testid': 'login-password' });
  const error = errorLine('login-error');
  const info = statusLine('login-notice');
  if (notice) say(info, notice);
  const form = h('form', { class: 'login', novalidate: true, 'data-testid': 'login-form', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Sign in to linesight'),
    info,
    field('User name', username),
    field('Password', password),
    error,
    h('button', { type: 'submit', class: 'primary', 'data-testid': 'login-submit' }, 'Sign in'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    say(error);
    if (!username.value.trim() || !password.value) {
      say(error, 'Enter your user name and password.');
      (username.value.trim() ? password : username).focus();
      return;
    }
    await busy(form, async () => {
      try {
        const answer = await api.post('/session', { username: username.value.trim(), password: password.value }, { unauthorizedIsError: true });
        password.value = '';
        signedIn(answer);
        const target = returnTo && returnTo !== '#/login' ? returnTo : homeFor(answer.role);
        returnTo = null;
        navigate(target, { replace: true });
      } catch (err) {
        if (err.code === 'password_change_due') {
          // An administrator reset the password: it only serves to choose a new one.
          passwords.open({ username: username.value.trim(), password: password.value, notice: 'Your password was reset by an administrator. Choose a new one that only you know.' });
          password.value = '';
          return;
        }
        password.value = '';
        say(error, describeError(err));
        password.focus();
      }
    });
  });
  main.replaceChildren(h('section', { class: 'view signin' }, form));
  username.focus();
}

async function onSignOut() {
  const error = document.getElementById('sign-out-error');
  say(error);
  try {
    await api.delete('/session', { unauthorizedIsError: true });
  } catch (err) {
    // A 401: the session had ended already. Anything else: the server still holds it, and
    // its cookie (which this page cannot clear) would sign the next person at this terminal
    // in as this user, so the user is told and stays signed in until it works.
    if (err.status !== 401) {
      say(error, `You are still signed in. ${sentence(describeError(err))} Reload the page and sign out again.`);
      return;
    }
  }
  session = null;
  setCsrfToken(null);
  returnTo = null;
  history.replaceState(null, '', '#/login');
  showSignIn('You have signed out.');
}

onSessionLost(() => {
  if (!session) return;
  session = null;
  setCsrfToken(null);
  showSignIn('Your session has ended (no activity for a while, or signed out elsewhere). Sign in again to continue.');
});

async function start() {
  window.addEventListener('hashchange', route);
  try {
    signedIn(await api.get('/session', undefined, { unauthorizedIsError: true }));
  } catch (e) {
    showSignIn(e.status === 401 ? null : describeError(e));
    return;
  }
  route();
}

start();
