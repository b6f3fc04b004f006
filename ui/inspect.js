// Manual inspection (#/inspect): an image taken at an inspection station (or a photo of a
// suspect part) is inspected by the same model as the line, recorded like any other
// inspection, and a reject opens a secondary-inspection task as on the line.

import { api } from './api.js';
import {
  h, say, sentence, statusLine, errorLine, field, busy, describeError, formatScore, VERDICT_LABELS, MAX_LABEL,
} from './dom.js';
import { inspectionPanel } from './inspection.js';
import { can } from './roles.js';

const TYPES = ['image/png', 'image/jpeg'];

export function mount(root, { session }) {
  let chosen = null;
  let previewUrl = null;

  const file = h('input', { id: 'inspect-file', type: 'file', accept: TYPES.join(','), class: 'visually-hidden', 'data-testid': 'inspect-file' });
  const preview = h('div', { class: 'preview', 'data-testid': 'inspect-preview' });
  const drop = h('div', { class: 'drop', 'data-testid': 'inspect-drop' },
    h('label', { for: 'inspect-file' },
      h('span', { class: 'drop-title' }, 'Drop an image here'),
      h('span', { class: 'drop-sub' }, 'or tap to choose a PNG or JPEG file')),
    file, preview);
  const part = h('input', { required: true, maxlength: MAX_LABEL, autocomplete: 'off', 'data-testid': 'inspect-part' });
  const lot = h('input', { required: true, maxlength: MAX_LABEL, autocomplete: 'off', 'data-testid': 'inspect-lot' });
  const submit = h('button', { type: 'submit', class: 'primary', 'data-testid': 'inspect-submit' }, 'Inspect');
  const status = statusLine('inspect-status');
  const error = errorLine('inspect-error');
  const result = h('div', { class: 'result', 'aria-live': 'polite', 'data-testid': 'inspect-result' });
  const form = h('form', { class: 'inspect-form', novalidate: true, 'aria-label': 'Image to inspect' },
    drop, h('div', { class: 'fields' }, field('Part id', part), field('Lot', lot), submit));

  root.replaceChildren(h('section', { class: 'view inspect' },
    h('h1', { tabindex: -1 }, 'Manual inspection'), form, status, error, result));

  function choose(f) {
    say(error);
    if (!f) return;
    if (!TYPES.includes(f.type)) {
      say(error, `${f.name} is not a PNG or JPEG image.`);
      return;
    }
    chosen = f;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(f);
    preview.replaceChildren(h('img', { src: previewUrl, alt: `Image chosen: ${f.name}` }), h('span', {}, f.name));
  }

  file.addEventListener('change', () => choose(file.files[0]));
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    choose(e.dataTransfer.files[0]);
  });

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    say(error); say(status);
    const missing = [[chosen, 'Choose an image to inspect.', file], [part.value.trim(), 'Enter the part id.', part],
      [lot.value.trim(), 'Enter the lot.', lot]].find(([value]) => !value);
    if (missing) {
      say(error, missing[1]);
      missing[2].focus();
      return;
    }
    const data = new FormData();
    data.append('image', chosen, chosen.name);
    data.append('part_id', part.value.trim());
    data.append('lot', lot.value.trim());
    result.replaceChildren();
    say(status, 'Inspecting…');
    await busy(form, async () => {
      let answer;
      try {
        answer = await api.upload('/inspections', data);
      } catch (err) {
        say(status);
        say(error, describeError(err));
        return;
      }
      // Recorded: from here on a failure must not read as if the inspection were not, or the
      // operator inspects the part again and records it twice.
      say(status, `Inspection ${answer.id} recorded.`);
      try {
        // The full record (part, lot, camera, time) for the panel; the answer has the rest.
        show(answer, await api.get(`/inspections/${answer.id}`));
      } catch (err) {
        show(answer, null);
        say(error, `Inspection ${answer.id} was recorded, but its details could not be loaded. ${sentence(describeError(err))} Do not inspect the part again.`);
      }
    });
  });

  function show(answer, inspection) {
    const follow = [];
    if (answer.task) {
      follow.push(h('p', { 'data-testid': 'inspect-task' }, 'A secondary-inspection task was opened: ',
        can.inspectTasks(session.role) ? h('a', { href: `#/tasks/${answer.task}` }, `task ${answer.task}`) : `task ${answer.task}`, '.'));
    }
    if (answer.task_refused) {
      // No task although the rules asked for one: for a part found defective before and passed
      // on re-test, this pass is not accepted and its NCR decides (the server says which).
      follow.push(h('p', { class: 'warning', role: 'alert', 'data-testid': 'inspect-task-refused' },
        `No secondary-inspection task was opened: ${answer.task_refused}.`));
    }
    if (answer.raised_ncr) {
      // A reject raises an NCR when the lot's reject rate crosses its limit; a pass raises one
      // when the part was found defective before and is past its re-inspection cap.
      const why = answer.verdict === 'defect'
        ? 'The reject rate of the lot is over its limit: '
        : 'The part was found defective before and this pass is not accepted without QA\'s disposition: ';
      follow.push(h('p', { 'data-testid': 'inspect-ncr' }, why,
        h('a', { href: `#/ncrs/${answer.raised_ncr}` }, `NCR ${answer.raised_ncr}`), ' was raised.'));
    }
    result.replaceChildren(
      h('div', { class: `verdict-banner verdict-${answer.verdict}` },
        h('span', { class: 'big', 'data-testid': 'inspect-outcome', 'data-state': answer.verdict }, VERDICT_LABELS[answer.verdict] ?? answer.verdict),
        h('span', {}, `Score ${formatScore(answer.score)} · threshold ${formatScore(answer.threshold)} · ${answer.regions.length} region${answer.regions.length === 1 ? '' : 's'}`)),
      ...follow,
      ...(inspection ? [inspectionPanel(inspection, { testid: 'inspect' })] : []));
  }

  return {
    unmount() { if (previewUrl) URL.revokeObjectURL(previewUrl); },
  };
}
