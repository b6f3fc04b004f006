// Line view (#/line): for each camera, the inspections and rejects of the last hour and the
// most recent results, kept current by the server's live stream of inspections.
//
// The page reads the latest inspections once, then follows /api/v1/events (Server-Sent Events)
// from the newest inspection it has, so nothing recorded in between is missed. The browser
// reconnects a dropped stream by itself and resumes after the last event it received; when the
// server refuses the stream outright (the session ended, or the service restarts) the page
// checks the session and opens a new stream a few seconds later.
//
// The counts of the last hour are the server's (/api/v1/cameras/summary), read again two seconds
// after live inspections arrive (which count in the meantime) and every half minute in any
// case, so that inspections older than an hour leave them and none stays counted twice.

import { api, apiUrl } from './api.js';
import {
  h, badge, timeEl, say, errorLine, describeError, formatScore, formatPercent, VERDICT_LABELS,
} from './dom.js';

const WINDOW_MS = 3600 * 1000;
const RECENT_PER_CAMERA = 10;
const RETRY_MS = 3000;
/** How soon the counts are read again after a live inspection, and at the latest. */
const RECOUNT_AFTER_EVENT_MS = 2000;
const RECOUNT_EVERY_MS = 30 * 1000;

export function mount(root) {
  const status = h('p', { class: 'live', role: 'status', 'aria-live': 'polite', 'data-testid': 'line-status', 'data-live': 'false' },
    'Connecting to the live results…');
  const error = errorLine('line-error');
  const summaryBody = h('tbody', {});
  const summary = h('table', { 'data-testid': 'line-summary' },
    h('caption', {}, 'Last hour, per camera'),
    h('thead', {}, h('tr', {}, ['Camera', 'Inspections', 'Defects', 'Reject rate', 'Last inspection']
      .map((t) => h('th', { scope: 'col' }, t)))),
    summaryBody);
  const recent = h('div', { class: 'recent' });

  root.replaceChildren(h('section', { class: 'view line' },
    h('div', { class: 'title-row' }, h('h1', { tabindex: -1 }, 'Line'), status),
    error,
    h('div', { class: 'scroll' }, summary),
    h('h2', {}, 'Recent inspections'),
    recent));

  // Per camera: the counts of the window and the newest inspections, newest first.
  const cameras = new Map();
  let lastId = 0;
  // The ids in the recent lists: the stream may deliver an inspection committed after a newer
  // one (ids are taken before commit), so the newest id alone does not say what was shown.
  const seen = new Set();
  let recountTimer = null;
  let recountDue = 0;
  let recountSeq = 0;
  let source = null;
  let retry = null;
  let stopped = false;

  function camera(name) {
    if (!cameras.has(name)) {
      cameras.set(name, { camera: name, total: 0, defects: 0, last_at_ms: null, recent: [] });
    }
    return cameras.get(name);
  }

  function render() {
    const list = [...cameras.values()].sort((a, b) => a.camera.localeCompare(b.camera));
    summaryBody.replaceChildren(...(list.length === 0
      ? [h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No inspection in the last hour.'))]
      : list.map((c) => h('tr', { 'data-testid': 'line-camera', 'data-camera': c.camera },
        h('th', { scope: 'row' }, c.camera),
        h('td', { 'data-testid': 'line-camera-total' }, c.total),
        h('td', { 'data-testid': 'line-camera-defects' }, c.defects),
        h('td', { 'data-testid': 'line-camera-rate' }, formatPercent(c.total ? c.defects / c.total : null)),
        h('td', {}, timeEl(c.last_at_ms))))));
    recent.replaceChildren(...list.filter((c) => c.recent.length).map((c) => h('section', {
      class: 'panel', 'data-testid': 'line-recent', 'data-camera': c.camera, 'aria-label': `Camera ${c.camera}`,
    },
    h('h3', {}, `Camera ${c.camera}`),
    h('div', { class: 'scroll' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Time', 'Part', 'Lot', 'Verdict', 'Score', 'Threshold'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, c.recent.map((i) => h('tr', { 'data-testid': 'line-inspection', 'data-inspection-id': i.id, class: i.verdict === 'defect' ? 'reject' : '' },
        h('td', {}, timeEl(i.at_ms, { clock: true })),
        h('td', {}, i.part_id),
        h('td', {}, i.lot),
        h('td', {}, badge('verdict', i.verdict, VERDICT_LABELS)),
        h('td', {}, formatScore(i.score)),
        h('td', {}, formatScore(i.threshold))))))))));
  }

  /**
   * Adds a live inspection to its camera's recent list and, until the server's counts are read
   * again a moment later, to the camera's counts.
   */
  function add(inspection) {
    if (seen.has(inspection.id)) return;
    seen.add(inspection.id);
    lastId = Math.max(lastId, inspection.id);
    const c = camera(inspection.camera);
    if (inspection.at_ms >= Date.now() - WINDOW_MS) {
      c.total += 1;
      if (inspection.verdict === 'defect') c.defects += 1;
      c.last_at_ms = Math.max(c.last_at_ms ?? 0, inspection.at_ms);
    }
    c.recent.unshift(inspection);
    c.recent.sort((a, b) => b.id - a.id);
    for (const dropped of c.recent.splice(RECENT_PER_CAMERA)) seen.delete(dropped.id);
    render();
    scheduleRecount(RECOUNT_AFTER_EVENT_MS);
  }

  /** Replaces every camera's counts with the server's for the hour up to now. */
  async function recount() {
    recountTimer = null;
    // Reads may overlap (a live inspection schedules one while another is on its way): only
    // the latest one asked for is shown.
    const seq = ++recountSeq;
    try {
      const counts = await api.get('/cameras/summary', { since_ms: Date.now() - WINDOW_MS }, { background: true });
      if (seq !== recountSeq || stopped) return;
      for (const c of cameras.values()) Object.assign(c, { total: 0, defects: 0, last_at_ms: null });
      for (const s of counts) {
        Object.assign(camera(s.camera), { total: s.total, defects: s.defects, last_at_ms: s.last_at_ms });
      }
      say(error);
      render();
    } catch (e) {
      if (seq !== recountSeq || stopped) return;
      say(error, describeError(e));
    }
    scheduleRecount(RECOUNT_EVERY_MS);
  }

  /** Reads the counts again within `ms`, unless a read is already due sooner. */
  function scheduleRecount(ms) {
    if (stopped) return;
    const due = Date.now() + ms;
    if (recountTimer !== null && recountDue <= due) return;
    clearTimeout(recountTimer);
    recountDue = due;
    recountTimer = setTimeout(recount, ms);
  }

  function setLive(live, text) {
    status.dataset.live = String(live);
    status.textContent = text;
  }

  function connect() {
    if (stopped) return;
    // Without an inspection to start after, the server starts with those recorded from now on.
    source = new EventSource(apiUrl('/events', { after_id: lastId || undefined }));
    source.addEventListener('open', () => setLive(true, 'Live: results appear as they are recorded.'));
    source.addEventListener('inspection', (event) => {
      try {
        add(JSON.parse(event.data));
      } catch (e) {
        say(error, describeError(e));
      }
    });
    source.addEventListener('error', () => {
      if (stopped) return;
      if (source.readyState === EventSource.CLOSED) {
        setLive(false, 'Live results interrupted; reconnecting…');
        source = null;
        retry = setTimeout(async () => {
          // Leads back to sign-in when the session has ended (this view is then unmounted).
          await api.get('/session', undefined, { background: true }).catch(() => null);
          connect();
        }, RETRY_MS);
      } else {
        setLive(false, 'Live results interrupted; reconnecting…');
      }
    });
  }

  async function start() {
    try {
      const page = await api.get('/inspections', { limit: 200 });
      // The page is newest first; keep the newest few per camera.
      for (const i of page.items) {
        const c = camera(i.camera);
        if (c.recent.length < RECENT_PER_CAMERA) {
          c.recent.push(i);
          seen.add(i.id);
        }
        lastId = Math.max(lastId, i.id);
      }
      render();
    } catch (e) {
      say(error, describeError(e));
    }
    if (stopped) return;
    connect();
    await recount();
  }

  start();

  return {
    unmount() {
      stopped = true;
      clearTimeout(retry);
      clearTimeout(recountTimer);
      source?.close();
    },
  };
}
