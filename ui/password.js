// The dialog in which users change their own password: signed in (Change password in the
// header), or at sign-in when an administrator reset it (the reset password signs nobody in; it
// only serves to choose a new one, sent with the user name). The server checks the current
// password as at sign-in (a wrong one counts towards the lockout) and the new one against the
// password rules, then ends every session of the user, this one included: the UI goes back to
// the sign-in form. The fields are emptied whenever the dialog closes.

import { api } from './api.js';
import { h, say, errorLine, field, busy, describeError } from './dom.js';

/** The dialog; `onChanged()` runs once the password is changed (the session has ended). */
export function passwordDialog({ onChanged }) {
  const input = (testid, autocomplete) => h('input', { type: 'password', autocomplete, required: true, 'data-testid': testid });
  const current = input('password-current', 'current-password');
  const fresh = input('password-new', 'new-password');
  const again = input('password-again', 'new-password');
  const problem = errorLine('password-error');
  const reason = h('p', { class: 'status', 'data-testid': 'password-reason' });
  let username = null; // Set when changing a reset password at sign-in (no session).
  const intro = h('p', {}, 'Your password is also your electronic signature: choose one only you know. After the change, sign in again with the new password.');
  const cancel = h('button', { type: 'button', 'data-testid': 'password-cancel', onClick: () => element.close() }, 'Cancel');
  const submit = h('button', { type: 'submit', class: 'primary', 'data-testid': 'password-submit' }, 'Change password');
  const form = h('form', { novalidate: true },
    h('h2', { id: 'password-title' }, 'Change your password'),
    reason,
    intro,
    field('Current password', current),
    field('New password', fresh, 'At least 8 characters.'),
    field('New password again', again),
    problem,
    h('div', { class: 'buttons' }, cancel, submit));
  const element = h('dialog', { class: 'sign', 'aria-labelledby': 'password-title', 'data-testid': 'password-dialog' }, form);

  element.addEventListener('close', () => {
    for (const f of [current, fresh, again]) f.value = '';
    say(problem);
    say(reason);
    username = null;
  });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    say(problem);
    const missing = [current, fresh, again].find((f) => !f.value);
    if (missing) {
      say(problem, 'Fill in all three fields.');
      missing.focus();
      return;
    }
    if (fresh.value !== again.value) {
      say(problem, 'The two new passwords differ.');
      again.value = '';
      again.focus();
      return;
    }
    await busy(form, async () => {
      try {
        const change = { current_password: current.value, new_password: fresh.value };
        if (username) change.username = username;
        await api.post('/session/password', change, { unauthorizedIsError: true });
        element.close();
        onChanged();
      } catch (err) {
        // The server names the field at fault; said here in the dialog's own words.
        const detail = (err.detail ?? '').replace(/^[a-z_]+:\s*/, '');
        say(problem, err.field === 'current_password'
          ? 'Wrong current password: the password was not changed.'
          : err.field === 'new_password' ? `New password: ${detail}` : describeError(err));
        const wrong = err.field === 'current_password' ? current : fresh;
        wrong.value = '';
        if (wrong === fresh) again.value = '';
        wrong.focus();
      }
    });
  });
  return {
    element,
    /**
     * Opens the dialog: for the signed-in user, or with `due` ({ username, password, notice })
     * for a reset password typed at sign-in, which it fills in.
     */
    open(due) {
      element.showModal();
      if (due) {
        username = due.username;
        current.value = due.password;
        say(reason, due.notice);
        fresh.focus();
      } else {
        current.focus();
      }
    },
  };
}
