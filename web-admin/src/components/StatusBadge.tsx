// Status shown as text in a coloured badge: the colour is never the only signal.

const TONE: Record<string, string> = {
  online: "good",
  succeeded: "good",
  active: "good",
  ready: "good",
  success: "good",
  ok: "good",
  offline: "warn",
  "not ready": "warn",
  queued: "info",
  dispatched: "info",
  running: "info",
  exhausted: "muted",
  expired: "muted",
  cancelled: "muted",
  stopped: "muted",
  revoked: "bad",
  failed: "bad",
  failure: "bad",
  denied: "bad",
  "crash loop": "bad",
};

export function StatusBadge({ status, label }: { status: string; label?: string }) {
  const tone = TONE[status] ?? "muted";
  return <span className={`badge badge-${tone}`}>{label ?? status}</span>;
}
