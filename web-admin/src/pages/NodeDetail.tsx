// One node: its facts (`GET /v1/nodes/{id}`), host system info, gateway status, metrics tiles
// with a short in-memory history (the API keeps none), recent jobs, labels (edit with
// `nodes:write`), and the actions the caller may take: start, stop, restart, install (all
// destructive, confirmed), ping, and revoke.

import { useEffect, useId, useRef, useState, type FormEvent, type ReactNode } from "react";

import { ApiError, api, unwrap, type FleetNode, type Schemas } from "../api/client";
import { ConfirmDestructive, type PreparedRequest } from "../components/ConfirmDestructive";
import { PageHeader } from "../components/PageHeader";
import { Sparkline } from "../components/Sparkline";
import { Empty, ErrorState, FormError, Loading, StaleNotice } from "../components/States";
import { StatusBadge } from "../components/StatusBadge";
import { useCan } from "../lib/auth";
import {
  formatAge,
  formatBytes,
  formatDuration,
  formatPercent,
  formatTime,
  parseLabels,
} from "../lib/format";
import { useNow, useResource } from "../lib/resource";
import { Link, navigate } from "../lib/router";
import { JobTable } from "./Jobs";

const POLL_MS = 5_000;
/** Metric samples kept for the history charts (about five minutes at one per 5 s). */
export const HISTORY = 60;

type Dialog =
  | { kind: "action"; action: "start" | "stop" | "restart" }
  | { kind: "install" }
  | { kind: "revoke" }
  | null;

export function NodeDetailPage({ nodeId }: { nodeId: string }) {
  const can = useCan();
  const node = useResource(
    () => unwrap(api.GET("/v1/nodes/{node_id}", { params: { path: { node_id: nodeId } } })),
    [nodeId],
    { pollMs: POLL_MS },
  );
  const [dialog, setDialog] = useState<Dialog>(null);

  if (node.loading) {
    return (
      <>
        <PageHeader title="Node" />
        <Loading label="Loading the node" />
      </>
    );
  }
  if (!node.data) {
    const notFound = node.error instanceof ApiError && node.error.status === 404;
    return (
      <>
        <PageHeader title={notFound ? "Node not found" : "Node"} />
        {notFound ? (
          <Empty title="There is no such node, or it is outside your scope.">
            <Link to="/">Back to the fleet</Link>
          </Empty>
        ) : (
          <ErrorState title="Could not load the node." error={node.error ?? new Error("no data")} onRetry={node.refresh} />
        )}
      </>
    );
  }

  const n = node.data;
  const revoked = n.status === "revoked";
  const canAct = can("commands:create");
  return (
    <>
      <p className="breadcrumb">
        <Link to="/">Fleet</Link> / {n.hostname}
      </p>
      <PageHeader title={n.hostname}>
        <StatusBadge status={n.status} />
      </PageHeader>
      <StaleNotice error={node.error} retryInMs={node.retryInMs} />

      {(canAct || can("nodes:revoke")) && (
        <section aria-labelledby="actions-heading" className="card">
          <h2 id="actions-heading">Actions</h2>
          {revoked && <p className="muted">This node is revoked: nothing can be run on it.</p>}
          <div className="toolbar" role="group" aria-label="Node actions">
            {canAct && (
              <>
                <button type="button" disabled={revoked} onClick={() => setDialog({ kind: "action", action: "start" })}>
                  Start gateway
                </button>
                <button type="button" disabled={revoked} onClick={() => setDialog({ kind: "action", action: "stop" })}>
                  Stop gateway
                </button>
                <button type="button" disabled={revoked} onClick={() => setDialog({ kind: "action", action: "restart" })}>
                  Restart gateway
                </button>
                <button type="button" disabled={revoked} onClick={() => setDialog({ kind: "install" })}>
                  Install gateway…
                </button>
                <PingButton nodeId={n.id} disabled={revoked} />
              </>
            )}
            {can("nodes:revoke") && (
              <button type="button" className="danger" disabled={revoked} onClick={() => setDialog({ kind: "revoke" })}>
                Revoke node…
              </button>
            )}
          </div>
        </section>
      )}

      <div className="grid-2">
        <NodeFacts node={n} />
        <GatewayStatus nodeId={n.id} />
      </div>
      <Metrics nodeId={n.id} />
      <div className="grid-2">
        <SystemInfo nodeId={n.id} />
        <LabelsCard node={n} onSaved={node.setData} />
      </div>
      <RecentJobs nodeId={n.id} />

      {dialog?.kind === "action" && (
        <ActionDialog node={n} action={dialog.action} onClose={() => setDialog(null)} />
      )}
      {dialog?.kind === "install" && <InstallDialog node={n} onClose={() => setDialog(null)} />}
      {dialog?.kind === "revoke" && (
        <RevokeDialog
          node={n}
          onClose={() => setDialog(null)}
          onDone={(updated) => {
            node.setData(updated);
            setDialog(null);
          }}
        />
      )}
    </>
  );
}

