// One inspection as an inspector judges it: the image with the regions the model found boxed
// over it, the heat-map overlay (instead of the image, or beside it), the score against the
// threshold, and the regions as a table. Used by the task view and the manual inspection view.
//
// Region coordinates are in pixels of the original image (as stored), so the boxes are drawn
// in an SVG whose viewBox is the image's natural size, laid over the image; they stay in place
// at any screen size. The overlay image from the server already has the regions outlined.

import {
  h, svg, badge, facts, timeEl, formatScore, say, VERDICT_LABELS,
} from './dom.js';

const MODES = [
  { mode: 'image', label: 'Image' },
  { mode: 'overlay', label: 'Heat map' },
  { mode: 'both', label: 'Side by side' },
];

/** Score bar with the threshold marked: how far the part is from the decision. */
function scoreGauge(score, threshold) {
  const width = 300;
  const max = Math.max(1, score, threshold);
  const x = (v) => Math.max(0, Math.min(v, max)) / max * width;
  const side = score >= threshold ? 'at or above' : 'below';
  return svg('svg', {
    class: 'gauge',
    viewBox: `0 0 ${width} 28`,
    preserveAspectRatio: 'none',
    role: 'img',
    'aria-label': `Score ${formatScore(score)}, ${side} the threshold ${formatScore(threshold)}`,
  },
  svg('rect', { class: 'gauge-track', x: 0, y: 6, width, height: 16 }),
  svg('rect', { class: `gauge-bar ${score >= threshold ? 'over' : 'under'}`, x: 0, y: 6, width: x(score), height: 16 }),
  svg('line', { class: 'gauge-threshold', x1: x(threshold), x2: x(threshold), y1: 0, y2: 28 }));
}

