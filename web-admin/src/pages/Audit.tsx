// The audit trail: `GET /v1/audit` filtered by actor, action, target and time, newest first,
// older pages on request; export as JSON Lines (`GET /v1/audit/export`, a download); sign a
// checkpoint now; verify the hash chain (`GET /v1/audit/verify`), also against checkpoints kept
// elsewhere (`POST /v1/audit/verify` with the checkpoint lines of an earlier export).

import { useEffect, useId, useState, type FormEvent } from "react";

import { api, unwrap, type Schemas } from "../api/client";
import { PageHeader } from "../components/PageHeader";
import { Empty, ErrorState, FormError, Loading, Progress } from "../components/States";
import { StatusBadge } from "../components/StatusBadge";
import { useCan } from "../lib/auth";
import { formatTime, shortId } from "../lib/format";
import { useResource } from "../lib/resource";
import { setQuery, useLocation } from "../lib/router";

type AuditEvent = Schemas["AuditEvent"];
type Verification = Schemas["AuditVerification"];
type Checkpoint = Schemas["Checkpoint"];

const FILTERS = ["actor", "action", "target_kind", "target_id", "since", "until"] as const;
type FilterName = (typeof FILTERS)[number];
type Filters = Record<FilterName, string>;

function readFilters(search: URLSearchParams): Filters {
  const out = {} as Filters;
  for (const name of FILTERS) out[name] = search.get(name) ?? "";
  return out;
}

/** The query for the API: empty filters left out. */
function apiQuery(filters: Filters) {
  const q: Partial<Record<FilterName, string>> = {};
  for (const name of FILTERS) if (filters[name] !== "") q[name] = filters[name];
  return q;
}

/** `datetime-local` value (local time) to RFC 3339, or "" if empty or invalid. */
export function localToRfc3339(value: string): string {
  if (value === "") return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}

