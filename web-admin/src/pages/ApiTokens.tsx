// API tokens (owners): list (`GET /v1/api-tokens`), create one and show its secret once
// (`POST /v1/api-tokens`), revoke (`DELETE /v1/api-tokens/{id}`).

import { useEffect, useId, useRef, useState, type FormEvent } from "react";

import { api, unwrap, type Schemas } from "../api/client";
import { CopyButton } from "../components/CopyButton";
import { Dialog } from "../components/Dialog";
import { PageHeader } from "../components/PageHeader";
import { Empty, ErrorState, FormError, Loading } from "../components/States";
import { StatusBadge } from "../components/StatusBadge";
import { useCan } from "../lib/auth";
import { formatTime } from "../lib/format";
import { useResource } from "../lib/resource";

type ApiToken = Schemas["ApiToken"];

function tokenState(t: ApiToken): "active" | "revoked" | "expired" {
  if (t.revoked_at) return "revoked";
  if (t.expires_at && new Date(t.expires_at).getTime() <= Date.now()) return "expired";
  return "active";
}

export function ApiTokensPage() {
  const tokens = useResource(() => unwrap(api.GET("/v1/api-tokens")), []);
  const [created, setCreated] = useState<Schemas["ApiTokenCreated"] | null>(null);
  const [revoking, setRevoking] = useState<ApiToken | null>(null);

  return (
    <>
      <PageHeader title="API tokens" />
      <CreateApiToken
        onCreated={(t) => {
          setCreated(t);
          tokens.refresh();
        }}
      />
      {created && <CreatedSecret token={created} onDismiss={() => setCreated(null)} />}
      <section aria-labelledby="api-tokens-heading" className="card">
        <h2 id="api-tokens-heading">Tokens</h2>
        {tokens.loading ? (
          <Loading label="Loading API tokens" />
        ) : !tokens.data ? (
          <ErrorState title="Could not load the API tokens." error={tokens.error ?? new Error("no data")} onRetry={tokens.refresh} />
        ) : tokens.data.items.length === 0 ? (
          <Empty title="No API tokens yet." />
        ) : (
          <div className="table-scroll">
            <table className="table">
              <caption className="visually-hidden">API tokens, oldest first</caption>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Role</th>
                  <th scope="col">Scope</th>
                  <th scope="col">State</th>
                  <th scope="col">Created</th>
                  <th scope="col">Expires</th>
                  <th scope="col">Last used</th>
                  <th scope="col">
                    <span className="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {tokens.data.items.map((t) => {
                  const state = tokenState(t);
                  return (
                    <tr key={t.id}>
                      <td>{t.name}</td>
                      <td>{t.role}</td>
                      <td>{t.scope || <span className="muted">whole fleet</span>}</td>
                      <td>
                        <StatusBadge status={state} />
                      </td>
                      <td>{formatTime(t.created_at)}</td>
                      <td>{t.expires_at ? formatTime(t.expires_at) : "never"}</td>
                      <td>{t.last_used_at ? formatTime(t.last_used_at) : "never"}</td>
                      <td>
                        {state === "active" && (
                          <button type="button" className="danger" onClick={() => setRevoking(t)} aria-label={`Revoke API token ${t.name}`}>
                            Revoke
                          </button>
                        )}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </section>
      {revoking && (
        <RevokeApiToken
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

function CreateApiToken({ onCreated }: { onCreated: (t: Schemas["ApiTokenCreated"]) => void }) {
  const can = useCan();
  const ids = { name: useId(), role: useId(), days: useId(), scope: useId() };
  const roles = useResource(
    async () => (can("roles:read") ? (await unwrap(api.GET("/v1/roles"))).items.map((r) => r.name) : ["viewer", "admin", "owner"]),
    [],
  );
  const [name, setName] = useState("");
  const [role, setRole] = useState("viewer");
  const [days, setDays] = useState("90");
  const [scope, setScope] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    if (name.trim() === "") {
      setError("Give the token a name.");
      return;
    }
    const expires = days.trim() === "" ? null : Number.parseInt(days, 10);
    if (expires !== null && (!Number.isInteger(expires) || expires < 1 || expires > 3650)) {
      setError("Expiry is a whole number of days from 1 to 3650, or empty for never.");
      return;
    }
    setBusy(true);
    try {
      const body: Schemas["ApiTokenCreateRequest"] = {
        name: name.trim(),
        role,
        expires_in_days: expires,
        scope: role === "owner" || scope.trim() === "" ? null : scope.trim(),
      };
      onCreated(await unwrap(api.POST("/v1/api-tokens", { body })));
      setName("");
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <section aria-labelledby="create-api-heading" className="card">
      <h2 id="create-api-heading">Create a token</h2>
      <form className="form-grid" onSubmit={(e) => void submit(e)}>
        <div className="field">
          <label htmlFor={ids.name}>Name</label>
          <input id={ids.name} value={name} maxLength={100} onChange={(e) => setName(e.target.value)} autoComplete="off" />
        </div>
        <div className="field">
          <label htmlFor={ids.role}>Role</label>
          <select id={ids.role} value={role} onChange={(e) => setRole(e.target.value)}>
            {(roles.data ?? ["viewer", "admin", "owner"]).map((r) => (
              <option key={r} value={r}>
                {r}
              </option>
            ))}
          </select>
        </div>
        <div className="field">
          <label htmlFor={ids.days}>Expires after (days; empty for never)</label>
          <input id={ids.days} type="number" min={1} max={3650} value={days} onChange={(e) => setDays(e.target.value)} />
        </div>
        <div className="field">
          <label htmlFor={ids.scope}>Scope (label selector, optional)</label>
          <input id={ids.scope} value={role === "owner" ? "" : scope} disabled={role === "owner"} onChange={(e) => setScope(e.target.value)} spellCheck={false} />
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

function CreatedSecret({ token, onDismiss }: { token: Schemas["ApiTokenCreated"]; onDismiss: () => void }) {
  const secretId = useId();
  const heading = useRef<HTMLHeadingElement>(null);
  useEffect(() => heading.current?.focus(), [token.id]);
  return (
    <section aria-labelledby="secret-heading" className="card card-highlight" data-testid="created-api-token">
      <h2 id="secret-heading" tabIndex={-1} ref={heading}>
        Token {token.name} created: copy it now
      </h2>
      <p>This is the only time the secret is shown. Use it as <code>Authorization: Bearer …</code>.</p>
      <label htmlFor={secretId}>Secret</label>
      <textarea id={secretId} className="secret" readOnly rows={2} value={token.token} spellCheck={false} />
      <div className="toolbar">
        <CopyButton text={token.token} label="Copy secret" targetId={secretId} />
        <button type="button" onClick={onDismiss}>
          Done, hide it
        </button>
      </div>
    </section>
  );
}

function RevokeApiToken({ token, onClose, onDone }: { token: ApiToken; onClose: () => void; onDone: () => void }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  return (
    <Dialog title={`Revoke API token ${token.name}`} onClose={onClose} busy={busy}>
      <p>Requests with this token are refused from now on. Automation that uses it stops working.</p>
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
              await unwrap(api.DELETE("/v1/api-tokens/{token_id}", { params: { path: { token_id: token.id } } }));
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
