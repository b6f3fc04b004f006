// Inspector view (#/tasks, #/tasks/<id>): the queue of secondary-inspection tasks the rules
// opened (machine rejects, scores near the threshold, acceptance samples) and, for the task
// selected, the inspection with its image and heat map, and the decision buttons.
//
// The workflow (src/quality/task.rs): an inspector claims a pending task, then confirms the
// defect, overrides it to good (a comment is required), escalates it to QA (comment
// required) or releases it back to the queue. Only the claimant decides a claimed task; an
// escalated task is decided by a QA approver. The buttons offered follow these rules; the
// server enforces them and its refusal is shown as it words it.

import { api } from './api.js';
import {
  h, badge, facts, revealWhenStacked, say, statusLine, errorLine, field, busy, describeError,
  TASK_STATE_LABELS, OPENING_REASON_LABELS,
} from './dom.js';
import { inspectionPanel } from './inspection.js';
import { can } from './roles.js';

const QUEUE_STATES = [
  { state: 'pending', title: 'Pending' },
  { state: 'claimed', title: 'Claimed' },
  { state: 'escalated', title: 'Escalated to QA' },
];

/** Decisions on a claimed or escalated task, as the API names them. */
const DECISIONS = {
  confirm_defect: { label: 'Confirm defect', testid: 'task-confirm', done: 'defect confirmed' },
  override_good: { label: 'Override to good', testid: 'task-override', done: 'overridden to good', needsComment: true },
  escalate: { label: 'Escalate to QA', testid: 'task-escalate', done: 'escalated to QA', needsComment: true },
  release: { label: 'Release to queue', testid: 'task-release', done: 'released to the queue' },
};

const REFRESH_MS = 15000;
/** Tasks listed per state, oldest first (the order they are claimed in). */
const LISTED = 100;

/** "100+" for a list cut at LISTED. */
function count(tasks) {
  return tasks.length > LISTED ? `${LISTED}+` : String(tasks.length);
}

