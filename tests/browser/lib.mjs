// Shared by the browser scenarios: the settings `run` passes in, an API client for preparing
// and checking records, and helpers to drive the web UI in headless Chromium.
//
// Preparation and checks go through the HTTP API the way a machine or a script would (here with
// a session, as the UI does); what the scenarios assert about the UI is what a person on the
// shop floor would see.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: start the browser tests with tests/browser/run`);
  }
  return value;
}

export const settings = {
  url: required('LINESIGHT_URL'),
  chromium: required('LINESIGHT_CHROMIUM'),
  artifacts: required('LINESIGHT_ARTIFACTS'),
  testdata: required('LINESIGHT_TESTDATA'),
  modules: required('LINESIGHT_BROWSER_MODULES'),
  /** The server's `quality.reinspection_cap`. */
  reinspectionCap: Number(required('LINESIGHT_REINSPECTION_CAP')),
};

function user(role) {
  const prefix = `LINESIGHT_${role.toUpperCase()}`;
  return {
    username: required(`${prefix}_USER`),
    password: required(`${prefix}_PASSWORD`),
    fullName: required(`${prefix}_NAME`),
  };
}

export const users = {
  inspector: user('inspector'),
  qa: user('qa'),
  operator: user('operator'),
  admin: user('admin'),
};

/** playwright-core, installed by `run` into the cache outside the clone. */
export function playwright() {
  const require = createRequire(path.join(settings.modules, 'package.json'));
  return require('playwright-core');
}

let counter = 0;
/** A name no earlier run or scenario used: part ids, lots, cameras. */
export function unique(prefix) {
  counter += 1;
  return `${prefix}-${Date.now().toString(36).toUpperCase()}${counter}`;
}

/** A failed API call, with the problem's detail. */
class ApiCallError extends Error {
  constructor(method, urlPath, status, body) {
    super(`${method} ${urlPath} answered ${status}: ${body?.detail ?? body?.title ?? JSON.stringify(body)}`);
    this.status = status;
    this.body = body;
  }
}

/** The API as one signed-in user (session cookie and CSRF token, like the web UI). */
export class Api {
  constructor(cookie, csrf, who) {
    this.cookie = cookie;
    this.csrf = csrf;
    this.who = who;
  }

  static async signIn(u) {
    const res = await fetch(`${settings.url}/api/v1/session`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username: u.username, password: u.password }),
    });
    const body = await res.json().catch(() => null);
    if (res.status !== 200) throw new ApiCallError('POST', '/api/v1/session', res.status, body);
    const cookie = res.headers.getSetCookie().map((c) => c.split(';')[0]).join('; ');
    return new Api(cookie, body.csrf_token, body);
  }

  async call(method, urlPath, { json, form } = {}) {
    const headers = { Cookie: this.cookie, Accept: 'application/json' };
    if (method !== 'GET') headers['X-CSRF-Token'] = this.csrf;
    let body;
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(json);
    } else if (form) {
      body = form;
    }
    const res = await fetch(`${settings.url}/api/v1${urlPath}`, { method, headers, body });
    const text = await res.text();
    const parsed = text ? JSON.parse(text) : null;
    if (!res.ok) throw new ApiCallError(method, urlPath, res.status, parsed);
    return parsed;
  }

  get(urlPath) { return this.call('GET', urlPath); }

  post(urlPath, json) { return this.call('POST', urlPath, { json }); }

  /** Uploads a test image for inspection (multipart, as the manual inspection page does). */
  async upload(image, fields) {
    const form = new FormData();
    form.append('image', new Blob([await readFile(testImage(image))], { type: 'image/png' }), path.basename(image));
    for (const [key, value] of Object.entries(fields)) form.append(key, value);
    return this.call('POST', '/inspections', { form });
  }
}

/** A synthetic washer image of testdata/synthetic/test (e.g. "chip/002.png"). */
export function testImage(name) {
  return path.join(settings.testdata, name);
}

// Images of the synthetic set the demo model should reject, most certain first. Which one it
// rejects is read from the upload answer, not assumed.
const DEFECT_CANDIDATES = ['chip/002.png', 'chip/003.png', 'chip/001.png', 'spot/001.png', 'scratch/000.png'];

