// The API mocked at the fetch level: routes by method and path pattern, every request recorded
// (method, path, query, headers, body) so tests can check exactly what the app sent.

import { vi } from "vitest";

export interface Recorded {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: Headers;
  body: unknown;
  rawBody: string;
}

type Handler = (request: Recorded, params: Record<string, string>) => Response | Promise<Response>;

export function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  if (status === 204) return new Response(null, { status, headers });
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });
}

export function apiError(status: number, code: string, message: string, extra: Record<string, unknown> = {}): Response {
  return json(status, { code, message, ...extra });
}

function match(pattern: string, path: string): Record<string, string> | null {
  const want = pattern.split("/").filter(Boolean);
  const have = path.split("/").filter(Boolean);
  if (want.length !== have.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < want.length; i++) {
    const w = want[i] as string;
    const h = have[i] as string;
    if (w.startsWith(":")) params[w.slice(1)] = decodeURIComponent(h);
    else if (w !== h) return null;
  }
  return params;
}

export class FakeServer {
  readonly requests: Recorded[] = [];
  private routes: Array<{ method: string; pattern: string; handler: Handler }> = [];

  /** Later registrations win, so a test can override a default route. */
  on(method: string, pattern: string, handler: Handler | Response | (() => Response)): this {
    const h: Handler = typeof handler === "function" ? (handler as Handler) : () => (handler as Response).clone();
    this.routes.unshift({ method, pattern, handler: h });
    return this;
  }

  /** Answers each call in turn with the next response; the last one repeats. */
  sequence(method: string, pattern: string, responses: Array<() => Response>): this {
    let i = 0;
    return this.on(method, pattern, () => {
      const make = responses[Math.min(i, responses.length - 1)] as () => Response;
      i++;
      return make();
    });
  }

  sent(method: string, path: string): Recorded[] {
    return this.requests.filter((r) => r.method === method && (match(path, r.path) !== null));
  }

  readonly fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const request = input instanceof Request ? input : new Request(String(input), init);
    const url = new URL(request.url);
    const rawBody = request.method === "GET" || request.method === "HEAD" ? "" : await request.text();
    let body: unknown = undefined;
    if (rawBody !== "") {
      try {
        body = JSON.parse(rawBody);
      } catch {
        body = rawBody;
      }
    }
    const recorded: Recorded = {
      method: request.method,
      path: url.pathname,
      query: url.searchParams,
      headers: request.headers,
      body,
      rawBody,
    };
    this.requests.push(recorded);
    for (const route of this.routes) {
      if (route.method !== request.method) continue;
      const params = match(route.pattern, url.pathname);
      if (params) return route.handler(recorded, params);
    }
    return apiError(404, "not_found", `no fake route for ${request.method} ${url.pathname}`);
  };

  install(): this {
    vi.stubGlobal("fetch", this.fetch);
    return this;
  }
}

export const OWNER_PERMISSIONS = [
  "nodes:read",
  "nodes:write",
  "nodes:revoke",
  "commands:read",
  "commands:create",
  "enrollment_tokens:read",
  "enrollment_tokens:write",
  "ca:read",
  "pairings:approve",
  "api_tokens:manage",
  "self:read",
  "users:read",
  "users:manage",
  "roles:read",
  "roles:manage",
  "audit:read",
  "audit:export",
  "audit:verify",
];

export const VIEWER_PERMISSIONS = ["nodes:read", "commands:read", "enrollment_tokens:read", "ca:read", "self:read"];

export function me(role: "owner" | "admin" | "viewer", permissions: string[]) {
  return {
    kind: "device",
    id: "00000000-0000-4000-8000-0000000000aa",
    name: `${role} browser`,
    role,
    scope: "",
    permissions,
  };
}

export const NODE_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
export const JOB_ID = "0190a1b2-0000-7000-8000-000000000b01";

export function node(overrides: Record<string, unknown> = {}) {
  return {
    id: NODE_ID,
    hostname: "web-1",
    labels: { env: "prod" },
    status: "online",
    agent_version: "0.1.0",
    os: "linux",
    arch: "x86_64",
    enrolled_at: "2026-11-01T10:00:00Z",
    last_seen: new Date().toISOString(),
    certificate_not_after: "2027-11-01T10:00:00Z",
    revoked_at: null,
    gateway: null,
    ...overrides,
  };
}

export function job(overrides: Record<string, unknown> = {}) {
  return {
    id: JOB_ID,
    node_id: NODE_ID,
    kind: "service_action",
    status: "queued",
    result: null,
    error: null,
    created_by: "device:00000000-0000-4000-8000-0000000000aa",
    created_at: "2026-11-21T12:00:00Z",
    sent_at: null,
    completed_at: null,
    started_at: null,
    deadline_at: null,
    step: null,
    deliveries: 0,
    idempotency_key: null,
    cancel_requested_at: null,
    cancel_requested_by: null,
    last_event_id: 0,
    ...overrides,
  };
}
