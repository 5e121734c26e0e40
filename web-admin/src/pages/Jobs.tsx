// Jobs: `GET /v1/jobs`, newest first, filtered by status, kind, node and label selector. The
// newest page polls (5 s, backing off on errors); older pages load on request.

import { useEffect, useId, useState, type FormEvent } from "react";

import { api, unwrap, type Job, type JobStatus } from "../api/client";
import { PageHeader } from "../components/PageHeader";
import { Empty, ErrorState, Loading, StaleNotice } from "../components/States";
import { StatusBadge } from "../components/StatusBadge";
import { formatTime, shortId } from "../lib/format";
import { useResource } from "../lib/resource";
import { Link, setQuery, useLocation } from "../lib/router";

const STATUSES: readonly JobStatus[] = ["queued", "dispatched", "running", "succeeded", "failed", "cancelled", "expired"];
const KINDS = ["ping", "install", "service_action"] as const;
type Kind = (typeof KINDS)[number];
const PAGE = 50;


export function jobTitle(job: Job): string {
  const action = job.kind === "service_action" ? "gateway action" : job.kind;
  return `${action} ${shortId(job.id)}`;
}

export function JobTable({ jobs, caption, showNode = true }: { jobs: Job[]; caption: string; showNode?: boolean }) {
  return (
    <div className="table-scroll">
      <table className="table">
        <caption className="visually-hidden">{caption}</caption>
        <thead>
          <tr>
            <th scope="col">Job</th>
            {showNode && <th scope="col">Node</th>}
            <th scope="col">Status</th>
            <th scope="col">Step</th>
            <th scope="col">Created</th>
            <th scope="col">By</th>
          </tr>
        </thead>
        <tbody>
          {jobs.map((job) => (
            <tr key={job.id} data-job-id={job.id}>
              <td>
                <Link to={`/jobs/${job.id}`}>{jobTitle(job)}</Link>
              </td>
              {showNode && (
                <td>
                  <Link to={`/nodes/${job.node_id}`}>
                    <code>{shortId(job.node_id)}</code>
                  </Link>
                </td>
              )}
              <td>
                <StatusBadge status={job.status} />
              </td>
              <td>{job.step ?? "—"}</td>
              <td>{formatTime(job.created_at)}</td>
              <td>
                <code>{job.created_by}</code>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function JobsPage() {
  const location = useLocation();
  const statusParam = location.search.get("status") ?? "";
  const kindParam = location.search.get("kind") ?? "";
  const status = (STATUSES as readonly string[]).includes(statusParam) ? (statusParam as JobStatus) : undefined;
  const kind = (KINDS as readonly string[]).includes(kindParam) ? (kindParam as Kind) : undefined;
  const nodeId = location.search.get("node_id") ?? "";
  const selector = location.search.get("selector") ?? "";

  const query = {
    status,
    kind,
    node_id: nodeId === "" ? undefined : nodeId,
    selector: selector === "" ? undefined : selector,
  };
  const first = useResource(
    () => unwrap(api.GET("/v1/jobs", { params: { query: { ...query, limit: PAGE } } })),
    [status, kind, nodeId, selector],
    { pollMs: 5_000 },
  );
  const [older, setOlder] = useState<{ items: Job[]; next: string | null; loading: boolean; error: Error | null }>({
    items: [],
    next: null,
    loading: false,
    error: null,
  });
  useEffect(() => setOlder({ items: [], next: null, loading: false, error: null }), [status, kind, nodeId, selector]);

  const nextCursor = older.items.length > 0 ? older.next : (first.data?.next_cursor ?? null);
  const loadOlder = async () => {
    if (!nextCursor) return;
    setOlder((o) => ({ ...o, loading: true, error: null }));
    try {
      const page = await unwrap(api.GET("/v1/jobs", { params: { query: { ...query, limit: PAGE, cursor: nextCursor } } }));
      setOlder((o) => ({ items: [...o.items, ...page.items], next: page.next_cursor, loading: false, error: null }));
    } catch (e) {
      setOlder((o) => ({ ...o, loading: false, error: e instanceof Error ? e : new Error(String(e)) }));
    }
  };

  // The newest page is re-read; drop older rows it now holds.
  const newest = first.data?.items ?? [];
  const seen = new Set(newest.map((j) => j.id));
  const jobs = [...newest, ...older.items.filter((j) => !seen.has(j.id))];
  const filtered = Boolean(status || kind || nodeId || selector);

  return (
    <>
      <PageHeader title="Jobs" />
      <JobFilters status={status ?? ""} kind={kind ?? ""} nodeId={nodeId} selector={selector} />
      <StaleNotice error={first.data ? first.error : undefined} retryInMs={first.retryInMs} />
      {first.loading ? (
        <Loading label="Loading jobs" />
      ) : !first.data ? (
        <ErrorState title="Could not load the jobs." error={first.error ?? new Error("no data")} onRetry={first.refresh} />
      ) : jobs.length === 0 ? (
        <Empty title={filtered ? "No jobs match these filters." : "No jobs yet."}>
          <p>Jobs appear when someone installs, starts, stops, restarts or pings a gateway.</p>
        </Empty>
      ) : (
        <>
          <JobTable jobs={jobs} caption="Jobs, newest first" />
          {older.error && (
            <p role="alert" className="form-error">
              Could not load older jobs: {older.error.message}
            </p>
          )}
          {nextCursor && (
            <button type="button" onClick={() => void loadOlder()} disabled={older.loading}>
              {older.loading ? "Loading…" : "Load older jobs"}
            </button>
          )}
        </>
      )}
    </>
  );
}

function JobFilters({
  status,
  kind,
  nodeId,
  selector,
}: {
  status: string;
  kind: string;
  nodeId: string;
  selector: string;
}) {
  const ids = { status: useId(), kind: useId(), node: useId(), selector: useId() };
  const [draft, setDraft] = useState({ nodeId, selector });
  useEffect(() => setDraft({ nodeId, selector }), [nodeId, selector]);
  const apply = (next: Partial<{ status: string; kind: string; node_id: string; selector: string }>) =>
    setQuery({ status, kind, node_id: draft.nodeId.trim(), selector: draft.selector.trim(), ...next });
  const submit = (event: FormEvent) => {
    event.preventDefault();
    apply({});
  };
  return (
    <form className="filters" role="search" aria-label="Filter jobs" onSubmit={submit}>
      <div className="field">
        <label htmlFor={ids.status}>Status</label>
        <select id={ids.status} value={status} onChange={(e) => apply({ status: e.target.value })}>
          <option value="">All statuses</option>
          {STATUSES.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </select>
      </div>
      <div className="field">
        <label htmlFor={ids.kind}>Kind</label>
        <select id={ids.kind} value={kind} onChange={(e) => apply({ kind: e.target.value })}>
          <option value="">All kinds</option>
          <option value="install">install</option>
          <option value="service_action">gateway action</option>
          <option value="ping">ping</option>
        </select>
      </div>
      <div className="field">
        <label htmlFor={ids.node}>Node ID</label>
        <input
          id={ids.node}
          value={draft.nodeId}
          onChange={(e) => setDraft((d) => ({ ...d, nodeId: e.target.value }))}
          spellCheck={false}
          autoComplete="off"
        />
      </div>
      <div className="field">
        <label htmlFor={ids.selector}>Node label selector</label>
        <input
          id={ids.selector}
          value={draft.selector}
          placeholder="env=prod"
          onChange={(e) => setDraft((d) => ({ ...d, selector: e.target.value }))}
          spellCheck={false}
          autoComplete="off"
        />
      </div>
      <button type="submit" className="primary">
        Apply filters
      </button>
    </form>
  );
}
