// The management API, with the token of the user logged in here. The token is kept in
// this module's memory only (never in localStorage or a cookie): a reload or a closed tab
// ends the session, and no other page can send it.

let session = null;
let expiryTimer = null;
let onEnded = () => {};

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function whenSessionEnds(callback) {
  onEnded = callback;
}

export function currentSession() {
  return session;
}

export function isAdministrator() {
  return session !== null && session.role === "administrator";
}

export async function logIn(user, password) {
  const answer = await call("POST", "/api/v1/login", {user, password});
  session = {token: answer.token, user, role: answer.role, server: answer.server};
  clearTimeout(expiryTimer);
  expiryTimer = setTimeout(
    () => endSession(`Your session expired after ${Math.round(answer.expires_in / 60)} minutes: log in again.`),
    answer.expires_in * 1000);
  return session;
}

export async function logOut() {
  if (session === null) return;
  try {
    await call("POST", "/api/v1/logout");
  } finally {
    endSession("You logged out.");
  }
}

export function endSession(reason) {
  clearTimeout(expiryTimer);
  const had = session !== null;
  session = null;
  if (had) onEnded(reason);
}

export async function call(method, path, body) {
  const headers = {"Accept": "application/json"};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (session !== null) headers["Authorization"] = `Bearer ${session.token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, {
      title: "no answer",
      detail: `the management server did not answer (${error.message})`,
      fix: "check that it runs and that this address is still right, then reload the page",
    });
  }
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json() : await response.blob();
  if (!response.ok) {
    const problem = data instanceof Blob ? {title: `HTTP ${response.status}`} : data;
    if (response.status === 401 && session !== null && problem.code === "auth.token") {
      endSession(`You were logged out: ${problem.detail}.`);
    }
    throw new ApiError(response.status, problem);
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body ?? {});
export const patch = (path, body) => call("PATCH", path, body);
export const remove = (path) => call("DELETE", path);