export function mount(root, { session, params, navigate }) {
  const queueStatus = statusLine('queue-status');
  const queueError = errorLine('queue-error');
  const lists = h('div', { class: 'queue-lists' });
  const message = statusLine('task-message');
  const error = errorLine('task-error');
  const body = h('div', { class: 'task-body' });
  let selected = null;
  let loadSeq = 0;
  let carried = null;

  const claimNext = h('button', { type: 'button', class: 'primary', 'data-testid': 'task-claim-next', onClick: onClaimNext }, 'Claim next task');
  const refresh = h('button', { type: 'button', 'data-testid': 'task-refresh', onClick: () => loadQueue() }, 'Refresh');
  const queue = h('aside', { class: 'queue', 'aria-label': 'Task queue' },
    h('div', { class: 'toolbar' }, claimNext, refresh), queueStatus, queueError, lists);
  const detail = h('div', { class: 'detail', 'data-testid': 'task-detail' }, message, error, body);

  root.replaceChildren(h('section', { class: 'view tasks' },
    h('h1', { tabindex: -1 }, 'Secondary inspection'),
    h('div', { class: 'split' }, queue, detail)));

  /** `background`: the periodic refresh, which must not keep an unattended session alive. */
  async function loadQueue(background = false) {
    try {
      // One more than is listed, to tell a full list from a longer queue.
      const results = await Promise.all(QUEUE_STATES.map(({ state }) => api.get('/tasks', { state, limit: LISTED + 1 }, { background })));
      // The queue is rebuilt on every refresh; a keyboard user keeps their place in it.
      const focused = lists.contains(document.activeElement) ? document.activeElement.dataset.taskId : null;
      lists.replaceChildren(...QUEUE_STATES.map(({ state, title }, i) => {
        const tasks = results[i].slice(0, LISTED);
        return h('section', { class: 'queue-group', 'aria-label': title },
          h('h2', {}, `${title} (${count(results[i])})`),
          tasks.length === 0
            ? h('p', { class: 'muted' }, 'None.')
            : h('ul', { class: 'rows', 'data-testid': `task-list-${state}` }, tasks.map((t) => h('li', {},
              h('a', {
                href: `#/tasks/${t.id}`,
                class: 'row',
                'data-testid': 'task-row',
                'data-task-id': t.id,
                'aria-current': t.id === selected ? 'true' : null,
              },
              h('span', { class: 'row-title' }, `Task ${t.id} · part ${t.part_id}`),
              h('span', { class: 'row-sub' }, `Lot ${t.lot} · ${OPENING_REASON_LABELS[t.opening_reason] ?? t.opening_reason}`),
              badge('task', t.state, TASK_STATE_LABELS))))));
      }));
      if (focused) lists.querySelector(`[data-task-id="${focused}"]`)?.focus();
      const waiting = results[0].length;
      say(queueStatus, waiting === 0
        ? 'No task is waiting.'
        : waiting > LISTED
          ? `More than ${LISTED} tasks waiting; the oldest ${LISTED} are listed.`
          : `${waiting} task${waiting === 1 ? '' : 's'} waiting.`);
      say(queueError);
    } catch (e) {
      say(queueError, describeError(e));
    }
  }

  async function onClaimNext() {
    say(message); say(error);
    await busy(queue, async () => {
      try {
        const task = await api.post('/tasks/claim');
        if (!task) {
          say(queueStatus, 'No pending task to claim.');
          return;
        }
        // Shown once the task opens (opening another task clears the messages).
        carried = `You claimed task ${task.id}.`;
        navigate(`#/tasks/${task.id}`);
      } catch (e) {
        say(error, describeError(e));
      }
    });
    await loadQueue();
  }

  function actionButtons(task) {
    if (task.state === 'pending') {
      return [h('button', { type: 'button', class: 'primary', 'data-testid': 'task-claim', onClick: () => act(task, 'claim') }, 'Claim')];
    }
    if (task.state === 'claimed' && task.claimed_by_username === session.username) {
      return ['confirm_defect', 'override_good', 'escalate', 'release'].map((a) => decisionButton(task, a));
    }
    if (task.state === 'claimed' && can.freeClaims(session.role)) {
      // Another inspector's claim: a QA approver hands it back (with a reason) so that the part
      // does not wait on an absent inspector.
      return [decisionButton(task, 'release')];
    }
    if (task.state === 'escalated' && can.decideEscalated(session.role)) {
      return ['confirm_defect', 'override_good'].map((a) => decisionButton(task, a));
    }
    return [];
  }

  function decisionButton(task, action) {
    const d = DECISIONS[action];
    const cls = action === 'confirm_defect' ? 'danger' : action === 'override_good' ? 'primary' : '';
    return h('button', { type: 'button', class: cls, 'data-testid': d.testid, onClick: () => act(task, action) }, d.label);
  }

  function note(task) {
    if (task.state === 'escalated' && !can.decideEscalated(session.role)) {
      return 'Escalated: a QA approver decides this task.';
    }
    if (task.state === 'confirmed' || task.state === 'overridden_good') {
      return `Decided: ${TASK_STATE_LABELS[task.state].toLowerCase()}. The decision is final.`;
    }
    if (task.state === 'claimed' && task.claimed_by_username !== session.username) {
      const by = task.claimed_by_username ?? 'another inspector';
      return can.freeClaims(session.role)
        ? `Claimed by ${by}: only they can decide it. If they are away, release it to the queue with a reason.`
        : `Claimed by ${by}: only they can decide it or release it.`;
    }
    return null;
  }

  let comment = null;

  async function act(task, action) {
    say(message); say(error);
    const text = comment?.value.trim() ?? '';
    const freeing = action === 'release' && task.claimed_by_username !== session.username;
    if ((DECISIONS[action]?.needsComment || freeing) && !text) {
      say(error, action === 'override_good'
        ? 'Write a comment: overriding a machine reject to good needs a reason on record.'
        : freeing
          ? `Write a comment: say why you release the claim of ${task.claimed_by_username ?? 'another inspector'}.`
          : 'Write a comment: say why the task goes to QA.');
      comment.focus();
      return;
    }
    await busy(detail, async () => {
      try {
        if (action === 'claim') {
          await api.post(`/tasks/${task.id}/claim`);
          say(message, `You claimed task ${task.id}.`);
        } else {
          const answer = await api.post(`/tasks/${task.id}/decision`, { action, comment: text || undefined });
          const done = [`Task ${task.id}: ${DECISIONS[action].done}.`];
          if (answer.raised_ncr) {
            done.push(' ', h('a', { href: `#/ncrs/${answer.raised_ncr}`, 'data-testid': 'task-raised-ncr' },
              `NCR ${answer.raised_ncr} was raised`), ' for this critical defect.');
          }
          say(message, ...done);
        }
      } catch (e) {
        say(error, describeError(e));
      }
    });
    await Promise.all([loadTask(task.id, { keepMessages: true }), loadQueue()]);
  }

  async function loadTask(id, { keepMessages = false } = {}) {
    const seq = ++loadSeq;
    if (!keepMessages) { say(message, carried ?? ''); say(error); carried = null; }
    if (id === null) {
      body.replaceChildren(h('p', { class: 'muted placeholder' }, 'Select a task from the queue, or claim the next one.'));
      return;
    }
    if (!keepMessages) body.replaceChildren(h('p', { class: 'muted' }, `Loading task ${id}…`));
    try {
      const { task, inspection } = await api.get(`/tasks/${id}`);
      if (seq !== loadSeq) return; // A later selection won.
      const buttons = actionButtons(task);
      comment = buttons.length && task.state !== 'pending'
        ? h('textarea', { rows: 3, maxlength: 2000, 'data-testid': 'task-comment' })
        : null;
      const explain = note(task);
      body.replaceChildren(h('article', { class: 'task', 'aria-labelledby': 'task-title' },
        h('header', { class: 'title-row' },
          h('h2', { id: 'task-title', tabindex: -1 }, `Task ${task.id} · part ${task.part_id} · lot ${task.lot}`),
          h('span', { 'data-testid': 'task-state', 'data-state': task.state }, badge('task', task.state, TASK_STATE_LABELS))),
        facts([
          ['Opened because', OPENING_REASON_LABELS[task.opening_reason] ?? task.opening_reason],
          ['Claimed by', task.claimed_by_username ?? null, 'task-claimed-by'],
          ['Decided by', task.decided_by_username ?? null, 'task-decided-by'],
          ['Comment on record', task.decision_reason, 'task-decision-reason'],
        ]),
        inspectionPanel(inspection, { testid: 'task-inspection' }),
        buttons.length || explain
          ? h('div', { class: 'decision', role: 'group', 'aria-label': 'Decision' },
            comment ? field('Comment', comment, task.state === 'claimed' && task.claimed_by_username !== session.username
              ? 'Required to release another inspector\'s claim. Kept in the audit trail.'
              : 'Required to override to good or to escalate. Kept in the audit trail.') : null,
            explain ? h('p', { class: 'muted' }, explain) : null,
            buttons.length ? h('div', { class: 'buttons' }, buttons) : null)
          : null));
    } catch (e) {
      if (seq !== loadSeq) return;
      body.replaceChildren();
      say(error, describeError(e));
    }
  }

  function select(id) {
    selected = id;
    lists.querySelectorAll('[data-testid="task-row"]').forEach((a) => {
      if (Number(a.dataset.taskId) === id) a.setAttribute('aria-current', 'true'); else a.removeAttribute('aria-current');
    });
    loadTask(id).then(() => { if (id !== null) revealWhenStacked(detail); });
  }

  const timer = setInterval(() => { if (!document.hidden) loadQueue(true); }, REFRESH_MS);
  selected = params.id ?? null;
  loadQueue();
  loadTask(selected);

  return {
    update(next) { select(next.id ?? null); },
    unmount() { clearInterval(timer); },
  };
}
