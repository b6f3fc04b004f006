// What each role may do, as the server's workflow rules say (src/quality/task.rs, ncr.rs and
// the role checks in src/api/). The UI uses this only to leave out what the signed-in user
// could not do anyway; the server checks every request itself.

const INSPECTING = ['inspector', 'qa_approver', 'admin'];
const QA_OR_ADMIN = ['qa_approver', 'admin'];

export const can = {
  /** See the secondary-inspection queue, claim and decide tasks. */
  inspectTasks: (role) => INSPECTING.includes(role),
  /** Decide a task escalated by an inspector: QA approvers only. */
  decideEscalated: (role) => role === 'qa_approver',
  /** Release another inspector's claim on a task (with a reason). */
  freeClaims: (role) => role === 'qa_approver',
  /** Hold a lot. */
  holdLot: (role) => INSPECTING.includes(role),
  /** Release a held lot for shipment. */
  releaseLot: (role) => QA_OR_ADMIN.includes(role),
};

/**
 * NCR actions the role may take from `state`, in the order the buttons are shown. Each names
 * whether it needs a disposition, a reason, or an electronic signature.
 */
const NCR_ACTIONS = [
  { action: 'contain', label: 'Contain', from: ['open', 'reopened'], roles: INSPECTING },
  { action: 'investigate', label: 'Start investigation', from: ['contained', 'reopened'], roles: INSPECTING },
  { action: 'propose', label: 'Propose disposition', from: ['under_investigation'], roles: INSPECTING, needsDisposition: true },
  { action: 'approve', label: 'Approve disposition…', from: ['disposition_proposed'], roles: ['qa_approver'], needsSignature: true },
  { action: 'reject_disposition', label: 'Reject disposition', from: ['disposition_proposed'], roles: ['qa_approver'], needsReason: true },
  { action: 'close', label: 'Close', from: ['approved'], roles: QA_OR_ADMIN },
  {
    action: 'cancel',
    label: 'Cancel NCR',
    from: ['open', 'contained', 'under_investigation', 'disposition_proposed', 'reopened'],
    roles: QA_OR_ADMIN,
    needsReason: true,
  },
  { action: 'reopen', label: 'Reopen', from: ['closed', 'cancelled'], roles: QA_OR_ADMIN, needsReason: true },
];

export function ncrActions(state, role) {
  return NCR_ACTIONS.filter((a) => a.from.includes(state) && a.roles.includes(role));
}

/** The first view after sign-in: the work each role does most. */
export function homeFor(role) {
  if (role === 'qa_approver') return '#/ncrs';
  if (can.inspectTasks(role)) return '#/tasks';
  return '#/line';
}
