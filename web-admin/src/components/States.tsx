// The loading, empty and error states every screen shows, and small shared pieces.

import type { ReactNode } from "react";

import { formatDuration } from "../lib/format";

export function Loading({ label }: { label: string }) {
  return (
    <p role="status" className="state state-loading">
      <span className="spinner" aria-hidden="true" />
      {label}…
    </p>
  );
}

export function Empty({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <div className="state state-empty">
      <p className="state-title">{title}</p>
      {children}
    </div>
  );
}

export function ErrorState({
  title,
  error,
  onRetry,
}: {
  title: string;
  error: Error;
  onRetry?: () => void;
}) {
  return (
    <div role="alert" className="state state-error">
      <p className="state-title">{title}</p>
      <p>{error.message}</p>
      {onRetry && (
        <button type="button" onClick={onRetry}>
          Try again
        </button>
      )}
    </div>
  );
}

/** A quiet note that live updates failed and when they retry; the data shown stays. */
export function StaleNotice({ error, retryInMs }: { error: Error | undefined; retryInMs: number | undefined }) {
  if (!error) return null;
  return (
    <p className="notice notice-warning" role="status">
      Live updates paused: {error.message}
      {retryInMs ? ` Retrying in ${formatDuration(retryInMs / 1000)}.` : ""}
    </p>
  );
}

/** An inline error after a form was sent. */
export function FormError({ error }: { error: Error | string | null | undefined }) {
  if (!error) return null;
  return (
    <p role="alert" className="form-error">
      {typeof error === "string" ? error : error.message}
    </p>
  );
}

/** An indeterminate progress bar for work under way, with its label. */
export function Progress({ label }: { label: string }) {
  return (
    <div className="progress" role="progressbar" aria-label={label} aria-valuetext={label}>
      <div className="progress-bar" />
    </div>
  );
}

/** Explains why something is not available instead of offering it. */
export function NoAccess({ what, permission }: { what: string; permission: string }) {
  return (
    <div className="state state-empty">
      <p className="state-title">You cannot see {what}.</p>
      <p>
        Your role lacks the <code>{permission}</code> permission. Ask an owner if you need it.
      </p>
    </div>
  );
}
