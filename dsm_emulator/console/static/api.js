// The DSM REST API as the console uses it: a session token from POST /sys/v1/session/auth (Basic with the
// user's email and password), then "Authorization: Bearer" on every call, like the sdkms clients. The token
// lives in sessionStorage (this tab only) and is dropped on a 401.
const TOKEN = "xkslab.console.token";
const WHO = "xkslab.console.who";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function signedIn() {
  return sessionStorage.getItem(TOKEN) !== null;
}

export function who() {
  return sessionStorage.getItem(WHO) || "";
}

function basic(email, password) {
  const bytes = new TextEncoder().encode(`${email}:${password}`);
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return "Basic " + btoa(text);
}

export async function signIn(email, password) {
  const answer = await fetch("/sys/v1/session/auth", {
    method: "POST",
    headers: { Authorization: basic(email, password) },
  });
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new ApiError(answer.status, body.message || `sign-in failed (${answer.status})`);
  sessionStorage.setItem(TOKEN, body.access_token);
  sessionStorage.setItem(WHO, email);
}

export async function signOut() {
  if (signedIn()) await call("POST", "/sys/v1/session/terminate").catch(() => undefined);
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(WHO);
}

export async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN)}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await answer.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { message: text };
  }
  if (answer.status === 401) {
    sessionStorage.removeItem(TOKEN);
    window.dispatchEvent(new Event("xkslab-signed-out"));
  }
  if (!answer.ok) throw new ApiError(answer.status, (data && data.message) || `HTTP ${answer.status}`);
  return data;
}
