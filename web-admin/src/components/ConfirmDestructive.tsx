// The confirmation flow of destructive operations (`x-moltops-destructive`): ask why, send the
// request without a confirmation token, show what the server's 428 says will happen (its action,
// target and the `parameters` the token is bound to), and on Confirm send the identical request
// again with `X-Confirmation-Token` (and the same `Idempotency-Key`, so a retry never starts a
// second job).

import { Fragment, useEffect, useId, useRef, useState, type FormEvent, type ReactNode } from "react";

import { newIdempotencyKey, toApiError, type ErrorBody } from "../api/client";
import { flattenParameters, formatTime, type ParameterRow } from "../lib/format";
import { Dialog } from "./Dialog";
import { FormError, Progress } from "./States";

type Outcome<T> = { data?: T; error?: unknown; response: Response };

/** One prepared request: its body is fixed when prepared, so both sends are identical. */
export interface PreparedRequest<T> {
  /** What the request does, in words, for the confirmation step (e.g. "restarts the gateway…"). */
  effect?: string;
  /**
   * The request's parameters exactly as sent (the body, or a DELETE's query). Shown only when a
   * 428 does not list the `parameters` its token is bound to (an older server).
   */
  sent: Record<string, unknown>;
  send: (headers: { confirmationToken?: string; idempotencyKey: string }) => Promise<Outcome<T>>;
}

export interface ConfirmDestructiveProps<T> {
  /** The dialog's title, e.g. "Restart the gateway". */
  title: string;
  /** What and where, in words, e.g. "on node web-1". */
  summary: ReactNode;
  /** Label of the first button, e.g. "Continue". */
  submitLabel?: string;
  /** Label of the confirm button, e.g. "Restart gateway". */
  confirmLabel: string;
  /** Form fields besides the reason (controlled by the caller). */
  fields?: ReactNode;
  /** Builds the request from the reason, or says what is wrong with the fields. */
  prepare: (reason: string) => PreparedRequest<T> | { problem: string };
  onDone: (data: T) => void;
  onClose: () => void;
  /** The server's display name for the target id, e.g. the hostname. */
  targetName?: string;
  /** Time source, for the expiry countdown (tests pass their own). */
  now?: () => number;
}

type Step<T> =
  | { kind: "reason" }
  | { kind: "checking"; prepared: PreparedRequest<T>; key: string }
  | { kind: "confirm"; prepared: PreparedRequest<T>; key: string; required: ErrorBody }
  | { kind: "submitting"; prepared: PreparedRequest<T>; key: string; required: ErrorBody };

