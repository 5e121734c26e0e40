// One job, live: `GET /v1/jobs/{id}` for where it stands and its result, and its events
// (state changes, steps, log lines) followed with an EventSource on `/v1/jobs/{id}/events`.
// The browser resumes a dropped stream with Last-Event-ID by itself; the page closes the stream
// once a final state arrives (else EventSource would reconnect forever). Cancel asks the server
// (`POST /v1/jobs/{id}/cancel`) and shows how it answered.

import { useCallback, useEffect, useId, useRef, useState, type FormEvent } from "react";

import { FINAL_JOB_STATUSES, api, toApiError, unwrap, type Job, type JobEvent } from "../api/client";
import { Dialog } from "../components/Dialog";
import { PageHeader } from "../components/PageHeader";
import { ErrorState, FormError, Loading, Progress } from "../components/States";
import { StatusBadge } from "../components/StatusBadge";
import { useCan } from "../lib/auth";
import { formatTime, shortId } from "../lib/format";
import { useResource } from "../lib/resource";
import { Link } from "../lib/router";
import { jobTitle } from "./Jobs";

export type StreamState = "connecting" | "open" | "reconnecting" | "ended" | "failed";

const EVENT_KINDS = ["state", "step", "log", "message"] as const;

/** The job's events as they arrive, in `seq` order, without duplicates. */
export function useJobEvents(jobId: string, onState: () => void) {
  const [events, setEvents] = useState<JobEvent[]>([]);
  const [stream, setStream] = useState<StreamState>("connecting");
  const [attempt, setAttempt] = useState(0);
  const onStateRef = useRef(onState);
  onStateRef.current = onState;

  useEffect(() => {
    let finished = false;
    setStream("connecting");
    const source = new EventSource(`/v1/jobs/${encodeURIComponent(jobId)}/events`);
    const onEvent = (message: MessageEvent<string>) => {
      let event: JobEvent;
      try {
        event = JSON.parse(message.data) as JobEvent;
      } catch {
        return;
      }
      if (typeof event.seq !== "number") return;
      setEvents((list) => {
        if (list.some((e) => e.seq === event.seq)) return list;
        const next = [...list, event];
        next.sort((a, b) => a.seq - b.seq);
        return next;
      });
      if (event.kind === "state") {
        onStateRef.current();
        if (event.status && FINAL_JOB_STATUSES.has(event.status)) {
          finished = true;
          source.close();
          setStream("ended");
        }
      }
    };
    for (const kind of EVENT_KINDS) source.addEventListener(kind, onEvent as EventListener);
    source.onopen = () => setStream("open");
    source.onerror = () => {
      if (finished) return;
      setStream(source.readyState === EventSource.CLOSED ? "failed" : "reconnecting");
    };
    return () => {
      finished = true;
      source.close();
    };
  }, [jobId, attempt]);

  const reconnect = useCallback(() => setAttempt((a) => a + 1), []);
  return { events, stream, reconnect };
}

export function JobDetailPage({ jobId }: { jobId: string }) {
  const can = useCan();
  const job = useResource(() => unwrap(api.GET("/v1/jobs/{job_id}", { params: { path: { job_id: jobId } } })), [jobId]);
  const { events, stream, reconnect } = useJobEvents(jobId, job.refresh);
  const [cancelling, setCancelling] = useState(false);
  const [cancelNote, setCancelNote] = useState<string | null>(null);

  const lastState = [...events].reverse().find((e) => e.kind === "state" && e.status);
  const status = lastState?.status ?? job.data?.status;
  const final = status !== undefined && status !== null && FINAL_JOB_STATUSES.has(status);
  const steps = events.filter((e) => e.kind === "step" && e.step).map((e) => e.step as string);
  const currentStep = steps[steps.length - 1] ?? job.data?.step ?? null;

  if (job.loading) {
    return (
      <>
        <PageHeader title="Job" />
        <Loading label="Loading the job" />
      </>
    );
  }
  if (!job.data) {
    return (
      <>
        <PageHeader title="Job" />
        <ErrorState title="Could not load the job." error={job.error ?? new Error("no data")} onRetry={job.refresh} />
      </>
    );
  }
  const j = job.data;

  return (
    <>
      <p className="breadcrumb">
        <Link to="/jobs">Jobs</Link> / {shortId(j.id)}
      </p>
      <PageHeader title={`Job: ${jobTitle(j)}`}>
        {can("commands:create") && !final && (
          <button type="button" className="danger" onClick={() => setCancelling(true)}>
            Cancel job…
          </button>
        )}
      </PageHeader>

      <section aria-labelledby="progress-heading" className="card">
        <h2 id="progress-heading">Progress</h2>
        <p className="job-status">
          Status:{" "}
          <strong data-testid="job-status" data-status={status ?? ""}>
            {status ?? "unknown"}
          </strong>{" "}
          {status && <StatusBadge status={status} />}
        </p>
        <p role="status" className="visually-hidden">
          {status ? `Job ${status}${currentStep ? `, step ${currentStep}` : ""}` : ""}
        </p>
        {!final && <Progress label={currentStep ? `Job ${status}: ${currentStep}` : `Job ${status ?? "pending"}`} />}
        {steps.length > 0 && (
          <ol className="steps" aria-label="Steps">
            {steps.map((step, i) => (
              <li key={`${step}-${i}`} className={i === steps.length - 1 && !final ? "step-current" : "step-done"}>
                {step}
                {i === steps.length - 1 && !final ? " (in progress)" : ""}
              </li>
            ))}
          </ol>
        )}
        {cancelNote && (
          <p className="notice notice-info" role="status">
            {cancelNote}
          </p>
        )}
        {j.error && (
          <p className="notice notice-error">
            <strong>Error:</strong> {j.error}
          </p>
        )}
        <StreamNotice stream={stream} onReconnect={reconnect} />
      </section>

      <section aria-labelledby="events-heading" className="card">
        <h2 id="events-heading">Events</h2>
        <EventLog events={events} />
      </section>

      <section aria-labelledby="job-facts-heading" className="card">
        <h2 id="job-facts-heading">Details</h2>
        <JobFacts job={j} />
      </section>

      {cancelling && (
        <CancelDialog
          job={j}
          onClose={() => setCancelling(false)}
          onDone={(note) => {
            setCancelling(false);
            setCancelNote(note);
            job.refresh();
          }}
        />
      )}
    </>
  );
}