function NodeFacts({ node }: { node: FleetNode }) {
  const now = useNow();
  return (
    <section aria-labelledby="facts-heading" className="card">
      <h2 id="facts-heading">Node</h2>
      <dl className="facts">
        <dt>ID</dt>
        <dd>
          <code>{node.id}</code>
        </dd>
        <dt>Status</dt>
        <dd>{node.status}</dd>
        <dt>Last seen</dt>
        <dd>
          {formatAge(node.last_seen, now)} <span className="muted">({formatTime(node.last_seen)})</span>
        </dd>
        <dt>Agent version</dt>
        <dd>{node.agent_version}</dd>
        <dt>Platform</dt>
        <dd>
          {node.os} / {node.arch}
        </dd>
        <dt>Enrolled</dt>
        <dd>{formatTime(node.enrolled_at)}</dd>
        <dt>Certificate expires</dt>
        <dd>{formatTime(node.certificate_not_after)}</dd>
        {node.revoked_at && (
          <>
            <dt>Revoked</dt>
            <dd>{formatTime(node.revoked_at)}</dd>
          </>
        )}
      </dl>
    </section>
  );
}

function GatewayStatus({ nodeId }: { nodeId: string }) {
  const status = useResource(
    () => unwrap(api.GET("/v1/nodes/{node_id}/moltbot/status", { params: { path: { node_id: nodeId } } })),
    [nodeId],
    { pollMs: POLL_MS },
  );
  const s = status.data;
  return (
    <section aria-labelledby="gateway-heading" className="card">
      <h2 id="gateway-heading">Gateway</h2>
      {status.loading ? (
        <Loading label="Loading the gateway status" />
      ) : !s ? (
        <ErrorState title="Could not load the gateway status." error={status.error ?? new Error("no data")} onRetry={status.refresh} />
      ) : !s.reported_at ? (
        <Empty title="The agent has not reported its gateway yet." />
      ) : (
        <>
          <StaleNotice error={status.error} retryInMs={status.retryInMs} />
          <p className="gateway-health" data-testid="gateway-health">
            {s.crash_loop ? (
              <StatusBadge status="crash loop" />
            ) : s.gateway_connected ? (
              <StatusBadge status="ready" />
            ) : s.running ? (
              <StatusBadge status="running" label="running, not ready" />
            ) : s.installed ? (
              <StatusBadge status="offline" label="stopped" />
            ) : (
              <StatusBadge status="none" label="not installed" />
            )}
          </p>
          <dl className="facts">
            <dt>Installed</dt>
            <dd>{s.installed ? "yes" : "no"}</dd>
            <dt>Version</dt>
            <dd>{s.version ?? "—"}</dd>
            <dt>Running</dt>
            <dd>{s.running ? "yes" : "no"}</dd>
            <dt>Ready</dt>
            <dd>{s.gateway_connected ? "yes" : "no"}</dd>
            <dt>Restarts (24 h)</dt>
            <dd>{s.restart_count_24h ?? 0}</dd>
            <dt>Last start</dt>
            <dd>{formatTime(s.last_start_time)}</dd>
            <dt>Last exit</dt>
            <dd>{s.last_exit ?? "—"}</dd>
            <dt>Service manager</dt>
            <dd>{s.service_manager}</dd>
            <dt>Reported</dt>
            <dd>{s.age_seconds !== null && s.age_seconds !== undefined ? `${formatDuration(s.age_seconds)} ago` : "—"}</dd>
          </dl>
        </>
      )}
    </section>
  );
}

type Sample = { at: string; cpu: number; mem: number; load: number };

