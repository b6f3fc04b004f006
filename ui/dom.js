// Building blocks shared by the views: element construction, labels for the API's codes,
// time and score formatting, and the message lines that show results and errors.
//
// Text from the server is only ever put into the page as text nodes (never as HTML), so a
// part id or NCR title cannot inject markup. Nothing here sets inline styles: the server's
// Content Security Policy (style-src 'self') would refuse them.

import { ApiError } from './api.js';

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function setAttributes(el, props) {
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
}

/** An HTML element: `h('button', { type: 'button', onClick }, 'Claim')`. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setAttributes(el, props);
  append(el, children);
  return el;
}

/** An SVG element, with attributes as for `h`. */
export function svg(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttributes(el, props);
  append(el, children);
  return el;
}

export const ROLE_LABELS = {
  operator: 'Operator',
  inspector: 'Inspector',
  qa_approver: 'QA approver',
  admin: 'Administrator',
};

export const TASK_STATE_LABELS = {
  pending: 'Pending',
  claimed: 'Claimed',
  escalated: 'Escalated to QA',
  confirmed: 'Defect confirmed',
  overridden_good: 'Overridden to good',
};

export const OPENING_REASON_LABELS = {
  reject: 'Machine reject',
  uncertain: 'Score near the threshold',
  sampled: 'Acceptance sample',
  retest: 'Pass after an earlier reject',
};

export const NCR_STATE_LABELS = {
  open: 'Open',
  contained: 'Contained',
  under_investigation: 'Under investigation',
  disposition_proposed: 'Disposition proposed',
  approved: 'Approved',
  closed: 'Closed',
  cancelled: 'Cancelled',
  reopened: 'Reopened',
};

export const DISPOSITION_LABELS = {
  use_as_is: 'Use as is',
  rework: 'Rework',
  scrap: 'Scrap',
  return_to_vendor: 'Return to vendor',
};

export const VERDICT_LABELS = { good: 'Good', defect: 'Defect' };

/** The server's limit on a part id, lot or title (bytes; the same in plain ASCII). */
export const MAX_LABEL = 200;

/** A coloured label for a state or verdict; `data-state` carries the API's code. */
export function badge(kind, code, labels) {
  return h('span', { class: `badge ${kind}-${code ?? 'none'}`, 'data-state': code ?? '' },
    (labels && labels[code]) ?? code ?? '—');
}

function pad(n) {
  return String(n).padStart(2, '0');
}

/** Local date and time, to the second: "2026-03-14 09:26:53". */
export function formatTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/**
 * A <time> element: local time shown, UTC in the machine-readable attribute and tooltip.
 * `clock` shows only the time of day for moments of today (live lists).
 */
export function timeEl(ms, { clock = false } = {}) {
  if (ms === null || ms === undefined) return h('span', {}, '—');
  const iso = new Date(ms).toISOString();
  const shown = formatTime(ms);
  const today = formatTime(Date.now()).slice(0, 10);
  const text = clock && shown.startsWith(today) ? shown.slice(11) : shown;
  return h('time', { datetime: iso, title: `${iso.replace('T', ' ').replace('Z', '')} UTC` }, text);
}

/** An anomaly score or threshold with three decimals. */
export function formatScore(value) {
  return typeof value === 'number' && Number.isFinite(value) ? value.toFixed(3) : '—';
}

/** A fraction as a percentage with one decimal. */
export function formatPercent(fraction) {
  return typeof fraction === 'number' && Number.isFinite(fraction) ? `${(fraction * 100).toFixed(1)} %` : '—';
}

/** A size in bytes as people read it. */
export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** The sentence to show for a failure. */
export function describeError(error) {
  if (error instanceof ApiError) return error.message;
  return `The web UI failed: ${error?.message ?? error}. Reload the page; if it happens again, tell the system administrator.`;
}

/** `text` ending with one full stop, to be followed by another sentence. */
export function sentence(text) {
  return String(text).replace(/[.\s]*$/, '.');
}

/** A line for results, announced politely to screen readers. Empty lines take no space. */
export function statusLine(testid) {
  return h('p', { class: 'status', role: 'status', 'aria-live': 'polite', 'data-testid': testid });
}

/** A line for errors, announced at once to screen readers. Empty lines take no space. */
export function errorLine(testid) {
  return h('p', { class: 'error', role: 'alert', 'data-testid': testid });
}

/** Shows `content` (text or nodes) in a status or error line. */
export function say(line, ...content) {
  line.replaceChildren();
  append(line, content);
}

/** A labelled form field: the label, the control and, optionally, a hint under it. */
export function field(labelText, control, hint) {
  if (!control.id) control.id = `f-${Math.random().toString(36).slice(2, 10)}`;
  const parts = [h('label', { for: control.id }, labelText), control];
  if (hint) {
    const hintId = `${control.id}-hint`;
    control.setAttribute('aria-describedby', hintId);
    parts.push(h('span', { class: 'hint', id: hintId }, hint));
  }
  return h('div', { class: 'field' }, parts);
}

/** A definition list from [term, value] pairs (values may be nodes); null values are left out. */
export function facts(pairs, testid) {
  return h('dl', { class: 'facts', 'data-testid': testid },
    pairs.filter(([, value]) => value !== null && value !== undefined)
      .map(([term, value, id]) => [h('dt', {}, term), h('dd', id ? { 'data-testid': id } : {}, value)]));
}

/** Disables every button in `container` while `work` runs, so a double tap does not act twice. */
export async function busy(container, work) {
  const buttons = [...container.querySelectorAll('button')].filter((b) => !b.disabled);
  buttons.forEach((b) => { b.disabled = true; });
  container.setAttribute('aria-busy', 'true');
  try {
    return await work();
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    container.removeAttribute('aria-busy');
  }
}

/**
 * Scrolls `el` into view when the list and detail columns are stacked (portrait tablets,
 * phones), where a selection would otherwise open out of sight below the list.
 */
export function revealWhenStacked(el) {
  if (window.matchMedia('(max-width: 900px)').matches) el.scrollIntoView({ block: 'start' });
}
