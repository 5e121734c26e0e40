// Fleet overview: counts by status and version (`GET /v1/fleet/summary`), and the nodes
// (`GET /v1/nodes`, cursor pages of 200 loaded as the table scrolls, rows windowed), filtered by
// label selector and status. Both poll while the tab is visible (5 s, doubling on errors up to
// 60 s); only the pages in view are re-read. The gateway column shows each listed node's
// `gateway` summary, so a page of rows is one request; the full report is on the node's page.

import { useCallback, useEffect, useId, useMemo, useRef, useState, type FormEvent } from "react";

import { api, unwrap, type FleetNode, type FleetSummary, type NodeStatus, type Schemas } from "../api/client";
import { PageHeader } from "../components/PageHeader";
import { Empty, ErrorState, Loading, StaleNotice } from "../components/States";
import { StatusBadge } from "../components/StatusBadge";
import { VirtualTable, type Column } from "../components/VirtualTable";
import { useCan } from "../lib/auth";
import { formatAge, formatCount, formatTime, labelsToText } from "../lib/format";
import { useNow, useResource } from "../lib/resource";
import { Link, setQuery, useLocation } from "../lib/router";

export const PAGE_SIZE = 200;
const POLL_MS = 5_000;
const MAX_BACKOFF_MS = 60_000;
const STATUSES: readonly NodeStatus[] = ["online", "offline", "revoked"];

export function FleetPage() {
  const location = useLocation();
  const selector = location.search.get("selector") ?? "";
  const rawStatus = location.search.get("status") ?? "";
  const status = (STATUSES as readonly string[]).includes(rawStatus) ? (rawStatus as NodeStatus) : "";
  const summary = useResource(() => unwrap(api.GET("/v1/fleet/summary")), [], {
    pollMs: POLL_MS,
    maxBackoffMs: MAX_BACKOFF_MS,
  });

  const known =
    selector === "" && summary.data ? (status === "" ? summary.data.total : summary.data[status]) : undefined;

  return (
    <>
      <PageHeader title="Fleet" />
      <SummaryPanel summary={summary.data} loading={summary.loading} error={summary.error} onRetry={summary.refresh} />
      <Filters selector={selector} status={status} />
      <NodeList selector={selector} status={status} knownTotal={known} />
    </>
  );
}

function SummaryPanel({
  summary,
  loading,
  error,
  onRetry,
}: {
  summary: FleetSummary | undefined;
  loading: boolean;
  error: Error | undefined;
  onRetry: () => void;
}) {
  if (loading) return <Loading label="Loading the fleet summary" />;
  if (!summary) return <ErrorState title="Could not load the fleet summary." error={error ?? new Error("no data")} onRetry={onRetry} />;
  return (
    <section aria-labelledby="summary-heading" className="summary">
      <h2 id="summary-heading" className="visually-hidden">
        Summary
      </h2>
      <dl className="stats" data-testid="fleet-counts">
        <Stat label="Nodes" value={summary.total} />
        <Stat label="Online" value={summary.online} tone="good" />
        <Stat label="Offline" value={summary.offline} tone="warn" />
        <Stat label="Revoked" value={summary.revoked} tone="bad" />
        <Stat label="Gateways installed" value={summary.gateways.installed} />
        <Stat label="Gateways running" value={summary.gateways.running} />
        <Stat label="Gateways ready" value={summary.gateways.ready} tone="good" />
        <Stat label="Crash loops" value={summary.gateways.crash_loop} tone={summary.gateways.crash_loop > 0 ? "bad" : undefined} />
      </dl>
      <div className="versions">
        <VersionTable caption="Agent versions" counts={summary.agent_versions} />
        <VersionTable caption="Gateway versions" counts={summary.gateway_versions} />
      </div>
    </section>
  );
}

