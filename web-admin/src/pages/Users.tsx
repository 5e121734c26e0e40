// Users: paired devices and SSO users (`GET /v1/users`), their sessions, changing a device's role
// and scope (`PATCH /v1/users/{id}`; an SSO user's role comes from its provider's group mapping),
// and removing a user (`DELETE /v1/users/{id}`, destructive: reason and confirmation).

import { useId, useState, type FormEvent } from "react";

import { api, unwrap, type Schemas } from "../api/client";
import { ConfirmDestructive, type PreparedRequest } from "../components/ConfirmDestructive";
import { Dialog } from "../components/Dialog";
import { PageHeader } from "../components/PageHeader";
import { Empty, ErrorState, FormError, Loading } from "../components/States";
import { StatusBadge } from "../components/StatusBadge";
import { useCan, useMe } from "../lib/auth";
import { formatTime } from "../lib/format";
import { useResource } from "../lib/resource";

type User = Schemas["User"];

type Open = { kind: "sessions" | "role" | "remove"; user: User } | null;

export function UsersPage() {
  const can = useCan();
  const me = useMe();
  const users = useResource(() => unwrap(api.GET("/v1/users")), []);
  const [open, setOpen] = useState<Open>(null);
  const [note, setNote] = useState<string | null>(null);
  const manage = can("users:manage");

  return (
    <>
      <PageHeader title="Users" />
      {note && (
        <p role="status" className="notice notice-success">
          {note}
        </p>
      )}
      <section aria-labelledby="users-heading" className="card">
        <h2 id="users-heading">Devices and SSO users</h2>
        {users.loading ? (
          <Loading label="Loading users" />
        ) : !users.data ? (
          <ErrorState title="Could not load the users." error={users.error ?? new Error("no data")} onRetry={users.refresh} />
        ) : users.data.items.length === 0 ? (
          <Empty title="No users yet." />
        ) : (
          <div className="table-scroll">
            <table className="table">
              <caption className="visually-hidden">Users</caption>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Kind</th>
                  <th scope="col">Role</th>
                  <th scope="col">Scope</th>
                  <th scope="col">Sessions</th>
                  <th scope="col">Approved by</th>
                  <th scope="col">State</th>
                  <th scope="col">
                    <span className="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {users.data.items.map((u) => {
                  const removed = u.revoked_at !== null;
                  const self = u.id === me.id;
                  return (
                    <tr key={u.id}>
                      <td>
                        {u.name}
                        {u.email && u.email !== u.name && <span className="muted"> ({u.email})</span>}
                        {self && <span className="muted"> (you)</span>}
                      </td>
                      <td>{u.kind === "sso" ? `SSO (${u.provider ?? "?"})` : "device"}</td>
                      <td>{u.role}</td>
                      <td>{u.scope || <span className="muted">whole fleet</span>}</td>
                      <td>{u.active_sessions}</td>
                      <td>
                        <code>{u.approved_by}</code>
                      </td>
                      <td>
                        {removed ? (
                          <StatusBadge status="revoked" label={`removed ${formatTime(u.revoked_at)}`} />
                        ) : (
                          <StatusBadge status="active" />
                        )}
                      </td>
                      <td className="row-actions">
                        <button type="button" onClick={() => setOpen({ kind: "sessions", user: u })} aria-label={`Sessions of ${u.name}`}>
                          Sessions
                        </button>
                        {manage && !removed && u.kind === "device" && (
                          <button type="button" onClick={() => setOpen({ kind: "role", user: u })} aria-label={`Change role of ${u.name}`}>
                            Change role
                          </button>
                        )}
                        {manage && !removed && !self && (
                          <button type="button" className="danger" onClick={() => setOpen({ kind: "remove", user: u })} aria-label={`Remove ${u.name}`}>
                            Remove…
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
        <p className="muted">
          An SSO user's role and scope come from its identity provider's group mapping at each sign-in; change the mapping
          in the server's configuration (see Roles).
        </p>
      </section>
      {open?.kind === "sessions" && <SessionsDialog user={open.user} onClose={() => setOpen(null)} />}
      {open?.kind === "role" && (
        <RoleDialog
          user={open.user}
          onClose={() => setOpen(null)}
          onDone={() => {
            setOpen(null);
            setNote(`Changed the role of ${open.user.name}.`);
            users.refresh();
          }}
        />
      )}
      {open?.kind === "remove" && (
        <RemoveDialog
          user={open.user}
          onClose={() => setOpen(null)}
          onDone={() => {
            setOpen(null);
            setNote(`Removed ${open.user.name}; its sessions have ended.`);
            users.refresh();
          }}
        />
      )}
    </>
  );
}

function SessionsDialog({ user, onClose }: { user: User; onClose: () => void }) {
  const sessions = useResource(
    () => unwrap(api.GET("/v1/users/{user_id}/sessions", { params: { path: { user_id: user.id } } })),
    [user.id],
  );
  return (
    <Dialog title={`Sessions of ${user.name}`} onClose={onClose} wide>
      {sessions.loading ? (
        <Loading label="Loading sessions" />
      ) : !sessions.data ? (
        <ErrorState title="Could not load the sessions." error={sessions.error ?? new Error("no data")} onRetry={sessions.refresh} />
      ) : sessions.data.items.length === 0 ? (
        <Empty title="No sessions." />
      ) : (
        <div className="table-scroll">
          <table className="table">
            <caption className="visually-hidden">Sessions</caption>
            <thead>
              <tr>
                <th scope="col">Started</th>
                <th scope="col">Access expires</th>
                <th scope="col">Refresh expires</th>
                <th scope="col">Ended</th>
              </tr>
            </thead>
            <tbody>
              {sessions.data.items.map((s) => (
                <tr key={s.id}>
                  <td>{formatTime(s.created_at)}</td>
                  <td>{formatTime(s.access_expires_at)}</td>
                  <td>{formatTime(s.refresh_expires_at)}</td>
                  <td>{s.revoked_at ? formatTime(s.revoked_at) : "active"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <div className="dialog-actions">
        <button type="button" onClick={onClose}>
          Close
        </button>
      </div>
    </Dialog>
  );
}

function RoleDialog({ user, onClose, onDone }: { user: User; onClose: () => void; onDone: () => void }) {
  const can = useCan();
  const roleId = useId();
  const scopeId = useId();
  const roles = useResource(
    async () => (can("roles:read") ? (await unwrap(api.GET("/v1/roles"))).items.map((r) => r.name) : ["viewer", "admin", "owner"]),
    [],
  );
  const [role, setRole] = useState(user.role);
  const [scope, setScope] = useState(user.scope);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body: Schemas["UserUpdateRequest"] = { role, scope: role === "owner" || scope.trim() === "" ? null : scope.trim() };
      await unwrap(api.PATCH("/v1/users/{user_id}", { params: { path: { user_id: user.id } }, body }));
      onDone();
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
      setBusy(false);
    }
  };
  const names = roles.data ?? [user.role];
  return (
    <Dialog title={`Change the role of ${user.name}`} onClose={onClose} busy={busy}>
      <form onSubmit={(e) => void submit(e)}>
        <p>It applies from the device's next request.</p>
        <div className="field">
          <label htmlFor={roleId}>Role</label>
          <select id={roleId} value={role} onChange={(e) => setRole(e.target.value)} data-autofocus>
            {(names.includes(user.role) ? names : [user.role, ...names]).map((r) => (
              <option key={r} value={r}>
                {r}
              </option>
            ))}
          </select>
        </div>
        <div className="field">
          <label htmlFor={scopeId}>Scope (label selector; empty for the whole fleet)</label>
          <input id={scopeId} value={role === "owner" ? "" : scope} disabled={role === "owner"} onChange={(e) => setScope(e.target.value)} spellCheck={false} />
        </div>
        <FormError error={error} />
        <div className="dialog-actions">
          <button type="button" onClick={onClose} disabled={busy}>
            Cancel
          </button>
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Saving…" : "Save role"}
          </button>
        </div>
      </form>
    </Dialog>
  );
}

function RemoveDialog({ user, onClose, onDone }: { user: User; onClose: () => void; onDone: () => void }) {
  const prepare = (reason: string): PreparedRequest<undefined> => ({
    effect:
      user.kind === "sso"
        ? "disables the SSO user and ends its sessions; later sign-ins are refused"
        : "revokes the device and ends its sessions",
    sent: { reason },
    send: ({ confirmationToken }) =>
      api.DELETE("/v1/users/{user_id}", {
        params: {
          path: { user_id: user.id },
          query: { reason },
          header: confirmationToken ? { "X-Confirmation-Token": confirmationToken } : {},
        },
      }) as Promise<{ data?: undefined; error?: unknown; response: Response }>,
  });
  return (
    <ConfirmDestructive
      title="Remove the user"
      summary={
        <>
          Remove <strong>{user.name}</strong> ({user.kind === "sso" ? "SSO user" : "device"}, role {user.role}).
        </>
      }
      confirmLabel="Confirm removal"
      targetName={user.name}
      prepare={prepare}
      onClose={onClose}
      onDone={onDone}
    />
  );
}
