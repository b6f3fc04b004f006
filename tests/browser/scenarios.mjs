// Browser scenarios of the linesight web UI against a real `linesight serve` (started by
// ./run with a fresh database and one user per role). Each scenario prepares its records through
// the API, works through the UI as the person in that role would, checks what the page shows,
// and then checks through the API that the UI really changed the records. Screenshots of each
// step go to the artifacts folder.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  Api, attributeIs, imageLoaded, launchBrowser, portraitFits, settings, signIn, snap, testImage, tid, unique, uploadReject, users,
  withPage,
} from './lib.mjs';

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

const scenario = (name, body) => test(name, { timeout: 180_000 }, body);

scenario('(a) an inspector reviews rejects, claims the tasks, confirms one defect and overrides one to good', async () => {
  const api = await Api.signIn(users.inspector);
  const lot = unique('LOT-A');
  const toConfirm = await uploadReject(api, { part_id: unique('PART-A'), lot });
  const toOverride = await uploadReject(api, { part_id: unique('PART-A'), lot });

  await withPage(browser, 'a', async (page) => {
    await signIn(page, users.inspector);
    // Inspectors start on the task queue; the header says who is signed in, in which role.
    await page.waitForURL(/#\/tasks$/);
    assert.equal(await page.locator(tid('header-role')).textContent(), 'Inspector');
    const row = page.locator(tid('task-list-pending')).locator(tid('task-row', { 'data-task-id': toConfirm.task }));
    await row.waitFor();
    await snap(page, 'a-01-task-queue');

    await row.click();
    await attributeIs(page, tid('task-state'), 'data-state', 'pending');
    const image = await imageLoaded(page, tid('task-inspection-image'));
    assert.ok(image.width > 0 && image.height > 0);
    await imageLoaded(page, tid('task-inspection-overlay'));
    assert.equal(await page.locator(tid('task-inspection-score')).textContent(), toConfirm.score.toFixed(3));
    assert.equal(await page.locator(tid('task-inspection-threshold')).textContent(), toConfirm.threshold.toFixed(3));
    assert.equal(await page.locator(tid('task-inspection-verdict')).textContent(), 'Defect');
    if (toConfirm.regions.length) {
      assert.equal(await page.locator(`${tid('task-inspection-regions')} tbody tr`).count(), toConfirm.regions.length);
      assert.equal(await page.locator('.boxes rect.region-box').count(), toConfirm.regions.length);
    }
    await snap(page, 'a-02-task-side-by-side');
    // The heat map alone, then the image alone.
    await page.locator(tid('task-inspection-mode-overlay')).click();
    assert.ok(await page.locator(tid('task-inspection-overlay')).isVisible());
    assert.ok(!(await page.locator(tid('task-inspection-image')).isVisible()));
    await snap(page, 'a-03-task-heat-map');
    await page.locator(tid('task-inspection-mode-image')).click();
    assert.ok(await page.locator(tid('task-inspection-image')).isVisible());
    assert.ok(!(await page.locator(tid('task-inspection-overlay')).isVisible()));

    await page.locator(tid('task-claim')).click();
    await attributeIs(page, tid('task-state'), 'data-state', 'claimed');
    assert.equal(await page.locator(tid('task-claimed-by')).textContent(), users.inspector.username);
    await snap(page, 'a-04-task-claimed');
    await portraitFits(page, 'a-04b-task-claimed-portrait');

    // Overriding a machine reject needs a comment: without one nothing is sent.
    await page.locator(tid('task-override')).click();
    await page.locator(tid('task-error')).filter({ hasText: /comment/i }).waitFor();
    await snap(page, 'a-05-override-needs-comment');
    assert.equal((await api.get(`/tasks/${toConfirm.task}`)).task.state, 'claimed');

    await page.locator(tid('task-confirm')).click();
    await attributeIs(page, tid('task-state'), 'data-state', 'confirmed');
    await page.locator(tid('task-message')).filter({ hasText: 'defect confirmed' }).waitFor();
    assert.equal(await page.locator(tid('task-confirm')).count(), 0, 'a decided task offers no more decisions');
    assert.equal(await page.locator(tid('task-decided-by')).textContent(), users.inspector.username);
    await snap(page, 'a-06-task-confirmed');
    const confirmed = (await api.get(`/tasks/${toConfirm.task}`)).task;
    assert.equal(confirmed.state, 'confirmed');
    assert.notEqual(confirmed.decided_by, null);

    // The second reject: the part is good after all.
    const comment = 'Mark is a reflection on the chamfer; part re-checked under ring light, no chip.';
    await page.locator(tid('task-list-pending')).locator(tid('task-row', { 'data-task-id': toOverride.task })).click();
    await attributeIs(page, tid('task-state'), 'data-state', 'pending');
    await page.locator(tid('task-claim')).click();
    await attributeIs(page, tid('task-state'), 'data-state', 'claimed');
    await page.locator(tid('task-comment')).fill(comment);
    await page.locator(tid('task-override')).click();
    await attributeIs(page, tid('task-state'), 'data-state', 'overridden_good');
    assert.equal(await page.locator(tid('task-decision-reason')).textContent(), comment);
    await snap(page, 'a-07-task-overridden');
    const overridden = (await api.get(`/tasks/${toOverride.task}`)).task;
    assert.equal(overridden.state, 'overridden_good');
    assert.equal(overridden.decision_reason, comment);

    // When the session is gone (here: its cookie), the next request leads to the sign-in
    // form; signing in again returns to the same task.
    await page.context().clearCookies();
    await page.locator(tid('task-refresh')).click();
    await page.locator(tid('login-notice')).filter({ hasText: 'session has ended' }).waitFor();
    assert.equal(await page.locator(tid('app-header')).isVisible(), false);
    await snap(page, 'a-08-session-ended');
    await page.locator(tid('login-username')).fill(users.inspector.username);
    await page.locator(tid('login-password')).fill(users.inspector.password);
    await page.locator(tid('login-submit')).click();
    await page.waitForURL(new RegExp(`#/tasks/${toOverride.task}$`));
    await attributeIs(page, tid('task-state'), 'data-state', 'overridden_good');
  });
});

/** An NCR brought to `disposition_proposed` by an inspector, through the API. */
async function proposedNcr(lot, disposition) {
  const inspector = await Api.signIn(users.inspector);
  const ncr = await inspector.post('/ncrs', {
    lot,
    title: 'Chipped outer edge on washers',
    description: 'Secondary inspection confirmed chips on the outer edge of several washers of this lot.',
  });
  for (const step of [{ action: 'contain' }, { action: 'investigate' }, { action: 'propose', disposition }]) {
    await inspector.post(`/ncrs/${ncr.id}/transitions`, step);
  }
  const { ncr: proposed } = await inspector.get(`/ncrs/${ncr.id}`);
  assert.equal(proposed.state, 'disposition_proposed');
  return proposed;
}

scenario('(b) QA approves a proposed disposition with an electronic signature; a wrong password signs nothing', async () => {
  const ncr = await proposedNcr(unique('LOT-B'), 'rework');
  const qa = await Api.signIn(users.qa);

  await withPage(browser, 'b', async (page) => {
    await signIn(page, users.qa);
    // QA approvers start on the NCR list.
    await page.waitForURL(/#\/ncrs$/);
    await page.locator(tid('ncr-row', { 'data-ncr-id': ncr.id })).click();
    await attributeIs(page, tid('ncr-state'), 'data-state', 'disposition_proposed');
    await attributeIs(page, tid('ncr-disposition'), 'data-disposition', 'rework');
    await snap(page, 'b-01-ncr-proposed');

    // A measurement report attached to the NCR before QA decides; the NCR moves to a new
    // version, which is what the signature will bind.
    await page.locator(tid('attach-file')).setInputFiles({
      name: 'bore-gauge-report.txt', mimeType: 'text/plain', buffer: Buffer.from('Bore 12.02 mm, 12.05 mm, 11.98 mm\n'),
    });
    await page.locator(tid('attach-submit')).click();
    await page.locator(tid('ncr-attachment')).filter({ hasText: 'bore-gauge-report.txt' }).waitFor();
    await snap(page, 'b-01b-attachment');
    const attached = await qa.get(`/ncrs/${ncr.id}`);
    assert.deepEqual(attached.attachments.map((a) => a.name), ['bore-gauge-report.txt']);
    assert.equal(attached.ncr.version, ncr.version + 1);

    await page.locator(tid('ncr-action-approve')).click();
    const dialog = page.locator(tid('sign-dialog'));
    await dialog.waitFor();
    // What is signed, by whom, meaning what: shown before the password is asked for.
    assert.equal(await page.locator(tid('sign-signer')).textContent(), `${users.qa.fullName} (${users.qa.username})`);
    const meaning = await page.locator(tid('sign-meaning')).textContent();
    assert.match(meaning, /^Approved — I approve the proposed disposition “Rework” of NCR \d+\.$/);
    assert.ok(meaning.includes(`NCR ${ncr.id}`), meaning);
    const record = await page.locator(tid('sign-record')).textContent();
    assert.ok(record.includes(`NCR ${ncr.id}`) && record.includes('Rework') && record.includes(ncr.lot), record);
    await snap(page, 'b-02-signature-dialog');

    // The NCR changes while the dialog is open (the disposition is sent back and proposed
    // again): the signature would bind to a record the signer did not read, so none is made.
    const inspector = await Api.signIn(users.inspector);
    await qa.post(`/ncrs/${ncr.id}/transitions`, { action: 'reject_disposition', reason: 'Rework instruction missing' });
    await inspector.post(`/ncrs/${ncr.id}/transitions`, { action: 'propose', disposition: 'rework' });
    await page.locator(tid('sign-password')).fill(users.qa.password);
    await page.locator(tid('sign-submit')).click();
    await dialog.waitFor({ state: 'hidden' });
    await page.locator(tid('ncr-error')).filter({ hasText: /changed .*nothing was signed/ }).waitFor();
    assert.equal((await qa.get(`/ncrs/${ncr.id}`)).signatures.length, 0, 'no signature on a changed NCR');
    await page.locator(tid('ncr-history')).locator('tr[data-action="reject_disposition"]').waitFor();
    await snap(page, 'b-02b-changed-while-signing');
    await page.locator(tid('ncr-action-approve')).click();
    await dialog.waitFor();

    await page.locator(tid('sign-password')).fill(`${users.qa.password}-wrong`);
    await page.locator(tid('sign-submit')).click();
    await page.locator(tid('sign-error')).filter({ hasText: /password/i }).waitFor();
    assert.ok(await dialog.isVisible(), 'the dialog stays open after a wrong password');
    assert.equal(await page.locator(tid('sign-password')).inputValue(), '', 'the wrong password is cleared');
    await snap(page, 'b-03-wrong-password');
    const refused = await qa.get(`/ncrs/${ncr.id}`);
    assert.equal(refused.ncr.state, 'disposition_proposed');
    assert.equal(refused.signatures.length, 0, 'a wrong password makes no signature');
    // A signature made for an approval that then did not take place with it (another client,
    // a refused request) stays on the record: the page marks it as not applied.
    const stray = await qa.post(`/ncrs/${ncr.id}/signatures`, { password: users.qa.password, meaning: 'approved', version: refused.ncr.version });

    await page.locator(tid('sign-password')).fill(users.qa.password);
    await page.locator(tid('sign-submit')).click();
    await dialog.waitFor({ state: 'hidden' });
    await attributeIs(page, tid('ncr-state'), 'data-state', 'approved');
    const shown = page.locator(tid('ncr-signature', { 'data-meaning': 'approved', 'data-applied': 'true' }));
    await shown.waitFor();
    assert.ok((await shown.textContent()).includes(users.qa.fullName));
    const unused = page.locator(tid('ncr-signature', { 'data-signature-id': stray.id }));
    assert.equal(await unused.getAttribute('data-applied'), 'false');
    assert.match(await unused.textContent(), /not applied/);
    await snap(page, 'b-04-approved');
    await portraitFits(page, 'b-04b-approved-portrait');

    const approved = await qa.get(`/ncrs/${ncr.id}`);
    assert.equal(approved.ncr.state, 'approved');
    assert.equal(approved.ncr.disposition, 'rework');
    assert.equal(approved.signatures.length, 2);
    const approval = approved.history.at(-1);
    const signature = approved.signatures.find((sig) => sig.id === approval.signature_id);
    assert.notEqual(signature.id, stray.id);
    assert.equal(signature.full_name, users.qa.fullName);
    assert.equal(signature.username, users.qa.username);
    assert.equal(signature.meaning, 'approved');
    assert.equal(signature.record_type, 'ncr');
    assert.equal(signature.record_id, String(ncr.id));
    assert.equal(approval.action, 'approve');
    assert.equal(approval.to, 'approved');
    assert.equal(approval.signature_id, signature.id);
    // The history names who took each step.
    const lastActor = page.locator(`${tid('ncr-history')} tbody tr:last-child ${tid('ncr-history-actor')}`);
    assert.equal(await lastActor.textContent(), `${users.qa.fullName} (${users.qa.username})`);

    // After approval the record is final: no more files.
    await page.locator(tid('attach-closed')).waitFor();
    assert.equal(await page.locator(tid('attach-file')).count(), 0);
  });
});

scenario('(c) an operator inspects an uploaded image and sees the verdict and the heat map', async () => {
  const part = unique('PART-C');
  const lot = unique('LOT-C');
  const operatorApi = await Api.signIn(users.operator);

  await withPage(browser, 'c', async (page) => {
    await signIn(page, users.operator);
    // Operators start on the line view and have no task queue.
    await page.waitForURL(/#\/line$/);
    assert.equal(await page.locator(tid('header-role')).textContent(), 'Operator');
    assert.equal(await page.locator(tid('nav-tasks')).count(), 0, 'operators see no task queue');

    await page.locator(tid('nav-inspect')).click();
    await page.waitForURL(/#\/inspect$/);
    await page.locator(tid('inspect-file')).setInputFiles(testImage('chip/002.png'));
    await page.locator(tid('inspect-part')).fill(part);
    await page.locator(tid('inspect-lot')).fill(lot);
    await imageLoaded(page, `${tid('inspect-preview')} img`);
    await snap(page, 'c-01-image-chosen');

    await page.locator(tid('inspect-submit')).click();
    const verdict = page.locator(tid('inspect-outcome'));
    await verdict.waitFor();
    const overlay = await imageLoaded(page, tid('inspect-overlay'));
    assert.ok(overlay.width > 0, 'the heat-map overlay is loaded');
    await imageLoaded(page, tid('inspect-image'));
    const id = Number(await page.locator(tid('inspect')).getAttribute('data-inspection-id'));
    await snap(page, 'c-02-verdict');
    await portraitFits(page, 'c-02b-verdict-portrait');

    // What the page shows is the record the server keeps.
    const recorded = await operatorApi.get(`/inspections/${id}`);
    assert.equal(recorded.part_id, part);
    assert.equal(recorded.lot, lot);
    assert.equal(recorded.source, 'manual');
    assert.equal(await verdict.getAttribute('data-state'), recorded.verdict);
    assert.equal(await page.locator(tid('inspect-score')).textContent(), recorded.score.toFixed(3));
    assert.equal(await page.locator(tid('inspect-threshold')).textContent(), recorded.threshold.toFixed(3));
    const regionRows = await page.locator(`${tid('inspect-regions')} tbody tr`).count();
    assert.equal(regionRows, recorded.regions.length);
    if (recorded.verdict === 'defect') {
      await page.locator(tid('inspect-task')).waitFor();
    }

    // An operator who opens the task queue by its address is told it is not for this role.
    await page.goto(`${settings.url}/ui/#/tasks`);
    await page.locator('h1').filter({ hasText: 'Not available to your role' }).waitFor();

    // Signing out leads back to the sign-in form, and pages need signing in again.
    await page.locator(tid('sign-out')).click();
    await page.locator(tid('login-form')).waitFor();
    await page.locator(tid('login-notice')).filter({ hasText: 'signed out' }).waitFor();
    await snap(page, 'c-03-signed-out');
    await page.goto(`${settings.url}/ui/#/line`);
    await page.locator(tid('login-form')).waitFor();
    assert.equal(await page.locator(tid('app-header')).isVisible(), false);
  });
});

scenario('(d) the line view shows a new inspection live, over Server-Sent Events', async () => {
  const api = await Api.signIn(users.inspector);
  const camera = unique('cam-sse');
  const lot = unique('LOT-D');

  await withPage(browser, 'd', async (page) => {
    await signIn(page, users.inspector, '#/line');
    await page.waitForURL(/#\/line$/);
    await attributeIs(page, tid('line-status'), 'data-live', 'true');
    await snap(page, 'd-01-line-live');

    const good = await api.upload('good/000.png', { part_id: unique('PART-D'), lot, camera });
    const row = page.locator(tid('line-camera', { 'data-camera': camera }));
    await page.locator(tid('line-inspection', { 'data-inspection-id': good.id })).waitFor();
    assert.equal(await row.locator(tid('line-camera-total')).textContent(), '1');
    await snap(page, 'd-02-first-inspection-live');

    const reject = await uploadReject(api, { part_id: unique('PART-D'), lot, camera });
    await page.locator(tid('line-inspection', { 'data-inspection-id': reject.id })).waitFor();
    // The counts kept live by the page agree with the server's own summary of the camera.
    const summary = (await api.get(`/cameras/summary?since_ms=${Date.now() - 3_600_000}`)).find((c) => c.camera === camera);
    assert.ok(summary && summary.defects >= 1, `the server counts a reject for camera ${camera}`);
    const cell = (name) => `${tid('line-camera', { 'data-camera': camera })} ${tid(name)}`;
    await page.waitForFunction(([sel, want]) => document.querySelector(sel)?.textContent === want,
      [cell('line-camera-defects'), String(summary.defects)]);
    assert.equal(await page.locator(cell('line-camera-total')).textContent(), String(summary.total));
    assert.equal(await page.locator(cell('line-camera-rate')).textContent(), `${(summary.reject_rate * 100).toFixed(1)} %`);
    await snap(page, 'd-03-reject-live');

    // Nothing is shown twice.
    assert.equal(await page.locator(tid('line-inspection', { 'data-inspection-id': reject.id })).count(), 1);
  });
});

scenario('(e) QA holds a lot; its release is refused while its NCR is open and allowed once the NCR is closed', async () => {
  const ncr = await proposedNcr(unique('LOT-E'), 'scrap');
  const qa = await Api.signIn(users.qa);
  const signature = await qa.call('POST', `/ncrs/${ncr.id}/signatures`, { json: { password: users.qa.password, meaning: 'approved', version: ncr.version } });
  await qa.post(`/ncrs/${ncr.id}/transitions`, { action: 'approve', signature_id: signature.id });

  await withPage(browser, 'e', async (page) => {
    await signIn(page, users.qa, `#/ncrs/${ncr.id}`);
    await attributeIs(page, tid('ncr-state'), 'data-state', 'approved');

    await page.locator(tid('lot-hold-lot')).fill(ncr.lot);
    await page.locator(tid('lot-hold-reason')).fill(`NCR ${ncr.id}: washers to be scrapped`);
    await page.locator(tid('lot-hold-submit')).click();
    const held = page.locator(tid('held-lot', { 'data-lot': ncr.lot }));
    await held.waitFor();
    await snap(page, 'e-01-lot-held');
    assert.equal((await qa.get(`/lots/${encodeURIComponent(ncr.lot)}`)).held, true);

    await held.locator(tid('lot-release')).click();
    await page.locator(tid('lots-error')).filter({ hasText: /NCR|open/i }).waitFor();
    await snap(page, 'e-02-release-refused');
    assert.equal((await qa.get(`/lots/${encodeURIComponent(ncr.lot)}`)).held, true);

    await page.locator(tid('ncr-action-close')).click();
    await attributeIs(page, tid('ncr-state'), 'data-state', 'closed');
    await held.locator(tid('lot-release')).click();
    await held.waitFor({ state: 'detached' });
    await page.locator(tid('lots-message')).filter({ hasText: 'released' }).waitFor();
    await snap(page, 'e-03-lot-released');
    const lot = await qa.get(`/lots/${encodeURIComponent(ncr.lot)}`);
    assert.equal(lot.held, false);
    assert.equal(lot.released_by, users.qa.username);
  });
});

scenario('(f) QA frees an absent inspector\'s claim with a reason, is not offered to approve their own proposal, and is told when signing out fails', async () => {
  const inspector = await Api.signIn(users.inspector);
  const qa = await Api.signIn(users.qa);
  const claimed = await uploadReject(inspector, { part_id: unique('PART-F'), lot: unique('LOT-F') });
  await inspector.post(`/tasks/${claimed.task}/claim`);
  // QA proposes a disposition itself: four eyes, so another QA approver must approve it.
  const ncr = await inspector.post('/ncrs', {
    lot: unique('LOT-F'),
    title: 'Burr on inner edge',
    description: 'Burrs found on the inner edge during secondary inspection.',
  });
  await inspector.post(`/ncrs/${ncr.id}/transitions`, { action: 'contain' });
  await inspector.post(`/ncrs/${ncr.id}/transitions`, { action: 'investigate' });
  await qa.post(`/ncrs/${ncr.id}/transitions`, { action: 'propose', disposition: 'scrap' });

  await withPage(browser, 'f', async (page) => {
    await signIn(page, users.qa, `#/tasks/${claimed.task}`);
    await attributeIs(page, tid('task-state'), 'data-state', 'claimed');
    assert.equal(await page.locator(tid('task-claimed-by')).textContent(), users.inspector.username);
    // Only the claimant decides; QA may hand the task back, with a reason on record.
    assert.equal(await page.locator(tid('task-confirm')).count(), 0);
    await page.locator(tid('task-release')).click();
    await page.locator(tid('task-error')).filter({ hasText: /comment/i }).waitFor();
    assert.equal((await qa.get(`/tasks/${claimed.task}`)).task.state, 'claimed', 'nothing is sent without a reason');
    const reason = `${users.inspector.username} is off shift; the part must not wait.`;
    await page.locator(tid('task-comment')).fill(reason);
    await page.locator(tid('task-release')).click();
    await attributeIs(page, tid('task-state'), 'data-state', 'pending');
    await snap(page, 'f-01-claim-freed-by-qa');
    const freed = (await qa.get(`/tasks/${claimed.task}`)).task;
    assert.equal(freed.state, 'pending');
    assert.equal(freed.claimed_by, null);

    await page.goto(`${settings.url}/ui/#/ncrs/${ncr.id}`);
    await attributeIs(page, tid('ncr-state'), 'data-state', 'disposition_proposed');
    await page.locator(tid('ncr-own-proposal')).waitFor();
    assert.equal(await page.locator(tid('ncr-action-approve')).count(), 0, 'no approval of one\'s own proposal');
    assert.equal(await page.locator(tid('ncr-action-reject_disposition')).count(), 1);
    await snap(page, 'f-02-own-proposal');

    // The server does not answer the sign-out: the session and its cookie stay, so the page
    // says so and keeps the user signed in rather than leaving a signed-in terminal behind.
    await page.route('**/api/v1/session', (route) => (route.request().method() === 'DELETE' ? route.abort() : route.continue()));
    await page.locator(tid('sign-out')).click();
    await page.locator(tid('sign-out-error')).filter({ hasText: /still signed in/ }).waitFor();
    assert.ok(await page.locator(tid('app-header')).isVisible());
    await snap(page, 'f-03-sign-out-failed');
    await page.unroute('**/api/v1/session');
    await page.locator(tid('sign-out')).click();
    await page.locator(tid('login-notice')).filter({ hasText: 'signed out' }).waitFor();
    await page.reload();
    await page.locator(tid('login-form')).waitFor();
  });
});

scenario('(g) a part found defective before and passed on re-test past its cap is not accepted, and the page says so', async () => {
  const operator = await Api.signIn(users.operator);
  const part = unique('PART-G');
  const lot = unique('LOT-G');
  // Rejected as often as the re-inspection cap allows secondary inspections.
  for (let i = 0; i < settings.reinspectionCap; i += 1) await uploadReject(operator, { part_id: part, lot });

  await withPage(browser, 'g', async (page) => {
    await signIn(page, users.operator, '#/inspect');
    await page.locator(tid('inspect-file')).setInputFiles(testImage('good/000.png'));
    await page.locator(tid('inspect-part')).fill(part);
    await page.locator(tid('inspect-lot')).fill(lot);
    await page.locator(tid('inspect-submit')).click();
    await attributeIs(page, tid('inspect-outcome'), 'data-state', 'good');
    const refused = await page.locator(tid('inspect-task-refused')).textContent();
    assert.match(refused, /not accepted/);
    const raised = await page.locator(tid('inspect-ncr')).textContent();
    assert.match(raised, /found defective before/);
    assert.doesNotMatch(raised, /reject rate/);
    await snap(page, 'g-01-retest-not-accepted');
    const id = Number(await page.locator(tid('inspect')).getAttribute('data-inspection-id'));
    const ncrs = (await operator.get(`/ncrs?lot=${encodeURIComponent(lot)}`));
    assert.ok(JSON.stringify(ncrs).includes(`Part ${part} re-tested after rejection`), `an NCR for the part (inspection ${id})`);

    // The inspection is recorded but its record cannot be read back: the page says it was
    // recorded, so that the operator does not inspect the part again.
    await page.route(/\/api\/v1\/inspections\/\d+$/, (route) => route.abort());
    await page.locator(tid('inspect-submit')).click();
    await page.locator(tid('inspect-error')).filter({ hasText: /was recorded.*Do not inspect the part again/ }).waitFor();
    await page.locator(tid('inspect-outcome')).waitFor();
    await snap(page, 'g-02-recorded-details-not-loaded');
  });
});

scenario('(h) the line view\'s hour counts let inspections older than an hour go', async () => {
  const api = await Api.signIn(users.inspector);
  const camera = unique('cam-hour');
  await api.upload('good/000.png', { part_id: unique('PART-H'), lot: unique('LOT-H'), camera });

  await withPage(browser, 'h', async (page) => {
    await page.clock.install();
    await signIn(page, users.inspector, '#/line');
    const total = `${tid('line-camera', { 'data-camera': camera })} ${tid('line-camera-total')}`;
    await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === '1', total);
    await page.clock.fastForward(61 * 60 * 1000);
    await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === '0', total);
    await snap(page, 'h-01-hour-passed');
  });
});

scenario('(i) an image removed by image retention says so in the server\'s words', async () => {
  const inspector = await Api.signIn(users.inspector);
  const reject = await uploadReject(inspector, { part_id: unique('PART-I'), lot: unique('LOT-I') });
  const detail = `image ${'0'.repeat(64)} was removed by image retention at 2026-01-01 00:00:00 UTC (quality.image_retention_days, quality.image_quota_bytes); the records that name it are kept`;

  await withPage(browser, 'i', async (page) => {
    // The server's answer for a removed image (its own router tests check that it gives it).
    await page.route('**/api/v1/images/*', (route) => route.fulfill({
      status: 410,
      contentType: 'application/problem+json',
      body: JSON.stringify({ type: 'about:blank', title: 'Gone', status: 410, detail }),
    }));
    await signIn(page, users.inspector, `#/tasks/${reject.task}`);
    const failed = page.locator(tid('task-inspection-image-failed'));
    await failed.filter({ hasText: 'removed by image retention' }).waitFor();
    assert.match(await failed.getAttribute('class'), /missing/);
    assert.equal(await page.locator('.boxes').count(), 0, 'no region boxes over the words');
    await snap(page, 'i-01-image-removed-by-retention');
    await portraitFits(page, 'i-01b-image-removed-portrait');
  });
});

scenario('(j) an operator changes their password: a wrong current one changes nothing, the session ends, the new one signs in', async () => {
  const operator = users.operator;
  const changed = `${operator.password}-2`;
  await withPage(browser, 'j', async (page) => {
    await signIn(page, operator, '#/line');
    await page.locator(tid('change-password')).click();
    await page.locator(tid('password-dialog')).waitFor();
    await page.locator(tid('password-current')).fill('not-my-password');
    await page.locator(tid('password-new')).fill(changed);
    await page.locator(tid('password-again')).fill(changed);
    await page.locator(tid('password-submit')).click();
    await page.locator(tid('password-error')).filter({ hasText: 'Wrong current password' }).waitFor();
    await snap(page, 'j-01-wrong-current-password');
    await Api.signIn(operator); // The old password still signs in: nothing was changed.

    await page.locator(tid('password-current')).fill(operator.password);
    await page.locator(tid('password-submit')).click();
    await page.locator(tid('login-notice')).filter({ hasText: /password has been changed/ }).waitFor();
    await snap(page, 'j-02-changed-sign-in-again');
    await assert.rejects(Api.signIn(operator), (e) => e.status === 401, 'the old password is refused');

    // The new one signs in; changed back for the scenarios that follow.
    await signIn(page, { ...operator, password: changed }, '#/line');
    await page.locator(tid('change-password')).click();
    await page.locator(tid('password-current')).fill(changed);
    await page.locator(tid('password-new')).fill(operator.password);
    await page.locator(tid('password-again')).fill(operator.password);
    await page.locator(tid('password-submit')).click();
    await page.locator(tid('login-notice')).filter({ hasText: /password has been changed/ }).waitFor();
  });
  await Api.signIn(operator);
});

scenario('(k) a password an administrator reset signs nobody in: at sign-in the user chooses a new one', async () => {
  const operator = users.operator;
  const admin = await Api.signIn(users.admin);
  const temporary = `reset-${unique('pw')}`;
  await admin.post(`/users/${operator.username}/password`, { new_password: temporary, reason: 'forgotten; identity checked at the gate' });
  await assert.rejects(Api.signIn({ ...operator, password: temporary }), (e) => e.status === 403 && e.body?.code === 'password_change_due');
  const chosen = `${operator.password}-k`;
  await withPage(browser, 'k', async (page) => {
    await page.goto(`${settings.url}/ui/`);
    await page.locator(tid('login-username')).fill(operator.username);
    await page.locator(tid('login-password')).fill(temporary);
    await page.locator(tid('login-submit')).click();
    await page.locator(tid('password-reason')).filter({ hasText: /reset by an administrator/ }).waitFor();
    assert.equal(await page.locator(tid('app-header')).isVisible(), false, 'not signed in');
    await page.locator(tid('password-new')).fill(chosen);
    await page.locator(tid('password-again')).fill(chosen);
    await snap(page, 'k-01-reset-password-must-change');
    await page.locator(tid('password-submit')).click();
    await page.locator(tid('login-notice')).filter({ hasText: /password has been changed/ }).waitFor();
    await signIn(page, { ...operator, password: chosen }, '#/line');
    await snap(page, 'k-02-signed-in-with-own-password');
  });
  await assert.rejects(Api.signIn({ ...operator, password: temporary }), (e) => e.status === 401, 'the reset password is gone');
  const trail = await admin.get(`/audit?entity=user&entity_id=${encodeURIComponent(operator.username)}`);
  const actions = trail.map((e) => e.action);
  const reset = actions.lastIndexOf('user.password_reset');
  assert.ok(reset >= 0 && actions.indexOf('user.password_change', reset) > reset, actions.join(', '));
  // Back to the password the other scenarios use.
  const again = await Api.signIn({ ...operator, password: chosen });
  await again.post('/session/password', { current_password: chosen, new_password: operator.password });
});
