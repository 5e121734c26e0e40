// The one API client: openapi-fetch over the types generated from api/openapi.yaml
// (`schema.d.ts`), same origin, cookie session. Every write carries the CSRF header; a session
// that ended (401, or 403 `csrf_failed`) is reported to whoever listens, so the app can show
// the sign-in screen. Request and response types come only from the generated schema.

import createClient, { type Middleware } from "openapi-fetch";

import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type Me = Schemas["Me"];
export type FleetNode = Schemas["Node"];
export type NodeStatus = Schemas["NodeStatus"];
export type FleetSummary = Schemas["FleetSummary"];
export type Job = Schemas["Command"];
export type JobStatus = Schemas["CommandStatus"];
export type JobEvent = Schemas["JobEvent"];
export type ErrorBody = Schemas["Error"];
export type Labels = Schemas["Labels"];

/** The cookie whose value a write sends as `X-CSRF-Token` (the session cookie is HttpOnly). */
export const CSRF_COOKIE = "moltops_csrf";
export const CSRF_HEADER = "X-CSRF-Token";

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS", "TRACE"]);

/** The value of a cookie readable by the page, or null. */
export function readCookie(name: string): string | null {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

type SessionListener = (reason: "expired" | "csrf") => void;
const sessionListeners = new Set<SessionListener>();

/** Called when the server says the session is gone; returns the unsubscribe function. */
export function onSessionEnded(listener: SessionListener): () => void {
  sessionListeners.add(listener);
  return () => sessionListeners.delete(listener);
}

function isSignInPath(url: string): boolean {
  const path = new URL(url).pathname;
  // These answer 401 as part of their normal flow (a pairing still pending, a bad code).
  return path.startsWith("/pair/") || path.startsWith("/v1/auth/");
}

export const csrfMiddleware: Middleware = {
  onRequest({ request }) {
    if (!SAFE_METHODS.has(request.method.toUpperCase())) {
      const token = readCookie(CSRF_COOKIE);
      if (token) request.headers.set(CSRF_HEADER, token);
    }
    return request;
  },
};

const sessionMiddleware: Middleware = {
  async onResponse({ request, response }) {
    if (isSignInPath(request.url)) return response;
    if (response.status === 401) {
      sessionListeners.forEach((l) => l("expired"));
    } else if (response.status === 403) {
      const body = (await response
        .clone()
        .json()
        .catch(() => null)) as Partial<ErrorBody> | null;
      if (body?.code === "csrf_failed") sessionListeners.forEach((l) => l("csrf"));
    }
    return response;
  },
};

function origin(): string {
  // Same origin as the page. Absolute, because Request needs a base outside a browser (tests).
  return globalThis.location?.origin ?? "";
}

export const api = createClient<paths>({
  baseUrl: origin(),
  credentials: "same-origin",
  // Looked up at call time, so tests can replace the global fetch.
  fetch: (request: Request) => globalThis.fetch(request),
});
api.use(csrfMiddleware, sessionMiddleware);

/** A failed API call: the server's `{code, message}` envelope, or a network failure (status 0). */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly body: ErrorBody | null;
  readonly retryAfterSeconds: number | null;

  constructor(status: number, body: ErrorBody | null, message: string, retryAfter: number | null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = body?.code ?? (status === 0 ? "network" : "unknown");
    this.body = body;
    this.retryAfterSeconds = retryAfter;
  }
}

function isErrorBody(value: unknown): value is ErrorBody {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as ErrorBody).code === "string" &&
    typeof (value as ErrorBody).message === "string"
  );
}

/** Turns a non-2xx answer into an ApiError carrying the server's message. */
export function toApiError(response: Response, error: unknown): ApiError {
  const body = isErrorBody(error) ? error : null;
  const retry = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
  const message =
    body?.message ??
    (typeof error === "string" && error.trim() !== ""
      ? error.trim()
      : `The server answered ${response.status} ${response.statusText}`.trim());
  return new ApiError(response.status, body, message, Number.isFinite(retry) ? retry : null);
}

type Outcome<T> = { data?: T; error?: unknown; response: Response };

/**
 * Awaits an openapi-fetch call and returns its data, or throws an ApiError with the server's
 * message (or a network error, status 0).
 */
export async function unwrap<T>(call: Promise<Outcome<T>>): Promise<T> {
  let outcome: Outcome<T>;
  try {
    outcome = await call;
  } catch (cause) {
    throw networkError(cause);
  }
  if (!outcome.response.ok) throw toApiError(outcome.response, outcome.error);
  return outcome.data as T;
}

export function networkError(cause: unknown): ApiError {
  const detail = cause instanceof Error ? `: ${cause.message}` : "";
  return new ApiError(0, null, `Could not reach the control plane${detail}`, null);
}

/** A human message for anything thrown. */
export function messageOf(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}

/** A fresh Idempotency-Key. crypto.randomUUID needs a secure context; plain HTTP falls back. */
export function newIdempotencyKey(): string {
  const c = globalThis.crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  const bytes = new Uint8Array(16);
  c.getRandomValues(bytes);
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export const FINAL_JOB_STATUSES: ReadonlySet<string> = new Set([
  "succeeded",
  "failed",
  "cancelled",
  "expired",
]);