/**
 * Uploads a part the model rejects, which opens a secondary-inspection task. Returns the
 * upload answer and the image used.
 */
export async function uploadReject(api, fields) {
  const tried = [];
  for (const image of DEFECT_CANDIDATES) {
    const answer = await api.upload(image, fields);
    if (answer.verdict === 'defect' && answer.task) return { ...answer, imageName: image };
    tried.push(`${image}: ${answer.verdict} (score ${answer.score}), task ${answer.task}`);
  }
  throw new Error(`no test image was rejected with a task opened by the demo model:\n  ${tried.join('\n  ')}`);
}

/** Headless Chromium (Debian's, not a downloaded one). */
export async function launchBrowser() {
  const { chromium } = playwright();
  return chromium.launch({
    executablePath: settings.chromium,
    headless: true,
    // Running as root in a container needs --no-sandbox; /dev/shm is small there.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
}

/**
 * Runs `body(page)` in a fresh browser context the size of a landscape tablet. Uncaught
 * exceptions in the page and Content Security Policy violations fail the scenario; on failure
 * a screenshot named `<name>-FAILED.png` is kept.
 */
export async function withPage(browser, name, body) {
  const context = await browser.newContext({ viewport: { width: 1180, height: 820 }, locale: 'en-GB', timezoneId: 'UTC' });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`uncaught exception in the page: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) problems.push(`CSP violation: ${m.text()}`);
  });
  try {
    await body(page);
    assert.deepEqual(problems, [], 'the page had errors');
  } catch (e) {
    await snap(page, `${name}-FAILED`).catch(() => {});
    if (problems.length) e.message += `\npage errors:\n  ${problems.join('\n  ')}`;
    throw e;
  } finally {
    await context.close();
  }
}

/** A full-page screenshot into the artifacts folder. */
export async function snap(page, name) {
  await mkdir(settings.artifacts, { recursive: true });
  await page.screenshot({ path: path.join(settings.artifacts, `${name}.png`), fullPage: true });
}

/** Selector of an element by its data-testid, with more attribute conditions if given. */
export function tid(id, attributes = {}) {
  return `[data-testid="${id}"]${Object.entries(attributes).map(([k, v]) => `[${k}="${v}"]`).join('')}`;
}

/** Signs in through the sign-in form and waits for the header to show the user. */
export async function signIn(page, u, hash = '') {
  await page.goto(`${settings.url}/ui/${hash}`);
  await page.locator(tid('login-username')).fill(u.username);
  await page.locator(tid('login-password')).fill(u.password);
  await page.locator(tid('login-submit')).click();
  await page.locator(tid('header-user')).filter({ hasText: u.fullName }).waitFor();
}

/** Waits until the <img> found by `selector` has loaded a picture (naturalWidth > 0). */
export async function imageLoaded(page, selector) {
  await page.waitForFunction((sel) => {
    const img = document.querySelector(sel);
    return img && img.complete && img.naturalWidth > 0;
  }, selector);
  return page.locator(selector).evaluate((img) => ({ width: img.naturalWidth, height: img.naturalHeight }));
}

/** Waits until the element's attribute has the value (states are in data-state). */
export async function attributeIs(page, selector, attribute, value) {
  await page.waitForFunction(([sel, attr, want]) => document.querySelector(sel)?.getAttribute(attr) === want,
    [selector, attribute, value]);
}

/**
 * Turns the page to a portrait tablet (820 × 1180), checks that nothing is wider than the
 * screen (no sideways scrolling), takes a screenshot and turns it back.
 */
export async function portraitFits(page, name) {
  await page.setViewportSize({ width: 820, height: 1180 });
  const widths = await page.evaluate(() => ({ page: document.documentElement.scrollWidth, screen: window.innerWidth }));
  await snap(page, name);
  await page.setViewportSize({ width: 1180, height: 820 });
  assert.ok(widths.page <= widths.screen, `${name}: the page is ${widths.page} px wide on a ${widths.screen} px screen`);
}