function Stat({ label, value, tone }: { label: string; value: number; tone?: "good" | "warn" | "bad" | undefined }) {
  return (
    <div className={`stat${tone ? ` stat-${tone}` : ""}`}>
      <dt>{label}</dt>
      <dd>{formatCount(value)}</dd>
    </div>
  );
}

function VersionTable({ caption, counts }: { caption: string; counts: Record<string, number> }) {
  const rows = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  return (
    <table className="table compact">
      <caption>{caption}</caption>
      <thead>
        <tr>
          <th scope="col">Version</th>
          <th scope="col">Nodes</th>
        </tr>
      </thead>
      <tbody>
        {rows.length === 0 ? (
          <tr>
            <td colSpan={2}>None reported</td>
          </tr>
        ) : (
          rows.map(([version, count]) => (
            <tr key={version}>
              <td>{version}</td>
              <td>{formatCount(count)}</td>
            </tr>
          ))
        )}
      </tbody>
    </table>
  );
}

function Filters({ selector, status }: { selector: string; status: NodeStatus | "" }) {
  const selectorId = useId();
  const statusId = useId();
  const [draft, setDraft] = useState(selector);
  useEffect(() => setDraft(selector), [selector]);

  const apply = (event: FormEvent) => {
    event.preventDefault();
    setQuery({ selector: draft.trim(), status });
  };

  return (
    <form className="filters" onSubmit={apply} role="search" aria-label="Filter nodes">
      <div className="field">
        <label htmlFor={selectorId}>Label selector</label>
        <input
          id={selectorId}
          value={draft}
          placeholder="env=prod,tier!=db"
          onChange={(e) => setDraft(e.target.value)}
          spellCheck={false}
          autoComplete="off"
        />
      </div>
      <div className="field">
        <label htmlFor={statusId}>Status</label>
        <select id={statusId} value={status} onChange={(e) => setQuery({ selector: draft.trim(), status: e.target.value })}>
          <option value="">All statuses</option>
          {STATUSES.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </select>
      </div>
      <button type="submit" className="primary">
        Apply filters
      </button>
      {(selector !== "" || status !== "") && (
        <button type="button" onClick={() => setQuery({})}>
          Clear filters
        </button>
      )}
    </form>
  );
}

interface Page {
  cursor: string | undefined;
  items: FleetNode[];
  next: string | null;
}

interface ListState {
  pages: Page[];
  loading: boolean;
  error: Error | undefined;
  loadingMore: boolean;
  pollError: Error | undefined;
  retryInMs: number | undefined;
  updatedAt: number | undefined;
}

const EMPTY_LIST: ListState = {
  pages: [],
  loading: true,
  error: undefined,
  loadingMore: false,
  pollError: undefined,
  retryInMs: undefined,
  updatedAt: undefined,
};

/** The pages of nodes for one filter, loaded as they come into view and re-read while shown. */
export function useNodePages(selector: string, status: NodeStatus | "") {
  const [state, setState] = useState<ListState>(EMPTY_LIST);
  const stateRef = useRef(state);
  stateRef.current = state;
  const range = useRef<[number, number]>([0, 0]);
  const generation = useRef(0);

  const fetchPage = useCallback(
    (cursor: string | undefined) =>
      unwrap(
        api.GET("/v1/nodes", {
          params: {
            query: {
              selector: selector === "" ? undefined : selector,
              status: status === "" ? undefined : status,
              limit: PAGE_SIZE,
              cursor,
            },
          },
        }),
      ),
    [selector, status],
  );

  const loadFirst = useCallback(() => {
    const gen = ++generation.current;
    setState(EMPTY_LIST);
    fetchPage(undefined).then(
      (page) => {
        if (gen !== generation.current) return;
        setState({
          ...EMPTY_LIST,
          loading: false,
          pages: [{ cursor: undefined, items: page.items, next: page.next_cursor }],
          updatedAt: Date.now(),
        });
      },
      (error: unknown) => {
        if (gen !== generation.current) return;
        setState({ ...EMPTY_LIST, loading: false, error: error instanceof Error ? error : new Error(String(error)) });
      },
    );
  }, [fetchPage]);

  useEffect(loadFirst, [loadFirst]);

  const loadMore = useCallback(() => {
    const current = stateRef.current;
    const last = current.pages[current.pages.length - 1];
    if (!last?.next || current.loadingMore || current.loading) return;
    const gen = generation.current;
    const cursor = last.next;
    setState((s) => ({ ...s, loadingMore: true }));
    fetchPage(cursor).then(
      (page) => {
        if (gen !== generation.current) return;
        setState((s) => {
          const tail = s.pages[s.pages.length - 1];
          // A refresh may have moved the end meanwhile; append only onto the page asked after.
          if (!tail || tail.next !== cursor) return { ...s, loadingMore: false };
          return {
            ...s,
            loadingMore: false,
            pollError: undefined,
            pages: [...s.pages, { cursor, items: page.items, next: page.next_cursor }],
          };
        });
      },
      (error: unknown) => {
        if (gen !== generation.current) return;
        setState((s) => ({ ...s, loadingMore: false, pollError: error instanceof Error ? error : new Error(String(error)) }));
      },
    );
  }, [fetchPage]);

  const onRange = useCallback(
    (start: number, end: number) => {
      range.current = [start, end];
      const loaded = stateRef.current.pages.reduce((n, p) => n + p.items.length, 0);
      if (end >= loaded - PAGE_SIZE / 4) loadMore();
    },
    [loadMore],
  );

  // Re-read the pages that hold the rows in view, every POLL_MS while the tab is visible.
  useEffect(() => {
    let cancelled = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let delay = POLL_MS;
    const gen = generation.current;

    const refresh = async () => {
      const { pages, loading, error } = stateRef.current;
      if (loading || error || pages.length === 0) return schedule();
      const [start, end] = range.current;
      const wanted: number[] = [];
      let offset = 0;
      pages.forEach((page, index) => {
        const pageEnd = offset + page.items.length;
        if ((pageEnd > start && offset <= end) || (index === pages.length - 1 && end >= offset)) wanted.push(index);
        offset = pageEnd;
      });
      if (wanted.length === 0) wanted.push(0);
      try {
        const fresh = await Promise.all(wanted.map((i) => fetchPage(pages[i]?.cursor)));
        if (cancelled || gen !== generation.current) return;
        delay = POLL_MS;
        setState((s) => {
          const next = s.pages.slice();
          wanted.forEach((index, k) => {
            const old = next[index];
            const page = fresh[k];
            if (old && page) next[index] = { cursor: old.cursor, items: page.items, next: page.next_cursor };
          });
          return { ...s, pages: next, pollError: undefined, retryInMs: undefined, updatedAt: Date.now() };
        });
      } catch (error) {
        if (cancelled || gen !== generation.current) return;
        delay = Math.min(delay * 2, MAX_BACKOFF_MS);
        setState((s) => ({ ...s, pollError: error instanceof Error ? error : new Error(String(error)), retryInMs: delay }));
      }
      schedule();
    };
    const schedule = () => {
      clearTimeout(timer);
      if (!cancelled && !document.hidden) timer = setTimeout(() => void refresh(), delay);
    };
    const onVisibility = () => {
      if (document.hidden) clearTimeout(timer);
      else void refresh();
    };
    document.addEventListener("visibilitychange", onVisibility);
    schedule();
    return () => {
      cancelled = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisibility);
    };
  }, [fetchPage]);

  const items = useMemo(() => state.pages.flatMap((p) => p.items), [state.pages]);
  const hasMore = Boolean(state.pages[state.pages.length - 1]?.next);
  return { ...state, items, hasMore, onRange, loadMore, reload: loadFirst };
}