function Metrics({ nodeId }: { nodeId: string }) {
  const [history, setHistory] = useState<Sample[]>([]);
  const metrics = useResource(
    async () => {
      const outcome = await api.GET("/v1/nodes/{node_id}/metrics/current", { params: { path: { node_id: nodeId } } });
      // 404 `no_metrics` before the first report: nothing to show yet, not a failure.
      if (outcome.response.status === 404) {
        const body = outcome.error as Partial<Schemas["Error"]> | undefined;
        if (body?.code === "no_metrics") return null;
      }
      return unwrap(Promise.resolve(outcome));
    },
    [nodeId],
    { pollMs: POLL_MS },
  );
  const m = metrics.data;

  useEffect(() => {
    if (!m) return;
    setHistory((h) =>
      h.length > 0 && h[h.length - 1]?.at === m.reported_at
        ? h
        : [...h, { at: m.reported_at, cpu: m.cpu_percent, mem: m.mem_percent, load: m.load_1m }].slice(-HISTORY),
    );
  }, [m]);

  return (
    <section aria-labelledby="metrics-heading" className="card">
      <h2 id="metrics-heading">Metrics</h2>
      {metrics.loading ? (
        <Loading label="Loading metrics" />
      ) : m === undefined ? (
        <ErrorState title="Could not load the metrics." error={metrics.error ?? new Error("no data")} onRetry={metrics.refresh} />
      ) : m === null ? (
        <Empty title="No metrics yet.">
          <p>The agent reports its first figures with its next heartbeat.</p>
        </Empty>
      ) : (
        <>
          <StaleNotice error={metrics.error} retryInMs={metrics.retryInMs} />
          <p className="muted">
            Reported {formatDuration(m.age_seconds)} ago. History is kept in this page only (last {history.length}{" "}
            sample{history.length === 1 ? "" : "s"}).
          </p>
          <ul className="tiles">
            <Tile label="CPU" value={formatPercent(m.cpu_percent)}>
              <Sparkline label="CPU history" values={history.map((s) => s.cpu)} min={0} max={100} format={formatPercent} />
            </Tile>
            <Tile label="Memory" value={formatPercent(m.mem_percent)} detail={`${formatBytes(m.memory_used_bytes)} of ${formatBytes(m.memory_total_bytes)}`}>
              <Sparkline label="Memory history" values={history.map((s) => s.mem)} min={0} max={100} format={formatPercent} />
            </Tile>
            <Tile label="Load (1 min)" value={m.load_1m.toFixed(2)}>
              <Sparkline label="Load history" values={history.map((s) => s.load)} min={0} format={(v) => v.toFixed(2)} />
            </Tile>
            <Tile label="Disk free" value={formatBytes(m.disk_free_bytes)} />
            <Tile label="Uptime" value={formatDuration(m.uptime_seconds)} />
            <Tile label="Gateway restarts (24 h)" value={String(m.restart_count_24h)} />
          </ul>
        </>
      )}
    </section>
  );
}

function Tile({
  label,
  value,
  detail,
  children,
}: {
  label: string;
  value: string;
  detail?: string;
  children?: ReactNode;
}) {
  return (
    <li className="tile">
      <span className="tile-label">{label}</span>
      <span className="tile-value">{value}</span>
      {detail && <span className="tile-detail muted">{detail}</span>}
      {children}
    </li>
  );
}

function SystemInfo({ nodeId }: { nodeId: string }) {
  const info = useResource(
    () => unwrap(api.GET("/v1/nodes/{node_id}/system/info", { params: { path: { node_id: nodeId } } })),
    [nodeId],
  );
  const s = info.data;
  return (
    <section aria-labelledby="system-heading" className="card">
      <h2 id="system-heading">System</h2>
      {info.loading ? (
        <Loading label="Loading system information" />
      ) : !s ? (
        <ErrorState title="Could not load the system information." error={info.error ?? new Error("no data")} onRetry={info.refresh} />
      ) : (
        <dl className="facts">
          <dt>Hostname</dt>
          <dd>{s.hostname}</dd>
          <dt>Operating system</dt>
          <dd>
            {s.os} {s.os_version}
          </dd>
          <dt>Architecture</dt>
          <dd>{s.arch}</dd>
          <dt>CPU cores</dt>
          <dd>{s.cpu_cores}</dd>
          <dt>Memory</dt>
          <dd>{formatBytes(s.memory_bytes)}</dd>
          <dt>Disk free</dt>
          <dd>{formatBytes(s.disk_free_bytes)}</dd>
        </dl>
      )}
    </section>
  );
}