export function ConfirmDestructive<T>({
  title,
  summary,
  submitLabel = "Continue",
  confirmLabel,
  fields,
  prepare,
  onDone,
  onClose,
  targetName,
  now = Date.now,
}: ConfirmDestructiveProps<T>) {
  const reasonId = useId();
  const [reason, setReason] = useState("");
  const [step, setStep] = useState<Step<T>>({ kind: "reason" });
  const [error, setError] = useState<string | null>(null);
  const [clock, setClock] = useState(now);
  const confirmRef = useRef<HTMLButtonElement>(null);

  useEffect(() => {
    if (step.kind !== "confirm") return;
    confirmRef.current?.focus();
    const id = setInterval(() => setClock(now()), 1000);
    return () => clearInterval(id);
  }, [step.kind, now]);

  const start = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    const trimmed = reason.trim();
    if (trimmed === "") {
      setError("Say why: the reason is recorded in the audit log.");
      return;
    }
    const prepared = prepare(trimmed);
    if ("problem" in prepared) {
      setError(prepared.problem);
      return;
    }
    const key = newIdempotencyKey();
    setStep({ kind: "checking", prepared, key });
    try {
      const outcome = await prepared.send({ idempotencyKey: key });
      if (outcome.response.ok) {
        // A repeat of a request already confirmed (same Idempotency-Key): it is done.
        onDone(outcome.data as T);
        return;
      }
      const body = outcome.error as Partial<ErrorBody> | undefined;
      if (outcome.response.status === 428 && body?.confirmation_token) {
        setClock(now());
        setStep({ kind: "confirm", prepared, key, required: body as ErrorBody });
        return;
      }
      setError(toApiError(outcome.response, outcome.error).message);
    } catch (cause) {
      setError(`Could not reach the control plane: ${cause instanceof Error ? cause.message : String(cause)}`);
    }
    setStep({ kind: "reason" });
  };

  const confirm = async () => {
    if (step.kind !== "confirm") return;
    setError(null);
    setStep({ ...step, kind: "submitting" });
    try {
      const outcome = await step.prepared.send({
        confirmationToken: step.required.confirmation_token,
        idempotencyKey: step.key,
      });
      if (outcome.response.ok) {
        onDone(outcome.data as T);
        return;
      }
      setError(toApiError(outcome.response, outcome.error).message);
    } catch (cause) {
      setError(`Could not reach the control plane: ${cause instanceof Error ? cause.message : String(cause)}`);
    }
    setStep({ ...step, kind: "confirm" });
  };

  const busy = step.kind === "checking" || step.kind === "submitting";

  if (step.kind === "confirm" || step.kind === "submitting") {
    const required = step.required;
    const expiresAt = required.expires_at ? new Date(required.expires_at).getTime() : null;
    const secondsLeft = expiresAt === null ? null : Math.max(0, Math.floor((expiresAt - clock) / 1000));
    const expired = secondsLeft === 0;
    // What the token is bound to, as the server says; the request itself only if it does not.
    const bound = required.parameters !== undefined && required.parameters !== null;
    const rows = flattenParameters(required.parameters ?? step.prepared.sent);
    return (
      <Dialog title={`Confirm: ${title}`} onClose={onClose} busy={busy}>
        <p>The server asks you to confirm exactly this. Nothing has changed yet.</p>
        <h3 className="subheading">What will happen</h3>
        <dl className="facts">
          <dt>Action</dt>
          <dd>
            <code>{required.action ?? "—"}</code>
          </dd>
          <dt>Target</dt>
          <dd>
            {targetName ? `${targetName} ` : ""}
            <code>{required.target ?? "—"}</code>
          </dd>
          {step.prepared.effect && (
            <>
              <dt>Effect</dt>
              <dd>{step.prepared.effect}</dd>
            </>
          )}
          <dt>Confirmation expires</dt>
          <dd>
            {formatTime(required.expires_at)}
            {secondsLeft !== null && !expired && ` (in ${Math.floor(secondsLeft / 60)}:${String(secondsLeft % 60).padStart(2, "0")})`}
          </dd>
        </dl>
        <h3 className="subheading">{bound ? "Parameters the confirmation is bound to" : "Parameters of the request"}</h3>
        {!bound && (
          <p className="muted">The server did not list them; these are the parameters the app will send again.</p>
        )}
        <ParameterList rows={rows} />
        <p className="muted">{required.message}</p>
        {expired && (
          <p role="alert" className="form-error">
            The confirmation expired. Start over to get a new one.
          </p>
        )}
        <FormError error={error} />
        {step.kind === "submitting" && <Progress label="Sending the confirmed request" />}
        <div className="dialog-actions">
          <button type="button" onClick={onClose} disabled={busy}>
            Cancel
          </button>
          {expired ? (
            <button
              type="button"
              onClick={() => {
                setError(null);
                setStep({ kind: "reason" });
              }}
            >
              Start over
            </button>
          ) : (
            <button
              ref={confirmRef}
              type="button"
              className="danger"
              onClick={() => void confirm()}
              disabled={busy}
            >
              {confirmLabel}
            </button>
          )}
        </div>
      </Dialog>
    );
  }

  return (
    <Dialog title={title} onClose={onClose} busy={busy}>
      <form onSubmit={(e) => void start(e)} noValidate>
        <p>{summary}</p>
        {fields}
        <div className="field">
          <label htmlFor={reasonId}>Reason (recorded in the audit log)</label>
          <textarea
            id={reasonId}
            data-autofocus
            required
            maxLength={500}
            rows={2}
            value={reason}
            onChange={(e) => setReason(e.target.value)}
            disabled={busy}
          />
        </div>
        <FormError error={error} />
        {busy && <Progress label="Asking the server what this will do" />}
        <div className="dialog-actions">
          <button type="button" onClick={onClose} disabled={busy}>
            Cancel
          </button>
          <button type="submit" className="primary" disabled={busy}>
            {submitLabel}
          </button>
        </div>
      </form>
    </Dialog>
  );
}

/** Name and value pairs, names as the server spells them (`parameters.action`). */
function ParameterList({ rows }: { rows: ParameterRow[] }) {
  if (rows.length === 0) return <p className="muted">None.</p>;
  return (
    <dl className="facts parameter-list" data-testid="confirm-parameters">
      {rows.map(([name, value]) => (
        <Fragment key={name}>
          <dt>
            <code>{name}</code>
          </dt>
          <dd>{value ?? <span className="muted">none</span>}</dd>
        </Fragment>
      ))}
    </dl>
  );
}