/** The gateway at a glance: version and health, in words (the badge's colour only repeats them). */
export function GatewayCell({ gateway }: { gateway: Schemas["GatewayBrief"] | null }) {
  if (!gateway) return <span className="muted">unknown</span>;
  if (!gateway.installed) return <span className="muted">not installed</span>;
  // A crash loop outranks the rest: between crashes the process may briefly run, even answer.
  const health = gateway.crash_loop
    ? "crash loop"
    : gateway.ready
      ? "ready"
      : gateway.running
        ? "not ready"
        : "stopped";
  const label = health === "not ready" ? "running, not ready" : health;
  return (
    <span className="gateway-cell">
      <span>{gateway.version ?? <span className="muted">version unknown</span>}</span>{" "}
      <StatusBadge status={health} label={label} />
    </span>
  );
}

function NodeList({
  selector,
  status,
  knownTotal,
}: {
  selector: string;
  status: NodeStatus | "";
  knownTotal: number | undefined;
}) {
  const can = useCan();
  const list = useNodePages(selector, status);
  const now = useNow(5_000);

  const columns: Column<FleetNode>[] = [
    {
      key: "hostname",
      header: "Host",
      render: (n) => (
        <Link to={`/nodes/${n.id}`} className="row-link">
          {n.hostname}
        </Link>
      ),
    },
    { key: "status", header: "Status", render: (n) => <StatusBadge status={n.status} /> },
    { key: "gateway", header: "Gateway", render: (n) => <GatewayCell gateway={n.gateway} /> },
    {
      key: "labels",
      header: "Labels",
      render: (n) => {
        const text = labelsToText(n.labels);
        return text === "" ? <span className="muted">none</span> : <span title={text}>{text}</span>;
      },
    },
    { key: "agent", header: "Agent", render: (n) => n.agent_version },
    {
      key: "seen",
      header: "Last seen",
      render: (n) => <span title={formatTime(n.last_seen)}>{formatAge(n.last_seen, now)}</span>,
    },
  ];

  const filtered = selector !== "" || status !== "";
  return (
    <section aria-labelledby="nodes-heading" className="nodes">
      <div className="section-header">
        <h2 id="nodes-heading">Nodes</h2>
        <p className="muted" aria-live="off">
          {list.loading
            ? ""
            : `${formatCount(list.items.length)} loaded${knownTotal !== undefined ? ` of ${formatCount(knownTotal)}` : ""}${
                list.updatedAt ? ` · updated ${new Date(list.updatedAt).toLocaleTimeString()}` : ""
              }`}
        </p>
      </div>
      <StaleNotice error={list.pollError} retryInMs={list.retryInMs} />
      {list.loading ? (
        <Loading label="Loading nodes" />
      ) : list.error ? (
        <ErrorState title="Could not load the nodes." error={list.error} onRetry={list.reload} />
      ) : list.items.length === 0 ? (
        filtered ? (
          <Empty title="No nodes match these filters.">
            <button type="button" onClick={() => setQuery({})}>
              Clear filters
            </button>
          </Empty>
        ) : (
          <Empty title="No nodes yet.">
            {can("enrollment_tokens:write") ? (
              <p>
                <Link to="/enrollment">Create an enrollment token</Link> and run its join command on a host.
              </p>
            ) : (
              <p>An owner or admin adds hosts with an enrollment token.</p>
            )}
          </Empty>
        )
      ) : (
        <VirtualTable
          label="Nodes"
          className="nodes-table"
          items={list.items}
          columns={columns}
          rowKey={(n) => n.id}
          rowProps={(n) => ({ "data-node-id": n.id, "data-status": n.status })}
          totalRows={knownTotal ?? list.items.length}
          onRangeChange={list.onRange}
          footer={
            list.loadingMore ? (
              <Loading label="Loading more nodes" />
            ) : list.hasMore ? (
              <button type="button" onClick={list.loadMore}>
                Load more nodes
              </button>
            ) : null
          }
        />
      )}
    </section>
  );
}
