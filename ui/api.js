// The web UI's only way to the server: every call to /api/v1 goes through `request`.
//
// - The session cookie travels by itself (same origin); every request that changes something
//   also carries the session's CSRF token in `X-CSRF-Token`, as the API requires.
// - Errors arrive as RFC 9457 problem+json; they become an `ApiError` whose message is the
//   server's `detail` (the sentence an operator can act on), so views only have to show it.
// - A 401 means the session is gone (idle timeout, signed out elsewhere): the handler set with
//   `onSessionLost` takes the user back to the sign-in form. Calls where a 401 means something
//   else (a wrong password at sign-in) ask for it to be returned as an error instead.

const BASE = '/api/v1';

/** A failed API call: HTTP status, the problem's title and detail, and the field it names. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(describe(status, problem));
    this.name = 'ApiError';
    this.status = status;
    this.title = problem?.title ?? null;
    this.detail = problem?.detail ?? null;
    this.field = problem?.field ?? null;
    /** A condition the UI acts on (`password_change_due`: choose a new password first). */
    this.code = problem?.code ?? null;
  }
}

function describe(status, problem) {
  if (status === 0) {
    return 'The linesight server cannot be reached. Check the network connection and try again.';
  }
  if (problem?.detail) {
    // The server words details as sentences in lower case ("invalid user name or password").
    return problem.detail.charAt(0).toUpperCase() + problem.detail.slice(1);
  }
  if (status >= 500) {
    // The API never sends the details of its own failures; they are in the server log.
    return `The server could not complete the request (${status} ${problem?.title ?? 'error'}). ` +
      'The cause is recorded in the server log.';
  }
  return `The request was refused (${status} ${problem?.title ?? 'error'}).`;
}

let csrfToken = null;
let sessionLost = () => {};

/** Remembers the CSRF token of the session opened at sign-in (null after sign-out). */
export function setCsrfToken(token) {
  csrfToken = token ?? null;
}

/** Sets what happens when the server answers 401 to an ordinary call. */
export function onSessionLost(handler) {
  sessionLost = handler;
}

/** `path` under /api/v1 with the query parameters that are set. */
export function apiUrl(path, query) {
  const url = new URL(BASE + path, location.origin);
  for (const [key, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== '') {
      url.searchParams.set(key, String(value));
    }
  }
  return url.pathname + url.search;
}

/**
 * Calls the API. `json` sends a JSON body, `form` a FormData (multipart). `unauthorizedIsError`
 * returns a 401 as an ordinary ApiError instead of ending the session in the UI. `background`
 * marks a call the UI makes by itself (a view refreshing): it does not keep the session alive,
 * so a terminal left on such a view still signs itself out after the idle time.
 * Resolves to the parsed JSON body, or null for an empty answer (204).
 */
export async function request(method, path, { query, json, form, unauthorizedIsError = false, background = false } = {}) {
  const headers = { Accept: 'application/json, application/problem+json' };
  if (background) {
    headers['X-Linesight-Background'] = '1';
  }
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // The browser sets the multipart boundary.
  }
  if (!['GET', 'HEAD'].includes(method) && csrfToken) {
    headers['X-CSRF-Token'] = csrfToken;
  }
  let response;
  try {
    response = await fetch(apiUrl(path, query), {
      method,
      headers,
      body,
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, null);
  }
  const type = response.headers.get('Content-Type') ?? '';
  const parsed = type.includes('json') ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const error = new ApiError(response.status, parsed);
    if (response.status === 401 && !unauthorizedIsError) {
      sessionLost(error);
    }
    throw error;
  }
  return response.status === 204 ? null : parsed;
}

export const api = {
  get: (path, query, options) => request('GET', path, { ...options, query }),
  post: (path, json, options) => request('POST', path, { ...options, json }),
  upload: (path, form, options) => request('POST', path, { ...options, form }),
  delete: (path, options) => request('DELETE', path, options),
};