function regionTable(regions, boxes, testid) {
  if (regions.length === 0) {
    return h('p', { class: 'muted', 'data-testid': `${testid}-regions` },
      'No region of the anomaly map is above the pixel threshold.');
  }
  const highlight = (i, on) => boxes[i]?.classList.toggle('hot', on);
  return h('table', { class: 'regions', 'data-testid': `${testid}-regions` },
    h('caption', {}, `Regions above the pixel threshold (${regions.length})`),
    h('thead', {}, h('tr', {},
      ['#', 'x', 'y', 'Width', 'Height', 'Area (px)', 'Peak score'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, regions.map((r, i) => h('tr', {
      tabindex: 0,
      onMouseenter: () => highlight(i, true),
      onMouseleave: () => highlight(i, false),
      onFocus: () => highlight(i, true),
      onBlur: () => highlight(i, false),
    },
    h('th', { scope: 'row' }, i + 1), h('td', {}, r.x), h('td', {}, r.y), h('td', {}, r.width),
    h('td', {}, r.height), h('td', {}, r.area_px), h('td', {}, formatScore(r.peak_score))))));
}

/**
 * A picture that says so when it cannot be shown: why, in the server's words, when it says
 * (removed by image retention: 410 with a problem+json detail), otherwise that it failed.
 */
function picture(url, alt, testid, missingText) {
  if (!url) return h('p', { class: 'muted missing' }, missingText);
  const img = h('img', { src: url, alt, 'data-testid': testid, decoding: 'async' });
  img.addEventListener('error', async () => {
    const failed = h('p', { class: 'error', 'data-testid': `${testid}-failed` },
      'The image could not be loaded from the server.');
    img.replaceWith(failed);
    try {
      // The browser does not show an image's error body: asked again for the reason.
      const res = await fetch(url, {
        headers: { Accept: 'application/problem+json', 'X-Linesight-Background': '1' },
        credentials: 'same-origin',
        cache: 'no-store',
      });
      const problem = (res.headers.get('Content-Type') ?? '').includes('json') ? await res.json() : null;
      if (!res.ok && problem?.detail) {
        failed.className = res.status === 410 ? 'muted missing' : 'error';
        say(failed, problem.detail.charAt(0).toUpperCase() + problem.detail.slice(1));
      }
    } catch {
      // The generic sentence stays.
    }
  });
  return img;
}

/**
 * The panel for `inspection` (an Inspection of the API). `testid` prefixes the test ids of its
 * parts: `<testid>-image`, `-overlay`, `-verdict`, `-score`, `-threshold`, `-regions`.
 */
export function inspectionPanel(inspection, { testid = 'inspection' } = {}) {
  const regions = inspection.regions ?? [];
  const describe = `part ${inspection.part_id}, lot ${inspection.lot}`;

  const boxes = regions.map((r) => svg('rect', {
    class: 'region-box', x: r.x, y: r.y, width: r.width, height: r.height, 'vector-effect': 'non-scaling-stroke',
  }));
  const boxLayer = svg('svg', { class: 'boxes', 'aria-hidden': 'true', preserveAspectRatio: 'none' }, boxes);
  const image = picture(inspection.image, `Inspected image of ${describe}`, `${testid}-image`,
    'The image of this inspection is no longer stored (image retention).');
  if (image.tagName === 'IMG') {
    const fit = () => boxLayer.setAttribute('viewBox', `0 0 ${image.naturalWidth} ${image.naturalHeight}`);
    if (image.complete && image.naturalWidth) fit(); else image.addEventListener('load', fit);
    // No boxes over the words that take the place of an image that did not load.
    image.addEventListener('error', () => boxLayer.remove());
  }
  const overlay = picture(inspection.overlay,
    `Heat map of the anomaly score over the image of ${describe}, regions outlined`, `${testid}-overlay`,
    'No heat map was stored for this inspection.');

  const imageFrame = h('figure', { class: 'frame' }, h('div', { class: 'stack' }, image, image.tagName === 'IMG' ? boxLayer : null),
    h('figcaption', {}, 'Image', regions.length ? ', regions boxed' : ''));
  const overlayFrame = h('figure', { class: 'frame' }, overlay, h('figcaption', {}, 'Heat map'));

  const frames = h('div', { class: 'frames' }, imageFrame, overlayFrame);
  const modeButtons = MODES.map(({ mode, label }) => h('button', {
    type: 'button',
    class: 'toggle',
    'aria-pressed': 'false',
    'data-testid': `${testid}-mode-${mode}`,
    disabled: mode !== 'image' && !inspection.overlay,
    onClick: () => show(mode),
  }, label));
  const boxToggle = h('input', { type: 'checkbox', checked: true, 'data-testid': `${testid}-boxes` });
  boxToggle.addEventListener('change', () => { boxLayer.classList.toggle('off', !boxToggle.checked); });

  function show(mode) {
    modeButtons.forEach((b, i) => b.setAttribute('aria-pressed', String(MODES[i].mode === mode)));
    imageFrame.hidden = mode === 'overlay';
    overlayFrame.hidden = mode === 'image';
    frames.classList.toggle('both', mode === 'both');
  }
  // Side by side shows both at once; on a narrow screen the two stack.
  show(inspection.overlay ? 'both' : 'image');

  const model = inspection.model_name
    ? h('span', {}, inspection.model_name, ' ', h('code', { title: inspection.model_sha256 }, (inspection.model_sha256 ?? '').slice(0, 12)))
    : null;

  return h('section', {
    class: 'inspection', 'aria-label': `Inspection ${inspection.id}`, 'data-testid': testid, 'data-inspection-id': inspection.id,
  },
    h('div', { class: 'toolbar', role: 'group', 'aria-label': 'Image view' }, modeButtons,
      regions.length ? h('label', { class: 'check' }, boxToggle, 'Region boxes') : null),
    frames,
    h('div', { class: 'scoreline' },
      h('div', { class: 'verdict' }, badge('verdict', inspection.verdict, VERDICT_LABELS)),
      scoreGauge(inspection.score, inspection.threshold)),
    facts([
      ['Verdict', VERDICT_LABELS[inspection.verdict] ?? inspection.verdict, `${testid}-verdict`],
      ['Score', formatScore(inspection.score), `${testid}-score`],
      ['Threshold', formatScore(inspection.threshold), `${testid}-threshold`],
      ['Part', inspection.part_id],
      ['Lot', inspection.lot],
      ['Camera', inspection.camera],
      ['Recipe', inspection.recipe || null],
      ['Defect class', inspection.defect_class],
      ['Inspected', timeEl(inspection.at_ms)],
      ['Source', inspection.source === 'manual' ? 'Manual upload' : 'Camera'],
      ['Model', model],
    ], `${testid}-facts`),
    regionTable(regions, boxes, testid));
}