function rfc3339ToLocal(value: string): string {
  if (value === "") return "";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

export function AuditPage() {
  const can = useCan();
  const location = useLocation();
  const filters = readFilters(location.search);
  const key = FILTERS.map((f) => filters[f]).join("\u0000");
  const first = useResource(
    () => unwrap(api.GET("/v1/audit", { params: { query: { ...apiQuery(filters), limit: 100 } } })),
    [key],
  );
  const [older, setOlder] = useState<{ items: AuditEvent[]; next: string | undefined; loading: boolean; error: Error | null }>({
    items: [],
    next: undefined,
    loading: false,
    error: null,
  });
  useEffect(() => setOlder({ items: [], next: undefined, loading: false, error: null }), [key, first.updatedAt]);

  const nextCursor = older.items.length > 0 ? older.next : first.data?.next_cursor;
  const loadOlder = async () => {
    if (!nextCursor) return;
    setOlder((o) => ({ ...o, loading: true, error: null }));
    try {
      const page = await unwrap(api.GET("/v1/audit", { params: { query: { ...apiQuery(filters), limit: 100, cursor: nextCursor } } }));
      setOlder((o) => ({ items: [...o.items, ...page.items], next: page.next_cursor, loading: false, error: null }));
    } catch (e) {
      setOlder((o) => ({ ...o, loading: false, error: e instanceof Error ? e : new Error(String(e)) }));
    }
  };
  const rows = [...(first.data?.items ?? []), ...older.items];
  const filtered = FILTERS.some((f) => filters[f] !== "");

  return (
    <>
      <PageHeader title="Audit trail">
        <button type="button" onClick={first.refresh}>
          Refresh
        </button>
      </PageHeader>
      {(can("audit:verify") || can("audit:export")) && (
        <div className="grid-2">
          {can("audit:verify") && <VerifyChain />}
          {can("audit:export") && <ExportAudit filters={filters} />}
        </div>
      )}
      <AuditFilters filters={filters} />
      <section aria-labelledby="events-heading" className="card">
        <h2 id="events-heading">Events</h2>
        {first.loading ? (
          <Loading label="Loading audit events" />
        ) : !first.data ? (
          <ErrorState title="Could not load the audit trail." error={first.error ?? new Error("no data")} onRetry={first.refresh} />
        ) : rows.length === 0 ? (
          <Empty title={filtered ? "No audit events match these filters." : "No audit events yet."} />
        ) : (
          <>
            {first.error && (
              <p role="alert" className="form-error">
                Could not refresh: {first.error.message}
              </p>
            )}
            <div className="table-scroll">
              <table className="table" data-testid="audit-table">
                <caption className="visually-hidden">Audit events, newest first</caption>
                <thead>
                  <tr>
                    <th scope="col">Seq</th>
                    <th scope="col">Time</th>
                    <th scope="col">Actor</th>
                    <th scope="col">Action</th>
                    <th scope="col">Target</th>
                    <th scope="col">Reason</th>
                    <th scope="col">Outcome</th>
                    <th scope="col">Detail</th>
                  </tr>
                </thead>
                <tbody>
                  {rows.map((e) => (
                    <tr key={e.id} data-audit-action={e.action}>
                      <td>{e.seq}</td>
                      <td>{formatTime(e.occurred_at)}</td>
                      <td>
                        {e.actor_kind} <code title={e.actor_id}>{shortId(e.actor_id)}</code>
                      </td>
                      <td>
                        <code>{e.action}</code>
                      </td>
                      <td>
                        {e.target_kind} {e.target_id && <code title={e.target_id}>{shortId(e.target_id)}</code>}
                      </td>
                      <td>{e.reason ?? <span className="muted">—</span>}</td>
                      <td>
                        <StatusBadge status={e.outcome} />
                      </td>
                      <td>
                        <details>
                          <summary>Show</summary>
                          <pre className="json">
                            {JSON.stringify(
                              {
                                actor_id: e.actor_id,
                                auth_method: e.auth_method,
                                target_id: e.target_id,
                                request_id: e.request_id,
                                detail: e.detail,
                                hash: e.hash,
                              },
                              null,
                              2,
                            )}
                          </pre>
                        </details>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
            {older.error && (
              <p role="alert" className="form-error">
                Could not load older events: {older.error.message}
              </p>
            )}
            {nextCursor && (
              <button type="button" onClick={() => void loadOlder()} disabled={older.loading}>
                {older.loading ? "Loading…" : "Load older events"}
              </button>
            )}
          </>
        )}
      </section>
    </>
  );
}

function AuditFilters({ filters }: { filters: Filters }) {
  const ids = {
    actor: useId(),
    action: useId(),
    target_kind: useId(),
    target_id: useId(),
    since: useId(),
    until: useId(),
  };
  const [draft, setDraft] = useState({
    ...filters,
    since: rfc3339ToLocal(filters.since),
    until: rfc3339ToLocal(filters.until),
  });
  const submit = (event: FormEvent) => {
    event.preventDefault();
    setQuery({
      actor: draft.actor.trim(),
      action: draft.action.trim(),
      target_kind: draft.target_kind.trim(),
      target_id: draft.target_id.trim(),
      since: localToRfc3339(draft.since),
      until: localToRfc3339(draft.until),
    });
  };
  const text = (name: Exclude<FilterName, "since" | "until">, label: string, placeholder?: string) => (
    <div className="field">
      <label htmlFor={ids[name]}>{label}</label>
      <input
        id={ids[name]}
        value={draft[name]}
        placeholder={placeholder}
        onChange={(e) => setDraft((d) => ({ ...d, [name]: e.target.value }))}
        spellCheck={false}
        autoComplete="off"
      />
    </div>
  );
  return (
    <form className="filters" role="search" aria-label="Filter audit events" onSubmit={submit}>
      {text("action", "Action", "node.revoke")}
      {text("actor", "Actor ID")}
      {text("target_kind", "Target kind", "node")}
      {text("target_id", "Target ID")}
      <div className="field">
        <label htmlFor={ids.since}>From (local time)</label>
        <input id={ids.since} type="datetime-local" value={draft.since} onChange={(e) => setDraft((d) => ({ ...d, since: e.target.value }))} />
      </div>
      <div className="field">
        <label htmlFor={ids.until}>Until (local time)</label>
        <input id={ids.until} type="datetime-local" value={draft.until} onChange={(e) => setDraft((d) => ({ ...d, until: e.target.value }))} />
      </div>
      <button type="submit" className="primary">
        Apply filters
      </button>
      <button
        type="button"
        onClick={() => {
          setDraft({ actor: "", action: "", target_kind: "", target_id: "", since: "", until: "" });
          setQuery({});
        }}
      >
        Clear
      </button>
    </form>
  );
}

function ExportAudit({ filters }: { filters: Filters }) {
  const [checkpoint, setCheckpoint] = useState<{ busy: boolean; result: string | null; error: string | null }>({
    busy: false,
    result: null,
    error: null,
  });
  const params = new URLSearchParams();
  if (filters.since) params.set("since", filters.since);
  if (filters.until) params.set("until", filters.until);
  const query = params.toString();
  const href = `/v1/audit/export${query ? `?${query}` : ""}`;
  return (
    <section aria-labelledby="export-heading" className="card">
      <h2 id="export-heading">Export</h2>
      <p>
        JSON Lines, oldest first: the events{query ? " in the chosen time range" : ""}, then every signed checkpoint and
        the keys that verify them. Keep a copy off this server.
      </p>
      <div className="toolbar">
        <a className="button" href={href} download="moltops-audit.jsonl">
          Download export
        </a>
        <button
          type="button"
          disabled={checkpoint.busy}
          onClick={async () => {
            setCheckpoint({ busy: true, result: null, error: null });
            try {
              const c = await unwrap(api.POST("/v1/audit/checkpoints"));
              setCheckpoint({ busy: false, result: `Checkpoint of row ${c.seq} signed ${formatTime(c.signed_at)} (key ${c.key_id}).`, error: null });
            } catch (e) {
              setCheckpoint({ busy: false, result: null, error: e instanceof Error ? e.message : String(e) });
            }
          }}
        >
          {checkpoint.busy ? "Signing…" : "Sign a checkpoint now"}
        </button>
      </div>
      {checkpoint.result && <p role="status">{checkpoint.result}</p>}
      <FormError error={checkpoint.error} />
    </section>
  );
}

/** The checkpoint lines of an export (`{"type":"checkpoint", …}`), without their `type`. */
export function checkpointsFromExport(text: string): Checkpoint[] {
  const out: Checkpoint[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      continue;
    }
    if (typeof value !== "object" || value === null || (value as { type?: unknown }).type !== "checkpoint") continue;
    const { seq, hash, signed_at, key_id, signature } = value as Checkpoint;
    out.push({ seq, hash, signed_at, key_id, signature });
  }
  return out;
}

function VerifyChain() {
  const fileId = useId();
  const [state, setState] = useState<{ busy: boolean; result: Verification | null; error: string | null; against: number | null }>({
    busy: false,
    result: null,
    error: null,
    against: null,
  });
  const [file, setFile] = useState<File | null>(null);

  const verify = async (event: FormEvent) => {
    event.preventDefault();
    setState({ busy: true, result: null, error: null, against: null });
    try {
      if (file) {
        const checkpoints = checkpointsFromExport(await file.text());
        if (checkpoints.length === 0) {
          setState({ busy: false, result: null, error: "That file holds no checkpoint lines.", against: null });
          return;
        }
        const result = await unwrap(api.POST("/v1/audit/verify", { body: { checkpoints } }));
        setState({ busy: false, result, error: null, against: checkpoints.length });
      } else {
        const result = await unwrap(api.GET("/v1/audit/verify"));
        setState({ busy: false, result, error: null, against: null });
      }
    } catch (e) {
      setState({ busy: false, result: null, error: e instanceof Error ? e.message : String(e), against: null });
    }
  };

  const r = state.result;
  return (
    <section aria-labelledby="verify-heading" className="card">
      <h2 id="verify-heading">Verify the chain</h2>
      <form onSubmit={(e) => void verify(e)}>
        <p>Re-walks every row's hash link and every signed checkpoint. On a large trail this takes a while.</p>
        <div className="field">
          <label htmlFor={fileId}>Also check checkpoints from an earlier export (optional)</label>
          <input id={fileId} type="file" accept=".jsonl,.json,application/x-ndjson" onChange={(e) => setFile(e.target.files?.[0] ?? null)} />
        </div>
        <button type="submit" className="primary" disabled={state.busy}>
          {state.busy ? "Verifying…" : "Verify chain"}
        </button>
      </form>
      {state.busy && <Progress label="Verifying the audit chain" />}
      <FormError error={state.error} />
      {r && (
        <div role="status" className={r.ok ? "notice notice-success" : "notice notice-error"} data-testid="verify-result">
          <p>
            <strong>{r.ok ? "The chain is intact." : "The chain is broken."}</strong>{" "}
            {r.rows_checked} rows and {r.checkpoints_checked} checkpoints checked
            {state.against !== null ? ` (${state.against} from your file)` : ""}; head at row {r.head_seq}
            {r.unchained_rows > 0 ? `; ${r.unchained_rows} rows predate the chain and cannot be verified` : ""}.
          </p>
          {!r.ok && (
            <p>
              First bad row: {r.first_bad_seq ?? "—"}. {r.problem}
            </p>
          )}
        </div>
      )}
    </section>
  );
}