function StreamNotice({ stream, onReconnect }: { stream: StreamState; onReconnect: () => void }) {
  if (stream === "reconnecting") {
    return <p className="notice notice-warning">Live updates interrupted; reconnecting…</p>;
  }
  if (stream === "failed") {
    return (
      <div className="notice notice-error" role="alert">
        Live updates stopped.{" "}
        <button type="button" onClick={onReconnect}>
          Reconnect
        </button>
      </div>
    );
  }
  if (stream === "ended") return <p className="muted">The job has ended; its events are complete.</p>;
  if (stream === "open") return <p className="muted">Following live.</p>;
  return <p className="muted">Connecting…</p>;
}

function EventLog({ events }: { events: JobEvent[] }) {
  const ref = useRef<HTMLDivElement>(null);
  const pinned = useRef(true);
  useEffect(() => {
    const el = ref.current;
    if (el && pinned.current) el.scrollTop = el.scrollHeight;
  }, [events.length]);
  if (events.length === 0) return <p className="muted">No events yet.</p>;
  return (
    <div
      ref={ref}
      role="log"
      aria-label="Job events"
      tabIndex={0}
      className="event-log"
      data-testid="job-events"
      onScroll={(e) => {
        const el = e.currentTarget;
        pinned.current = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
      }}
    >
      <ol>
        {events.map((e) => (
          <li key={e.seq} className={`event event-${e.kind}`}>
            <span className="event-time">{formatTime(e.at)}</span> <span className="event-kind">{e.kind}</span>{" "}
            {e.kind === "state" && e.status && <StatusBadge status={e.status} />}
            {e.kind === "step" && e.step && <strong>{e.step}</strong>} <span className="event-message">{e.message}</span>
          </li>
        ))}
      </ol>
    </div>
  );
}

function JobFacts({ job }: { job: Job }) {
  return (
    <dl className="facts">
      <dt>ID</dt>
      <dd>
        <code>{job.id}</code>
      </dd>
      <dt>Kind</dt>
      <dd>{job.kind}</dd>
      <dt>Node</dt>
      <dd>
        <Link to={`/nodes/${job.node_id}`}>
          <code>{job.node_id}</code>
        </Link>
      </dd>
      <dt>Created</dt>
      <dd>
        {formatTime(job.created_at)} by <code>{job.created_by}</code>
      </dd>
      <dt>Sent</dt>
      <dd>{formatTime(job.sent_at)}</dd>
      <dt>Started</dt>
      <dd>{formatTime(job.started_at)}</dd>
      <dt>Completed</dt>
      <dd>{formatTime(job.completed_at)}</dd>
      <dt>Deadline</dt>
      <dd>{formatTime(job.deadline_at)}</dd>
      <dt>Deliveries</dt>
      <dd>{job.deliveries}</dd>
      {job.idempotency_key && (
        <>
          <dt>Idempotency key</dt>
          <dd>
            <code>{job.idempotency_key}</code>
          </dd>
        </>
      )}
      {job.cancel_requested_at && (
        <>
          <dt>Cancel requested</dt>
          <dd>
            {formatTime(job.cancel_requested_at)} by <code>{job.cancel_requested_by}</code>
          </dd>
        </>
      )}
      {job.result && (
        <>
          <dt>Result</dt>
          <dd>
            <pre className="json">{JSON.stringify(job.result, null, 2)}</pre>
          </dd>
        </>
      )}
    </dl>
  );
}

function CancelDialog({ job, onClose, onDone }: { job: Job; onClose: () => void; onDone: (note: string) => void }) {
  const reasonId = useId();
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const outcome = await api.POST("/v1/jobs/{job_id}/cancel", {
        params: { path: { job_id: job.id } },
        body: reason.trim() === "" ? {} : { reason: reason.trim() },
      });
      const status = outcome.response.status;
      if (status === 200) onDone("Cancelled: the job will not run.");
      else if (status === 202) onDone("Cancel requested: the agent stops at its next safe point; follow the job for how it ends.");
      else if (status === 409) onDone(`Not cancelled: ${toApiError(outcome.response, outcome.error).message}`);
      else {
        setError(toApiError(outcome.response, outcome.error).message);
        setBusy(false);
      }
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
      setBusy(false);
    }
  };

  return (
    <Dialog title="Cancel the job" onClose={onClose} busy={busy}>
      <form onSubmit={(e) => void submit(e)}>
        <p>
          A queued job is cancelled at once. A running one stops at its next safe point; the job then says what that
          leaves on the host.
        </p>
        <div className="field">
          <label htmlFor={reasonId}>Reason (optional, recorded in the audit log)</label>
          <textarea id={reasonId} data-autofocus rows={2} maxLength={500} value={reason} onChange={(e) => setReason(e.target.value)} />
        </div>
        <FormError error={error} />
        <div className="dialog-actions">
          <button type="button" onClick={onClose} disabled={busy}>
            Keep running
          </button>
          <button type="submit" className="danger" disabled={busy}>
            {busy ? "Cancelling…" : "Cancel job"}
          </button>
        </div>
      </form>
    </Dialog>
  );
}