function LabelsCard({ node, onSaved }: { node: FleetNode; onSaved: (node: FleetNode) => void }) {
  const can = useCan();
  const editorId = useId();
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const editButton = useRef<HTMLButtonElement>(null);

  const entries = Object.entries(node.labels);
  const startEdit = () => {
    setDraft(entries.map(([k, v]) => (v === "" ? k : `${k}=${v}`)).join("\n"));
    setError(null);
    setEditing(true);
  };
  const stopEdit = () => {
    setEditing(false);
    requestAnimationFrame(() => editButton.current?.focus());
  };
  const save = async (event: FormEvent) => {
    event.preventDefault();
    const parsed = parseLabels(draft);
    if ("error" in parsed) {
      setError(parsed.error);
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const updated = await unwrap(
        api.PATCH("/v1/nodes/{node_id}", { params: { path: { node_id: node.id } }, body: { labels: parsed.labels } }),
      );
      onSaved(updated);
      stopEdit();
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <section aria-labelledby="labels-heading" className="card">
      <h2 id="labels-heading">Labels</h2>
      {editing ? (
        <form onSubmit={(e) => void save(e)}>
          <div className="field">
            <label htmlFor={editorId}>Labels, one key=value per line</label>
            <textarea
              id={editorId}
              rows={Math.max(3, entries.length + 1)}
              value={draft}
              onChange={(e) => setDraft(e.target.value)}
              spellCheck={false}
              autoFocus
            />
          </div>
          <FormError error={error} />
          <div className="toolbar">
            <button type="submit" className="primary" disabled={busy}>
              {busy ? "Saving…" : "Save labels"}
            </button>
            <button type="button" onClick={stopEdit} disabled={busy}>
              Cancel
            </button>
          </div>
        </form>
      ) : (
        <>
          {entries.length === 0 ? (
            <p className="muted">No labels.</p>
          ) : (
            <ul className="label-list" aria-label="Labels">
              {entries.map(([k, v]) => (
                <li key={k} className="label-chip">
                  {v === "" ? k : `${k}=${v}`}
                </li>
              ))}
            </ul>
          )}
          {can("nodes:write") && node.status !== "revoked" && (
            <button ref={editButton} type="button" onClick={startEdit}>
              Edit labels
            </button>
          )}
        </>
      )}
    </section>
  );
}

function RecentJobs({ nodeId }: { nodeId: string }) {
  const jobs = useResource(
    () => unwrap(api.GET("/v1/jobs", { params: { query: { node_id: nodeId, limit: 10 } } })),
    [nodeId],
    { pollMs: POLL_MS },
  );
  const can = useCan();
  return (
    <section aria-labelledby="jobs-heading" className="card">
      <h2 id="jobs-heading">Recent jobs</h2>
      {!can("commands:read") ? (
        <p className="muted">Your role cannot read jobs.</p>
      ) : jobs.loading ? (
        <Loading label="Loading recent jobs" />
      ) : !jobs.data ? (
        <ErrorState title="Could not load the jobs." error={jobs.error ?? new Error("no data")} onRetry={jobs.refresh} />
      ) : jobs.data.items.length === 0 ? (
        <Empty title="No jobs on this node yet." />
      ) : (
        <>
          <JobTable jobs={jobs.data.items} caption="Recent jobs on this node" showNode={false} />
          <p>
            <Link to={`/jobs?node_id=${encodeURIComponent(nodeId)}`}>All jobs on this node</Link>
          </p>
        </>
      )}
    </section>
  );
}

function PingButton({ nodeId, disabled }: { nodeId: string; disabled: boolean }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  return (
    <>
      <button
        type="button"
        disabled={disabled || busy}
        onClick={async () => {
          setBusy(true);
          setError(null);
          try {
            const job = await unwrap(api.POST("/v1/nodes/{node_id}/ping", { params: { path: { node_id: nodeId } } }));
            navigate(`/jobs/${job.id}`);
          } catch (e) {
            setError(e instanceof Error ? e.message : String(e));
            setBusy(false);
          }
        }}
      >
        {busy ? "Pinging…" : "Ping"}
      </button>
      {error && (
        <span role="alert" className="form-error">
          {error}
        </span>
      )}
    </>
  );
}

const ACTION_WORDS = {
  start: { title: "Start the gateway", confirm: "Confirm start", effect: "starts the gateway and waits until it answers ready" },
  stop: { title: "Stop the gateway", confirm: "Confirm stop", effect: "stops the gateway (SIGTERM, then SIGKILL at the deadline) and checks it no longer answers" },
  restart: { title: "Restart the gateway", confirm: "Confirm restart", effect: "restarts the gateway and waits until the new process answers ready" },
} as const;

function ActionDialog({
  node,
  action,
  onClose,
}: {
  node: FleetNode;
  action: "start" | "stop" | "restart";
  onClose: () => void;
}) {
  const words = ACTION_WORDS[action];
  const prepare = (reason: string): PreparedRequest<Schemas["OpsActionResult"]> => {
    const body: Schemas["OpsActionRequest"] = { action, reason };
    return {
      effect: `the agent ${words.effect}`,
      sent: body,
      send: ({ confirmationToken, idempotencyKey }) =>
        api.POST("/v1/nodes/{node_id}/ops/action", {
          params: {
            path: { node_id: node.id },
            header: {
              "Idempotency-Key": idempotencyKey,
              ...(confirmationToken ? { "X-Confirmation-Token": confirmationToken } : {}),
            },
          },
          body,
        }),
    };
  };
  return (
    <ConfirmDestructive
      title={words.title}
      summary={
        <>
          On node <strong>{node.hostname}</strong>: the agent {words.effect}. The job fails with the evidence if the
          effect cannot be verified.
        </>
      }
      confirmLabel={words.confirm}
      targetName={node.hostname}
      prepare={prepare}
      onClose={onClose}
      onDone={(result) => {
        if (result?.job_id) navigate(`/jobs/${result.job_id}`);
        else onClose();
      }}
    />
  );
}

function InstallDialog({ node, onClose }: { node: FleetNode; onClose: () => void }) {
  const methodId = useId();
  const channelId = useId();
  const versionId = useId();
  const [method, setMethod] = useState<Schemas["InstallLocalRequest"]["method"]>("npm");
  const [channel, setChannel] = useState<NonNullable<Schemas["InstallLocalRequest"]["channel"]>>("stable");
  const [version, setVersion] = useState("");

  const prepare = (reason: string): PreparedRequest<Schemas["JobAccepted"]> | { problem: string } => {
    const exact = version.trim();
    if (exact !== "" && !/^[A-Za-z0-9.-]{1,64}$/.test(exact)) {
      return { problem: "The version must be an exact version such as 2026.9.1." };
    }
    const body: Schemas["InstallLocalRequest"] = { method, channel, reason, ...(exact ? { version: exact } : {}) };
    return {
      effect:
        exact === ""
          ? `installs the latest ${channel} version with ${method}, starts it and waits until it answers ready`
          : `installs version ${exact} with ${method}, starts it and waits until it answers ready`,
      sent: body,
      send: ({ confirmationToken, idempotencyKey }) =>
        api.POST("/v1/nodes/{node_id}/install/local", {
          params: {
            path: { node_id: node.id },
            header: {
              "Idempotency-Key": idempotencyKey,
              ...(confirmationToken ? { "X-Confirmation-Token": confirmationToken } : {}),
            },
          },
          body,
        }),
    };
  };

  return (
    <ConfirmDestructive
      title="Install the gateway"
      summary={
        <>
          On node <strong>{node.hostname}</strong>: resolve the version, install it through the agent's governed
          download path, start it and wait until it answers ready.
        </>
      }
      confirmLabel="Confirm install"
      targetName={node.hostname}
      fields={
        <>
          <div className="field">
            <label htmlFor={methodId}>Method</label>
            <select id={methodId} value={method} onChange={(e) => setMethod(e.target.value as typeof method)}>
              <option value="npm">npm</option>
              <option value="docker">docker</option>
              <option value="brew">brew</option>
            </select>
          </div>
          <div className="field">
            <label htmlFor={channelId}>Channel</label>
            <select id={channelId} value={channel} onChange={(e) => setChannel(e.target.value as typeof channel)}>
              <option value="stable">stable</option>
              <option value="beta">beta</option>
              <option value="nightly">nightly</option>
            </select>
          </div>
          <div className="field">
            <label htmlFor={versionId}>Exact version (optional)</label>
            <input id={versionId} value={version} onChange={(e) => setVersion(e.target.value)} placeholder="2026.9.1" spellCheck={false} />
          </div>
        </>
      }
      prepare={prepare}
      onClose={onClose}
      onDone={(accepted) => navigate(`/jobs/${accepted.job_id}`)}
    />
  );
}

function RevokeDialog({
  node,
  onClose,
  onDone,
}: {
  node: FleetNode;
  onClose: () => void;
  onDone: (node: FleetNode) => void;
}) {
  const prepare = (reason: string): PreparedRequest<FleetNode> => {
    const body: Schemas["NodeRevokeRequest"] = { reason };
    return {
      effect: "the agent's stream closes, its pending jobs fail, its certificate is refused from now on",
      sent: body,
      send: ({ confirmationToken }) =>
        api.POST("/v1/nodes/{node_id}/revoke", {
          params: {
            path: { node_id: node.id },
            header: confirmationToken ? { "X-Confirmation-Token": confirmationToken } : {},
          },
          body,
        }),
    };
  };
  return (
    <ConfirmDestructive
      title="Revoke the node"
      summary={
        <>
          Revoke <strong>{node.hostname}</strong>. This cannot be undone: the host must enroll again with a new token.
        </>
      }
      confirmLabel="Confirm revoke"
      targetName={node.hostname}
      prepare={prepare}
      onClose={onClose}
      onDone={onDone}
    />
  );
}
