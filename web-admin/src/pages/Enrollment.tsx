// Enrollment tokens: create one (`POST /v1/enrollment-tokens`: lifetime, uses, labels, note)
// and show its join command once, with a copy button; list them; revoke one.

import { useEffect, useId, useRef, useState, type FormEvent } from "react";

import { api, unwrap, type Schemas } from "../api/client";
import { CopyButton } from "../components/CopyButton";
import { Dialog } from "../components/Dialog";
import { PageHeader } from "../components/PageHeader";
import { Empty, ErrorState, FormError, Loading } from "../components/States";
import { StatusBadge } from "../components/StatusBadge";
import { useCan } from "../lib/auth";
import { formatTime, labelsToText, parseLabels } from "../lib/format";
import { useResource } from "../lib/resource";

type Token = Schemas["EnrollmentToken"];
type Created = Schemas["EnrollmentTokenCreated"];

const TTL_CHOICES: ReadonlyArray<[number, string]> = [
  [600, "10 minutes"],
  [3600, "1 hour"],
  [86_400, "1 day"],
  [604_800, "7 days"],
  [2_592_000, "30 days"],
];

export function EnrollmentPage() {
  const can = useCan();
  const tokens = useResource(() => unwrap(api.GET("/v1/enrollment-tokens")), []);
  const [created, setCreated] = useState<Created | null>(null);
  const [revoking, setRevoking] = useState<Token | null>(null);

  return (
    <>
      <PageHeader title="Enrollment tokens" />
      {can("enrollment_tokens:write") && (
        <CreateToken
          onCreated={(token) => {
            setCreated(token);
            tokens.refresh();
          }}
        />
      )}
      {created && <CreatedToken token={created} onDismiss={() => setCreated(null)} />}
      <section aria-labelledby="tokens-heading" className="card">
        <h2 id="tokens-heading">Tokens</h2>
        {tokens.loading ? (
          <Loading label="Loading enrollment tokens" />
        ) : !tokens.data ? (
          <ErrorState title="Could not load the enrollment tokens." error={tokens.error ?? new Error("no data")} onRetry={tokens.refresh} />
        ) : tokens.data.items.length === 0 ? (
          <Empty title="No enrollment tokens yet." />
        ) : (
          <div className="table-scroll">
            <table className="table">
              <caption className="visually-hidden">Enrollment tokens, oldest first</caption>
              <thead>
                <tr>
                  <th scope="col">Created</th>
                  <th scope="col">State</th>
                  <th scope="col">Uses</th>
                  <th scope="col">Labels</th>
                  <th scope="col">Note</th>
                  <th scope="col">Expires</th>
                  <th scope="col">
                    <span className="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {tokens.data.items.map((t) => (
                  <tr key={t.id} data-token-id={t.id}>
                    <td>{formatTime(t.created_at)}</td>
                    <td>
                      <StatusBadge status={t.state} />
                    </td>
                    <td>
                      {t.uses} of {t.max_uses}
                    </td>
                    <td>{labelsToText(t.labels) || <span className="muted">none</span>}</td>
                    <td>{t.note || <span className="muted">—</span>}</td>
                    <td>{formatTime(t.expires_at)}</td>
                    <td>
                      {can("enrollment_tokens:write") && t.state === "active" && (
                        <button type="button" onClick={() => setRevoking(t)} aria-label={`Revoke token created ${formatTime(t.created_at)}${t.note ? ` (${t.note})` : ""}`}>
                          Revoke
                        </button>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
      {revoking && (
        <RevokeToken
          token={revoking}
          onClose={() => setRevoking(null)}
          onDone={() => {
            setRevoking(null);
            tokens.refresh();
          }}
        />
      )}
    </>
  );
}

function CreateToken({ onCreated }: { onCreated: (token: Created) => void }) {
  const ids = { ttl: useId(), uses: useId(), labels: useId(), note: useId() };
  const [ttl, setTtl] = useState(3600);
  const [uses, setUses] = useState("1");
  const [labels, setLabels] = useState("");
  const [note, setNote] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    const parsed = parseLabels(labels);
    if ("error" in parsed) {
      setError(parsed.error);
      return;
    }
    const maxUses = Number.parseInt(uses, 10);
    if (!Number.isInteger(maxUses) || maxUses < 1 || maxUses > 10_000) {
      setError("Uses must be a whole number from 1 to 10,000.");
      return;
    }
    setBusy(true);
    try {
      const body: Schemas["EnrollmentTokenCreateRequest"] = {
        ttl_seconds: ttl,
        max_uses: maxUses,
        labels: parsed.labels,
        note: note.trim(),
      };
      const token = await unwrap(api.POST("/v1/enrollment-tokens", { body }));
      onCreated(token);
      setLabels("");
      setNote("");
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <section aria-labelledby="create-heading" className="card">
      <h2 id="create-heading">Create a token</h2>
      <form className="form-grid" onSubmit={(e) => void submit(e)}>
        <div className="field">
          <label htmlFor={ids.ttl}>Valid for</label>
          <select id={ids.ttl} value={ttl} onChange={(e) => setTtl(Number(e.target.value))}>
            {TTL_CHOICES.map(([seconds, label]) => (
              <option key={seconds} value={seconds}>
                {label}
              </option>
            ))}
          </select>
        </div>
        <div className="field">
          <label htmlFor={ids.uses}>Uses (hosts that may enroll)</label>
          <input id={ids.uses} type="number" min={1} max={10_000} value={uses} onChange={(e) => setUses(e.target.value)} />
        </div>
        <div className="field field-wide">
          <label htmlFor={ids.labels}>Labels for enrolled nodes (key=value, comma or line separated)</label>
          <textarea id={ids.labels} rows={2} value={labels} onChange={(e) => setLabels(e.target.value)} placeholder="env=staging" spellCheck={false} />
        </div>
        <div className="field field-wide">
          <label htmlFor={ids.note}>Note (optional)</label>
          <input id={ids.note} maxLength={500} value={note} onChange={(e) => setNote(e.target.value)} />
        </div>
        <FormError error={error} />
        <div>
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Creating…" : "Create token"}
          </button>
        </div>
      </form>
    </section>
  );
}

function CreatedToken({ token, onDismiss }: { token: Created; onDismiss: () => void }) {
  const commandId = useId();
  const heading = useRef<HTMLHeadingElement>(null);
  // Once per new token: take focus there so the one-time secret is not missed.
  useEffect(() => heading.current?.focus(), [token.id]);
  return (
    <section aria-labelledby="created-heading" className="card card-highlight" data-testid="created-token">
      <h2 id="created-heading" tabIndex={-1} ref={heading}>
        Token created: copy the join command now
      </h2>
      <p>
        This is the only time the secret is shown. Run the command on the new host (it holds the token, so keep it out of
        shared places).
      </p>
      <label htmlFor={commandId}>Join command</label>
      <textarea id={commandId} className="secret" readOnly rows={3} value={token.enroll_command} spellCheck={false} />
      <div className="toolbar">
        <CopyButton text={token.enroll_command} label="Copy join command" targetId={commandId} />
        <button type="button" onClick={onDismiss}>
          Done, hide it
        </button>
      </div>
      <p className="muted">
        CA pin: <code>{token.ca_pin}</code>
      </p>
    </section>
  );
}

function RevokeToken({ token, onClose, onDone }: { token: Token; onClose: () => void; onDone: () => void }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  return (
    <Dialog title="Revoke the enrollment token" onClose={onClose} busy={busy}>
      <p>
        No host can enroll with this token any more ({token.uses} of {token.max_uses} uses spent). Nodes that already
        enrolled with it are not affected.
      </p>
      <FormError error={error} />
      <div className="dialog-actions">
        <button type="button" onClick={onClose} disabled={busy} data-autofocus>
          Keep it
        </button>
        <button
          type="button"
          className="danger"
          disabled={busy}
          onClick={async () => {
            setBusy(true);
            setError(null);
            try {
              await unwrap(api.DELETE("/v1/enrollment-tokens/{token_id}", { params: { path: { token_id: token.id } } }));
              onDone();
            } catch (e) {
              setError(e instanceof Error ? e.message : String(e));
              setBusy(false);
            }
          }}
        >
          Revoke token
        </button>
      </div>
    </Dialog>
  );
}
