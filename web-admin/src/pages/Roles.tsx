// Roles: the built-in and custom roles with their permissions (`GET /v1/roles`), defining or
// replacing a custom role (`PUT /v1/roles/{name}`) and deleting one; and each single sign-on
// provider's ordered group → role rules (`GET /v1/auth/role-mappings`), read-only because they
// live in the server's configuration file.

import { useId, useState, type FormEvent } from "react";

import { api, unwrap, type Schemas } from "../api/client";
import { Dialog } from "../components/Dialog";
import { PageHeader } from "../components/PageHeader";
import { Empty, ErrorState, FormError, Loading } from "../components/States";
import { useCan } from "../lib/auth";
import { formatTime } from "../lib/format";
import { useResource } from "../lib/resource";

type RoleInfo = Schemas["RoleInfo"];
type Permission = Schemas["Permission"];

const permKey = (p: Permission) => `${p.object}:${p.action}`;

export function RolesPage() {
  const can = useCan();
  const roles = useResource(() => unwrap(api.GET("/v1/roles")), []);
  const [editing, setEditing] = useState<RoleInfo | "new" | null>(null);
  const [deleting, setDeleting] = useState<RoleInfo | null>(null);
  const manage = can("roles:manage");

  return (
    <>
      <PageHeader title="Roles">
        {manage && roles.data && (
          <button type="button" className="primary" onClick={() => setEditing("new")}>
            New custom role
          </button>
        )}
      </PageHeader>
      <section aria-labelledby="roles-heading" className="card">
        <h2 id="roles-heading">Roles and permissions</h2>
        {roles.loading ? (
          <Loading label="Loading roles" />
        ) : !roles.data ? (
          <ErrorState title="Could not load the roles." error={roles.error ?? new Error("no data")} onRetry={roles.refresh} />
        ) : roles.data.items.length === 0 ? (
          <Empty title="No roles." />
        ) : (
          <div className="table-scroll">
            <table className="table">
              <caption className="visually-hidden">Roles, built-in first</caption>
              <thead>
                <tr>
                  <th scope="col">Role</th>
                  <th scope="col">Description</th>
                  <th scope="col">Permissions</th>
                  <th scope="col">Updated</th>
                  <th scope="col">
                    <span className="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {roles.data.items.map((r) => (
                  <tr key={r.name}>
                    <td>
                      <strong>{r.name}</strong>
                      {r.builtin && <span className="muted"> (built-in)</span>}
                    </td>
                    <td>{r.description || <span className="muted">—</span>}</td>
                    <td>
                      <ul className="label-list" aria-label={`Permissions of ${r.name}`}>
                        {r.permissions.map((p) => (
                          <li key={permKey(p)} className="label-chip">
                            {p.object === "*" && p.action === "*" ? "everything" : permKey(p)}
                          </li>
                        ))}
                      </ul>
                    </td>
                    <td>{r.builtin ? "—" : formatTime(r.updated_at)}</td>
                    <td className="row-actions">
                      {manage && !r.builtin && (
                        <>
                          <button type="button" onClick={() => setEditing(r)} aria-label={`Edit role ${r.name}`}>
                            Edit
                          </button>
                          <button type="button" className="danger" onClick={() => setDeleting(r)} aria-label={`Delete role ${r.name}`}>
                            Delete
                          </button>
                        </>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
      <SsoMappings />
      {editing && roles.data && (
        <RoleEditor
          role={editing === "new" ? null : editing}
          assignable={roles.data.assignable}
          onClose={() => setEditing(null)}
          onSaved={() => {
            setEditing(null);
            roles.refresh();
          }}
        />
      )}
      {deleting && (
        <DeleteRole
          role={deleting}
          onClose={() => setDeleting(null)}
          onDone={() => {
            setDeleting(null);
            roles.refresh();
          }}
        />
      )}
    </>
  );
}

type SsoProvider = Schemas["RoleMappings"]["providers"][number];

function SsoMappings() {
  const mappings = useResource(() => unwrap(api.GET("/v1/auth/role-mappings")), []);
  return (
    <section aria-labelledby="sso-heading" className="card">
      <h2 id="sso-heading">Single sign-on role mappings</h2>
      <p>
        Which role (and scope) a user who signs in through a provider gets, from the groups in the provider's ID
        token. The rules are read in order: the first rule whose group the user is in wins, and a user in none of the
        groups gets no access. They are configured in <code>moltops.toml</code> (
        <code>[[oidc]] roles = [{"{ group = …, role = …, scope = … }"}]</code>) and cannot be changed here; users
        get their role again at each sign-in.
      </p>
      {mappings.loading ? (
        <Loading label="Loading the role mappings" />
      ) : !mappings.data ? (
        <ErrorState
          title="Could not load the role mappings."
          error={mappings.error ?? new Error("no data")}
          onRetry={mappings.refresh}
        />
      ) : mappings.data.providers.length === 0 ? (
        <Empty title="No single sign-on provider is configured." />
      ) : (
        mappings.data.providers.map((provider) => <ProviderRules key={provider.name} provider={provider} />)
      )}
    </section>
  );
}

function ProviderRules({ provider }: { provider: SsoProvider }) {
  const caption = `Rules of ${provider.display_name}, first match wins`;
  return (
    <div className="provider-rules">
      <h3 className="subheading">
        {provider.display_name} <code>{provider.name}</code>
      </h3>
      <dl className="facts">
        <dt>Issuer</dt>
        <dd>
          <code>{provider.issuer}</code>
        </dd>
        <dt>Groups claim</dt>
        <dd>
          <code>{provider.groups_claim}</code>
        </dd>
      </dl>
      {provider.rules.length === 0 ? (
        <p className="notice notice-warning">No rules: nobody who signs in through this provider gets access.</p>
      ) : (
        <div className="table-scroll">
          <table className="table compact">
            <caption className="visually-hidden">{caption}</caption>
            <thead>
              <tr>
                <th scope="col">Order</th>
                <th scope="col">Group</th>
                <th scope="col">Role</th>
                <th scope="col">Scope</th>
              </tr>
            </thead>
            <tbody>
              {provider.rules.map((rule, index) => (
                // Rules may repeat a group (only the first can match), so the key is the position.
                <tr key={index}>
                  <td>{index + 1}</td>
                  <td>
                    <code>{rule.group}</code>
                  </td>
                  <td>{rule.role}</td>
                  <td>{rule.scope === "" ? <span className="muted">whole fleet</span> : <code>{rule.scope}</code>}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}

function RoleEditor({
  role,
  assignable,
  onClose,
  onSaved,
}: {
  role: RoleInfo | null;
  assignable: Permission[];
  onClose: () => void;
  onSaved: () => void;
}) {
  const nameId = useId();
  const descriptionId = useId();
  const [name, setName] = useState(role?.name ?? "");
  const [description, setDescription] = useState(role?.description ?? "");
  const [chosen, setChosen] = useState<Set<string>>(() => new Set(role?.permissions.map(permKey) ?? []));
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    const roleName = name.trim();
    if (!/^[a-z][a-z0-9_-]{0,31}$/.test(roleName)) {
      setError("The name is 1-32 characters of a-z, 0-9, - and _, starting with a letter.");
      return;
    }
    setBusy(true);
    try {
      const body: Schemas["RolePutRequest"] = {
        description: description.trim(),
        permissions: assignable.filter((p) => chosen.has(permKey(p))),
      };
      await unwrap(api.PUT("/v1/roles/{role}", { params: { path: { role: roleName } }, body }));
      onSaved();
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
      setBusy(false);
    }
  };

  return (
    <Dialog title={role ? `Edit role ${role.name}` : "New custom role"} onClose={onClose} busy={busy} wide>
      <form onSubmit={(e) => void submit(e)}>
        <div className="field">
          <label htmlFor={nameId}>Name</label>
          <input id={nameId} value={name} onChange={(e) => setName(e.target.value)} readOnly={role !== null} spellCheck={false} data-autofocus />
        </div>
        <div className="field">
          <label htmlFor={descriptionId}>Description</label>
          <input id={descriptionId} value={description} maxLength={200} onChange={(e) => setDescription(e.target.value)} />
        </div>
        <fieldset className="checkbox-grid">
          <legend>Permissions (a custom role holds at most what admin may)</legend>
          {assignable.map((p) => {
            const key = permKey(p);
            return (
              <label key={key} className="checkbox">
                <input
                  type="checkbox"
                  checked={chosen.has(key)}
                  onChange={(e) =>
                    setChosen((s) => {
                      const next = new Set(s);
                      if (e.target.checked) next.add(key);
                      else next.delete(key);
                      return next;
                    })
                  }
                />
                {key}
              </label>
            );
          })}
        </fieldset>
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

function DeleteRole({ role, onClose, onDone }: { role: RoleInfo; onClose: () => void; onDone: () => void }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  return (
    <Dialog title={`Delete role ${role.name}`} onClose={onClose} busy={busy}>
      <p>Only a role that no active token, device, SSO user or pending pairing holds can be deleted.</p>
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
              await unwrap(api.DELETE("/v1/roles/{role}", { params: { path: { role: role.name } } }));
              onDone();
            } catch (e) {
              setError(e instanceof Error ? e.message : String(e));
              setBusy(false);
            }
          }}
        >
          Delete role
        </button>
      </div>
    </Dialog>
  );
}
