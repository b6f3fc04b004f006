// QA view (#/ncrs, #/ncrs/<id>): non-conformance records, their workflow, electronic
// signatures and attachments, and the lots on hold.
//
// The NCR workflow (src/quality/ncr.rs): open → contained → under investigation → disposition
// proposed → approved → closed; cancel and reopen need a reason; a QA approver rejects a
// proposed disposition with a reason or approves it. Approval is a 21 CFR Part 11 electronic
// signature: the dialog shows who signs (printed name), what the signature means and which
// record it binds to, and asks for the password again. The UI then makes the signature (POST
// …/signatures, meaning "approved", with the version the signer was shown: the server refuses
// to sign an NCR that changed since) and approves with it (POST …/transitions, signature_id).

import { api, ApiError } from './api.js';
import {
  h, badge, facts, revealWhenStacked, timeEl, say, sentence, statusLine, errorLine, field, busy, describeError, formatBytes,
  NCR_STATE_LABELS, DISPOSITION_LABELS, MAX_LABEL,
} from './dom.js';
import { can, ncrActions } from './roles.js';

const MEANINGS = { approved: 'Approved', reviewed: 'Reviewed', rejected: 'Rejected' };

export function mount(root, { session, params, navigate }) {
  const listError = errorLine('ncr-list-error');
  const list = h('div', { class: 'ncr-list' });
  const message = statusLine('ncr-message');
  const error = errorLine('ncr-error');
  const body = h('div', { class: 'ncr-body' });
  let selected = null;
  let loadSeq = 0;

  // Filter: open NCRs (default) or all, optionally of one lot.
  const openOnly = h('select', { 'data-testid': 'ncr-filter-open' },
    h('option', { value: 'true', selected: true }, 'Open'), h('option', { value: 'false' }, 'All'));
  const lotFilter = h('input', { type: 'search', 'data-testid': 'ncr-filter-lot', autocomplete: 'off' });
  const filter = h('form', { class: 'filter', role: 'search', 'aria-label': 'Filter NCRs' },
    field('Show', openOnly), field('Lot', lotFilter),
    h('button', { type: 'submit', 'data-testid': 'ncr-filter-apply' }, 'Apply'));
  filter.addEventListener('submit', (e) => { e.preventDefault(); loadList(); });
  openOnly.addEventListener('change', () => loadList());

  const detail = h('div', { class: 'detail', 'data-testid': 'ncr-detail' }, message, error, body);
  const dialog = signatureDialog();
  const lots = lotsPanel();

  root.replaceChildren(h('section', { class: 'view ncrs' },
    h('h1', { tabindex: -1 }, 'Non-conformance records'),
    h('div', { class: 'split' },
      h('aside', { class: 'queue', 'aria-label': 'NCR list' }, filter, listError, list, raiseForm(), lots.element),
      detail),
    dialog.element));

  async function loadList() {
    try {
      const ncrs = await api.get('/ncrs', { open: openOnly.value === 'true' ? 'true' : undefined, lot: lotFilter.value.trim(), limit: 200 });
      list.replaceChildren(ncrs.length === 0
        ? h('p', { class: 'muted' }, openOnly.value === 'true' ? 'No open NCR.' : 'No NCR.')
        : h('ul', { class: 'rows', 'data-testid': 'ncr-list' }, ncrs.map((n) => h('li', {},
          h('a', {
            href: `#/ncrs/${n.id}`, class: 'row', 'data-testid': 'ncr-row', 'data-ncr-id': n.id, 'aria-current': n.id === selected ? 'true' : null,
          },
          h('span', { class: 'row-title' }, `NCR ${n.id} · ${n.title}`),
          h('span', { class: 'row-sub' }, `Lot ${n.lot}`, n.disposition ? ` · ${DISPOSITION_LABELS[n.disposition]}` : ''),
          badge('ncr', n.state, NCR_STATE_LABELS))))));
      say(listError);
    } catch (e) {
      say(listError, describeError(e));
    }
  }

  function raiseForm() {
    const lot = h('input', { required: true, maxlength: MAX_LABEL, autocomplete: 'off', 'data-testid': 'ncr-new-lot' });
    const title = h('input', { required: true, maxlength: MAX_LABEL, autocomplete: 'off', 'data-testid': 'ncr-new-title' });
    const description = h('textarea', { required: true, rows: 3, maxlength: 10000, 'data-testid': 'ncr-new-description' });
    const problem = errorLine('ncr-new-error');
    const form = h('form', { class: 'stacked' },
      field('Lot', lot), field('Title', title), field('Description', description, 'What was found, where, and how much product is affected.'),
      problem, h('button', { type: 'submit', 'data-testid': 'ncr-new-submit' }, 'Raise NCR'));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      say(problem);
      await busy(form, async () => {
        try {
          const ncr = await api.post('/ncrs', { lot: lot.value.trim(), title: title.value.trim(), description: description.value.trim() });
          form.reset();
          await loadList();
          navigate(`#/ncrs/${ncr.id}`);
        } catch (err) {
          say(problem, describeError(err));
        }
      });
    });
    return h('details', { class: 'panel' }, h('summary', {}, 'Raise an NCR'), form);
  }

  async function loadNcr(id, { keepMessages = false } = {}) {
    const seq = ++loadSeq;
    if (!keepMessages) { say(message); say(error); }
    if (id === null) {
      body.replaceChildren(h('p', { class: 'muted placeholder' }, 'Select an NCR from the list.'));
      return;
    }
    if (!keepMessages) body.replaceChildren(h('p', { class: 'muted' }, `Loading NCR ${id}…`));
    try {
      const record = await api.get(`/ncrs/${id}`);
      if (seq !== loadSeq) return;
      body.replaceChildren(renderNcr(record));
    } catch (e) {
      if (seq !== loadSeq) return;
      body.replaceChildren();
      say(error, describeError(e));
    }
  }

  function renderNcr({ ncr, history, signatures, attachments }) {
    return h('article', { class: 'ncr', 'aria-labelledby': 'ncr-title' },
      h('header', { class: 'title-row' },
        h('h2', { id: 'ncr-title', tabindex: -1 }, `NCR ${ncr.id} · ${ncr.title}`),
        h('span', { 'data-testid': 'ncr-state', 'data-state': ncr.state }, badge('ncr', ncr.state, NCR_STATE_LABELS))),
      facts([
        ['Lot', ncr.lot],
        ['Line', ncr.line],
        ['Disposition', h('span', { 'data-testid': 'ncr-disposition', 'data-disposition': ncr.disposition ?? '' },
          ncr.disposition ? DISPOSITION_LABELS[ncr.disposition] : 'None proposed')],
        ['Raised by', ncr.created_by],
        ['Raised', timeEl(ncr.created_at_ms)],
        ['Source', ncr.source],
        ['Version', ncr.version],
      ]),
      h('p', { class: 'description' }, ncr.description),
      actionsPanel(ncr, proposerOf(history)),
      historyTable(history),
      signatureList(signatures, history),
      attachmentsPanel(ncr, attachments));
  }

  /** Who proposed the disposition now standing (the history's last proposal). */
  function proposerOf(history) {
    return history.filter((t) => t.action === 'propose').at(-1)?.actor_username ?? null;
  }

  function actionsPanel(ncr, proposer) {
    // Four eyes: the server refuses an approval (and its signature) by the proposer.
    const own = ncr.state === 'disposition_proposed' && proposer === session.username;
    const actions = ncrActions(ncr.state, session.role).filter((a) => !(own && a.action === 'approve'));
    const fourEyes = own && session.role === 'qa_approver'
      ? h('p', { class: 'muted', 'data-testid': 'ncr-own-proposal' },
        'You proposed this disposition: another QA approver approves it.')
      : null;
    if (actions.length === 0) {
      return h('p', { class: 'muted', 'data-testid': 'ncr-actions' }, ncr.state === 'disposition_proposed'
        ? 'A QA approver approves or rejects the proposed disposition.'
        : 'No workflow step is open to your role in this state.');
    }
    const reason = actions.some((a) => a.needsReason)
      ? h('textarea', { rows: 2, maxlength: 2000, 'data-testid': 'ncr-reason' })
      : null;
    const disposition = actions.some((a) => a.needsDisposition)
      ? h('select', { 'data-testid': 'ncr-disposition-select' },
        h('option', { value: '' }, 'Choose…'),
        Object.entries(DISPOSITION_LABELS).map(([value, label]) => h('option', { value }, label)))
      : null;
    const group = h('div', { class: 'decision', role: 'group', 'aria-label': 'Workflow', 'data-testid': 'ncr-actions' });
    const buttons = actions.map((a) => h('button', {
      type: 'button',
      class: a.action === 'approve' ? 'primary' : a.action === 'cancel' ? 'danger' : '',
      'data-testid': `ncr-action-${a.action}`,
      onClick: () => (a.needsSignature ? dialog.open(ncr) : transition(ncr, a, group, reason, disposition)),
    }, a.label));
    group.append(
      fourEyes ?? '',
      disposition ? field('Disposition to propose', disposition) : '',
      reason ? field('Reason', reason, 'Required to cancel, reopen or reject a disposition. Kept in the audit trail.') : '',
      h('div', { class: 'buttons' }, buttons),
    );
    return group;
  }

  async function transition(ncr, a, group, reason, disposition) {
    say(message); say(error);
    const step = { action: a.action };
    if (a.needsDisposition) {
      if (!disposition.value) {
        say(error, 'Choose the disposition to propose.');
        disposition.focus();
        return;
      }
      step.disposition = disposition.value;
    }
    if (a.needsReason) {
      if (!reason.value.trim()) {
        say(error, `Write the reason: "${a.label}" needs one on record.`);
        reason.focus();
        return;
      }
      step.reason = reason.value.trim();
    }
    await busy(group, async () => {
      try {
        const after = await api.post(`/ncrs/${ncr.id}/transitions`, step);
        say(message, `NCR ${ncr.id} is now ${NCR_STATE_LABELS[after.state].toLowerCase()}.`);
      } catch (e) {
        say(error, describeError(e));
      }
    });
    await Promise.all([loadNcr(ncr.id, { keepMessages: true }), loadList(), lots.load()]);
  }

  function historyTable(history) {
    return h('section', { class: 'panel', 'aria-labelledby': 'ncr-history-title' },
      h('h3', { id: 'ncr-history-title' }, 'History'),
      history.length === 0 ? h('p', { class: 'muted' }, 'No workflow step yet.')
        : h('div', { class: 'scroll' }, h('table', { 'data-testid': 'ncr-history' },
          h('thead', {}, h('tr', {}, ['When', 'Step', 'State', 'Disposition', 'By', 'Reason', 'Signature']
            .map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, history.map((t) => h('tr', { 'data-action': t.action },
            h('td', {}, timeEl(t.at_ms)),
            h('td', {}, t.action.replaceAll('_', ' ')),
            h('td', {}, `${NCR_STATE_LABELS[t.from] ?? t.from} → ${NCR_STATE_LABELS[t.to] ?? t.to}`),
            h('td', {}, t.disposition ? DISPOSITION_LABELS[t.disposition] : ''),
            h('td', { 'data-testid': 'ncr-history-actor' }, t.actor_full_name ? `${t.actor_full_name} (${t.actor_username})` : t.actor_username),
            h('td', {}, t.reason ?? ''),
            h('td', {}, t.signature_id !== null ? `#${t.signature_id}` : '')))))));
  }

  // An "approved" signature counts only where a history step used it: one made for an approval
  // that was then refused (the NCR changed, another approver was first) is shown as not applied,
  // so that the record never reads as approved by it.
  function signatureList(signatures, history) {
    const applied = new Set(history.map((t) => t.signature_id).filter((id) => id !== null));
    return h('section', { class: 'panel', 'aria-labelledby': 'ncr-signatures-title' },
      h('h3', { id: 'ncr-signatures-title' }, 'Electronic signatures'),
      signatures.length === 0 ? h('p', { class: 'muted' }, 'Not signed.')
        : h('ul', { class: 'signatures', 'data-testid': 'ncr-signatures' }, signatures.map((s) => {
          const unused = s.meaning === 'approved' && !applied.has(s.id);
          return h('li', {
            'data-testid': 'ncr-signature', 'data-signature-id': s.id, 'data-meaning': s.meaning, 'data-applied': String(!unused),
          },
          h('strong', { class: 'signer' }, s.full_name), ` (${s.username}) · `,
          h('span', { class: 'meaning' }, MEANINGS[s.meaning] ?? s.meaning), ' · ', timeEl(s.signed_at_ms),
          unused ? h('span', { class: 'muted', 'data-testid': 'ncr-signature-unused' }, ' · not applied: no approval took place with it') : null,
          h('span', { class: 'hash' }, `Signature #${s.id}, record hash `, h('code', { title: s.record_hash }, s.record_hash.slice(0, 16))));
        })));
  }

  function attachmentsPanel(ncr, attachments) {
    const file = h('input', { type: 'file', 'data-testid': 'attach-file' });
    const problem = errorLine('attach-error');
    const form = h('form', { class: 'inline' }, field('File to attach', file),
      h('button', { type: 'submit', 'data-testid': 'attach-submit' }, 'Upload'), problem);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      say(problem);
      if (!file.files.length) {
        say(problem, 'Choose a file to attach.');
        return;
      }
      const data = new FormData();
      data.append('file', file.files[0]);
      await busy(form, async () => {
        try {
          const added = await api.upload(`/ncrs/${ncr.id}/attachments`, data);
          say(message, `Attached ${added.name} to NCR ${ncr.id}.`);
          await loadNcr(ncr.id, { keepMessages: true });
        } catch (err) {
          say(problem, describeError(err));
        }
      });
    });
    return h('section', { class: 'panel', 'aria-labelledby': 'ncr-attachments-title' },
      h('h3', { id: 'ncr-attachments-title' }, 'Attachments'),
      attachments.length === 0 ? h('p', { class: 'muted' }, 'No file attached.')
        : h('ul', { class: 'attachments', 'data-testid': 'ncr-attachments' }, attachments.map((a) => h('li', { 'data-testid': 'ncr-attachment' },
          h('a', { href: a.url, download: a.name }, a.name), ` · ${formatBytes(a.size)} · ${a.added_by} · `, timeEl(a.added_at_ms)))),
      // Evidence is taken until QA approves: the approved record is final (reopen to add).
      ['approved', 'closed', 'cancelled'].includes(ncr.state)
        ? h('p', { class: 'muted', 'data-testid': 'attach-closed' }, 'Files are attached until QA approves; reopen the NCR to add more.')
        : form);
  }

  // The e-signature dialog. It is filled in for the NCR when opened and forgets the password
  // whenever it closes.
  function signatureDialog() {
    const signer = h('dd', { 'data-testid': 'sign-signer' });
    const meaning = h('dd', { 'data-testid': 'sign-meaning' });
    const record = h('dd', { 'data-testid': 'sign-record' });
    const password = h('input', { type: 'password', autocomplete: 'current-password', required: true, 'data-testid': 'sign-password' });
    const problem = errorLine('sign-error');
    const cancel = h('button', { type: 'button', 'data-testid': 'sign-cancel', onClick: () => element.close() }, 'Cancel');
    const submit = h('button', { type: 'submit', class: 'primary', 'data-testid': 'sign-submit' }, 'Sign and approve');
    const form = h('form', { novalidate: true },
      h('h2', { id: 'sign-title' }, 'Electronic signature'),
      h('p', {}, 'You are signing this record electronically. Your signature is the legally binding equivalent of your handwritten signature (21 CFR Part 11). It is recorded with the date and time, and bound to the record as shown here.'),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Signer'), signer,
        h('dt', {}, 'Meaning'), meaning,
        h('dt', {}, 'Record'), record),
      field('Password', password, 'Enter your password again to sign.'),
      problem,
      h('div', { class: 'buttons' }, cancel, submit));
    const element = h('dialog', { class: 'sign', 'aria-labelledby': 'sign-title', 'data-testid': 'sign-dialog' }, form);
    let signing = null; // The NCR as shown in the dialog.

    element.addEventListener('close', () => { password.value = ''; say(problem); signing = null; });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      say(problem);
      if (!password.value) {
        say(problem, 'Enter your password to sign.');
        password.focus();
        return;
      }
      await busy(form, () => sign(signing));
    });

    /** Whether the NCR is no longer the version shown in the dialog (unknown: no). */
    async function changedSince(ncr) {
      try {
        const now = await api.get(`/ncrs/${ncr.id}`);
        return now.ncr.version !== ncr.version || now.ncr.state !== ncr.state;
      } catch {
        return false;
      }
    }

    async function sign(ncr) {
      // The version shown in the dialog goes with the signature: the server refuses (409) to
      // sign an NCR that changed since, so a signature never binds to content not read.
      let signature;
      try {
        signature = await api.post(`/ncrs/${ncr.id}/signatures`, { password: password.value, meaning: 'approved', version: ncr.version });
      } catch (err) {
        password.value = '';
        // 409: the NCR changed since the dialog opened. A 422 may say the same (its disposition
        // was rejected or the NCR cancelled meanwhile: the state is checked first), or be about
        // the signature itself, which the dialog shows.
        if (err instanceof ApiError && (err.status === 409 || (err.status === 422 && await changedSince(ncr)))) {
          element.close();
          say(error, `NCR ${ncr.id} was changed by someone else while the signature dialog was open, so nothing was signed. ${sentence(describeError(err))} Read the record again; approve it if it is still right.`);
          await Promise.all([loadNcr(ncr.id, { keepMessages: true }), loadList()]);
          return;
        }
        password.focus();
        say(problem, describeError(err));
        return;
      }
      password.value = '';
      try {
        await api.post(`/ncrs/${ncr.id}/transitions`, { action: 'approve', signature_id: signature.id });
      } catch (err) {
        // The dialog closes: signing again would only add another unused signature.
        element.close();
        say(error, `Your signature #${signature.id} was recorded, but the approval was refused. ${sentence(describeError(err))} Read the record again.`);
        await Promise.all([loadNcr(ncr.id, { keepMessages: true }), loadList()]);
        return;
      }
      element.close();
      say(error);
      say(message, `NCR ${ncr.id} approved: ${DISPOSITION_LABELS[ncr.disposition]}, signed by ${signature.full_name}.`);
      await Promise.all([loadNcr(ncr.id, { keepMessages: true }), loadList()]);
    }

    return {
      element,
      open(ncr) {
        signing = ncr;
        say(signer, `${session.full_name} (${session.username})`);
        say(meaning, h('strong', {}, 'Approved'), ` — I approve the proposed disposition “${DISPOSITION_LABELS[ncr.disposition] ?? 'none'}” of NCR ${ncr.id}.`);
        say(record, `NCR ${ncr.id} · ${ncr.title} · lot ${ncr.lot} · disposition ${DISPOSITION_LABELS[ncr.disposition] ?? 'none'} · version ${ncr.version}`);
        element.showModal();
        password.focus();
      },
    };
  }

  // Lots on hold: a held lot may not ship until QA releases it, and the server refuses the
  // release while an NCR against the lot is open.
  function lotsPanel() {
    const listEl = h('div', {});
    const problem = errorLine('lots-error');
    const done = statusLine('lots-message');
    const lot = h('input', { required: true, maxlength: MAX_LABEL, autocomplete: 'off', 'data-testid': 'lot-hold-lot' });
    const reason = h('input', { required: true, maxlength: 2000, autocomplete: 'off', 'data-testid': 'lot-hold-reason' });
    const holdForm = h('form', { class: 'stacked' }, field('Lot', lot), field('Reason', reason),
      h('button', { type: 'submit', 'data-testid': 'lot-hold-submit' }, 'Hold lot'));
    holdForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      say(problem); say(done);
      await busy(holdForm, async () => {
        try {
          const held = await api.post(`/lots/${encodeURIComponent(lot.value.trim())}/hold`, { reason: reason.value.trim() });
          say(done, `Lot ${held.lot} is on hold.`);
          holdForm.reset();
        } catch (err) {
          say(problem, describeError(err));
        }
      });
      await load();
    });

    async function release(name, container) {
      say(problem); say(done);
      await busy(container, async () => {
        try {
          await api.post(`/lots/${encodeURIComponent(name)}/release`);
          say(done, `Lot ${name} is released.`);
        } catch (err) {
          say(problem, describeError(err));
        }
      });
      await load();
    }

    async function load() {
      try {
        const held = await api.get('/lots', { held: 'true' });
        listEl.replaceChildren(held.length === 0 ? h('p', { class: 'muted' }, 'No lot is on hold.')
          : h('ul', { class: 'rows lots', 'data-testid': 'lots-held' }, held.map((l) => {
            const item = h('li', { class: 'lot', 'data-testid': 'held-lot', 'data-lot': l.lot },
              h('span', { class: 'row-title' }, `Lot ${l.lot}`),
              h('span', { class: 'row-sub' }, l.hold_reason ?? '', l.held_by ? ` · ${l.held_by}` : '', ' · ', timeEl(l.held_at_ms)),
              l.open_ncrs.length ? h('span', { class: 'row-sub' }, 'Open NCRs: ',
                l.open_ncrs.map((id, i) => [i ? ', ' : '', h('a', { href: `#/ncrs/${id}` }, `NCR ${id}`)])) : null);
            if (can.releaseLot(session.role)) {
              item.append(h('button', { type: 'button', 'data-testid': 'lot-release', onClick: () => release(l.lot, item) }, 'Release'));
            }
            return item;
          })));
      } catch (err) {
        say(problem, describeError(err));
      }
    }

    const element = h('section', { class: 'panel', 'aria-labelledby': 'lots-title' },
      h('h2', { id: 'lots-title' }, 'Lots on hold'), done, problem, listEl,
      can.holdLot(session.role) ? h('div', { class: 'subpanel' }, h('h3', {}, 'Hold a lot'), holdForm) : null);
    return { element, load };
  }

  function select(id) {
    selected = id;
    list.querySelectorAll('[data-testid="ncr-row"]').forEach((a) => {
      if (Number(a.dataset.ncrId) === id) a.setAttribute('aria-current', 'true'); else a.removeAttribute('aria-current');
    });
    loadNcr(id).then(() => { if (id !== null) revealWhenStacked(detail); });
  }

  selected = params.id ?? null;
  loadList();
  lots.load();
  loadNcr(selected);

  return {
    update(next) { select(next.id ?? null); },
    unmount() { if (dialog.element.open) dialog.element.close(); },
  };
}
