// Pending device pairings (`GET /v1/pairings`, polled) and approving the code a device shows
// (`POST /v1/pairings/approve`) with a role, a name and an optional scope.

import { useId, useState, type FormEvent } from "react";

import { api, unwrap, type Schemas } from "../api/client";
import { PageHeader } from "../components/PageHeader";
import { Empty, ErrorState, FormError, Loading, StaleNotice } from "../components/States";
import { StatusBadge } from "../components/StatusBadge";
import { useCan, useMe } from "../lib/auth";
import { formatTime } from "../lib/format";
import { useResource } from "../lib/resource";

export function PairingsPage() {
  const pairings = useResource(() => unwrap(api.GET("/v1/pairings")), [], { pollMs: 5_000 });
  return (
    <>
      <PageHeader title="Device pairings" />
      <ApproveForm onApproved={pairings.refresh} />
      <section aria-labelledby="pending-heading" className="card">
        <h2 id="pending-heading">Pending</h2>
        <StaleNotice error={pairings.data ? pairings.error : undefined} retryInMs={pairings.retryInMs} />
        {pairings.loading ? (
          <Loading label="Loading pending pairings" />
        ) : !pairings.data ? (
          <ErrorState title="Could not load the pending pairings." error={pairings.error ?? new Error("no data")} onRetry={pairings.refresh} />
        ) : pairings.data.items.length === 0 ? (
          <Empty title="No device is waiting to pair." />
        ) : (
          <div className="table-scroll">
            <table className="table">
              <caption className="visually-hidden">Pending pairings, oldest first</caption>
              <thead>
                <tr>
                  <th scope="col">Requested name</th>
                  <th scope="col">From</th>
                  <th scope="col">Started</th>
                  <th scope="col">Expires</th>
                  <th scope="col">State</th>
                </tr>
              </thead>
              <tbody>
                {pairings.data.items.map((p) => (
                  <tr key={p.id}>
                    <td>{p.requested_name || <span className="muted">(none)</span>}</td>
                    <td>
                      <code>{p.client_addr}</code>
                    </td>
                    <td>{formatTime(p.created_at)}</td>
                    <td>{formatTime(p.expires_at)}</td>
                    <td>
                      {p.approved ? <StatusBadge status="active" label="approved, not redeemed" /> : <StatusBadge status="queued" label="awaiting approval" />}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        <p className="muted">Codes are never listed: ask the person for the code their device shows.</p>
      </section>
    </>
  );
}

function ApproveForm({ onApproved }: { onApproved: () => void }) {
  const me = useMe();
  const can = useCan();
  const ids = { code: useId(), role: useId(), name: useId(), scope: useId() };
  const roles = useResource(
    async () => (can("roles:read") ? (await unwrap(api.GET("/v1/roles"))).items.map((r) => r.name) : ["viewer", "admin", "owner"]),
    [],
  );
  const [code, setCode] = useState("");
  const [role, setRole] = useState("viewer");
  const [name, setName] = useState("");
  const [scope, setScope] = useState(me.scope);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    setDone(null);
    if (code.trim() === "" || name.trim() === "") {
      setError("Enter the code the device shows and a name for it.");
      return;
    }
    setBusy(true);
    try {
      const body: Schemas["PairingApproveRequest"] = {
        pairing_code: code.trim(),
        role,
        device_name: name.trim(),
        scope: role === "owner" || scope.trim() === "" ? null : scope.trim(),
      };
      await unwrap(api.POST("/v1/pairings/approve", { body }));
      setDone(`Approved ${code.trim()} as ${role}. The device signs in by itself within a few seconds.`);
      setCode("");
      setName("");
      onApproved();
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  };

  const roleNames = roles.data ?? ["viewer", "admin", "owner"];
  return (
    <section aria-labelledby="approve-heading" className="card">
      <h2 id="approve-heading">Approve a code</h2>
      <form className="form-grid" onSubmit={(e) => void submit(e)}>
        <div className="field">
          <label htmlFor={ids.code}>Pairing code</label>
          <input
            id={ids.code}
            value={code}
            onChange={(e) => setCode(e.target.value)}
            placeholder="7K3M-Q9XD"
            autoComplete="off"
            spellCheck={false}
            autoCapitalize="characters"
          />
        </div>
        <div className="field">
          <label htmlFor={ids.name}>Device name</label>
          <input id={ids.name} value={name} maxLength={100} onChange={(e) => setName(e.target.value)} autoComplete="off" />
        </div>
        <div className="field">
          <label htmlFor={ids.role}>Role</label>
          <select id={ids.role} value={role} onChange={(e) => setRole(e.target.value)}>
            {roleNames.map((r) => (
              // Only an owner may approve an owner device; the server refuses it too.
              <option key={r} value={r} disabled={r === "owner" && me.role !== "owner"}>
                {r}
              </option>
            ))}
          </select>
        </div>
        <div className="field">
          <label htmlFor={ids.scope}>Scope (label selector, optional)</label>
          <input
            id={ids.scope}
            value={role === "owner" ? "" : scope}
            onChange={(e) => setScope(e.target.value)}
            placeholder="env=staging"
            disabled={role === "owner" || me.scope !== ""}
            spellCheck={false}
          />
        </div>
        {me.scope !== "" && <p className="muted field-wide">You are scoped, so the device gets your scope: {me.scope}.</p>}
        <FormError error={error} />
        {done && (
          <p role="status" className="notice notice-success field-wide">
            {done}
          </p>
        )}
        <div>
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Approving…" : "Approve"}
          </button>
        </div>
      </form>
    </section>
  );
}
