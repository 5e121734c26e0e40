// The other screens against the fake API: enrollment (join command shown once), node detail
// (metrics history, empty metrics), audit (table, verify, export link), pairings approval, users
// removal (destructive, reason in the query), roles (SSO mappings stated as missing), API tokens.

import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";

import { App } from "../src/App";
import { checkpointsFromExport } from "../src/pages/Audit";
import { FakeServer, NODE_ID, OWNER_PERMISSIONS, apiError, json, me, node } from "./fakeServer";

function owner() {
  return new FakeServer().on("GET", "/v1/me", () => json(200, me("owner", OWNER_PERMISSIONS)));
}

const TOKEN = {
  id: "0190a1b2-0000-7000-8000-00000000e001",
  labels: { env: "staging" },
  note: "rack 4",
  max_uses: 2,
  uses: 0,
  state: "active",
  created_at: "2026-11-21T12:00:00Z",
  created_by: "device:aa",
  expires_at: "2026-11-21T13:00:00Z",
  revoked_at: null,
};

describe("enrollment tokens", () => {
  it("creates a token and shows its join command once, with a copy button", async () => {
    const user = userEvent.setup();
    let listed: unknown[] = [];
    const server = owner()
      .on("GET", "/v1/enrollment-tokens", () => json(200, { items: listed }))
      .on("POST", "/v1/enrollment-tokens", () => {
        listed = [TOKEN];
        return json(201, {
          ...TOKEN,
          token: "moe_SECRET",
          ca_pin: `sha256:${"a".repeat(64)}`,
          enroll_command: "moltops-agent enroll --server cp:7338 --token moe_SECRET --ca-pin sha256:aaa",
        });
      })
      .install();
    window.history.replaceState(null, "", "/enrollment");
    render(<App />);
    expect(await screen.findByText("No enrollment tokens yet.")).toBeInTheDocument();

    await user.selectOptions(screen.getByLabelText("Valid for"), "1 hour");
    await user.clear(screen.getByLabelText(/^Uses/));
    await user.type(screen.getByLabelText(/^Uses/), "2");
    await user.type(screen.getByLabelText(/^Labels for enrolled nodes/), "env=staging");
    await user.type(screen.getByLabelText(/^Note/), "rack 4");
    await user.click(screen.getByRole("button", { name: "Create token" }));

    const created = await screen.findByTestId("created-token");
    expect(within(created).getByLabelText("Join command")).toHaveValue(
      "moltops-agent enroll --server cp:7338 --token moe_SECRET --ca-pin sha256:aaa",
    );
    expect(within(created).getByRole("button", { name: "Copy join command" })).toBeInTheDocument();
    expect(server.sent("POST", "/v1/enrollment-tokens")[0]?.body).toEqual({
      ttl_seconds: 3600,
      max_uses: 2,
      labels: { env: "staging" },
      note: "rack 4",
    });
    expect(await screen.findByText("0 of 2")).toBeInTheDocument();

    await user.click(within(created).getByRole("button", { name: "Done, hide it" }));
    expect(screen.queryByText(/moe_SECRET/)).not.toBeInTheDocument();
    expect(screen.queryByDisplayValue(/moe_SECRET/)).not.toBeInTheDocument();
  });

  it("revokes a token after asking", async () => {
    const user = userEvent.setup();
    const server = owner()
      .on("GET", "/v1/enrollment-tokens", () => json(200, { items: [TOKEN] }))
      .on("DELETE", "/v1/enrollment-tokens/:id", () => json(204, null))
      .install();
    window.history.replaceState(null, "", "/enrollment");
    render(<App />);
    await user.click(await screen.findByRole("button", { name: /^Revoke token created/ }));
    await user.click(within(screen.getByRole("dialog")).getByRole("button", { name: "Revoke token" }));
    await waitFor(() => expect(server.sent("DELETE", "/v1/enrollment-tokens/:id")).toHaveLength(1));
    expect(server.sent("DELETE", "/v1/enrollment-tokens/:id")[0]?.path).toBe(`/v1/enrollment-tokens/${TOKEN.id}`);
  });
});

describe("node detail", () => {
  it("shows an empty state before the first metrics, not an error", async () => {
    owner()
      .on("GET", "/v1/nodes/:id", () => json(200, node()))
      .on("GET", "/v1/nodes/:id/metrics/current", () => apiError(404, "no_metrics", "the node has not reported metrics yet"))
      .on("GET", "/v1/nodes/:id/moltbot/status", () =>
        json(200, { installed: false, running: false, service_manager: "supervisor", gateway_connected: false, crash_loop: false, reported_at: null, age_seconds: null }),
      )
      .on("GET", "/v1/jobs", () => json(200, { items: [], next_cursor: null }))
      .install();
    window.history.replaceState(null, "", `/nodes/${NODE_ID}`);
    render(<App />);
    expect(await screen.findByText("No metrics yet.")).toBeInTheDocument();
    expect(await screen.findByText("The agent has not reported its gateway yet.")).toBeInTheDocument();
    expect(await screen.findByText("No jobs on this node yet.")).toBeInTheDocument();
    expect(screen.queryByText(/Could not load the metrics/)).not.toBeInTheDocument();
  });

  it("shows metric tiles with a history chart", async () => {
    owner()
      .on("GET", "/v1/nodes/:id", () => json(200, node()))
      .on("GET", "/v1/nodes/:id/metrics/current", () =>
        json(200, {
          cpu_percent: 42.5,
          mem_percent: 61,
          disk_free_bytes: 10 * 1024 ** 3,
          uptime_seconds: 7200,
          restart_count_24h: 1,
          memory_used_bytes: 5 * 1024 ** 3,
          memory_total_bytes: 8 * 1024 ** 3,
          load_1m: 0.7,
          reported_at: "2026-11-21T12:00:00Z",
          age_seconds: 4,
        }),
      )
      .install();
    window.history.replaceState(null, "", `/nodes/${NODE_ID}`);
    render(<App />);
    expect(await screen.findByText("42.5 %")).toBeInTheDocument();
    expect(screen.getByText("10.0 GiB")).toBeInTheDocument();
    expect(await screen.findByRole("img", { name: /CPU history: 1 sample, lowest 42.5 %/ })).toBeInTheDocument();
  });

  it("says when the node does not exist", async () => {
    owner().on("GET", "/v1/nodes/:id", () => apiError(404, "not_found", "no such node")).install();
    window.history.replaceState(null, "", `/nodes/${NODE_ID}`);
    render(<App />);
    expect(await screen.findByText("There is no such node, or it is outside your scope.")).toBeInTheDocument();
  });
});

const AUDIT_ROW = {
  seq: 7,
  id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a00",
  occurred_at: "2026-11-21T12:00:00.123456Z",
  actor_kind: "device",
  actor_id: "00000000-0000-4000-8000-0000000000aa",
  auth_method: "device_session",
  action: "gateway.restart",
  target_kind: "node",
  target_id: NODE_ID,
  reason: "picked up the new config",
  outcome: "success",
  request_id: "r1",
  detail: {},
  prev_hash: "0".repeat(64),
  hash: "c".repeat(64),
};

describe("audit", () => {
  it("lists events, filters by action, verifies the chain and links the export", async () => {
    const user = userEvent.setup();
    const server = owner()
      .on("GET", "/v1/audit", () => json(200, { items: [AUDIT_ROW] }))
      .on("GET", "/v1/audit/verify", () =>
        json(200, { ok: false, rows_checked: 11, head_seq: 12, unchained_rows: 0, checkpoints_checked: 2, first_bad_seq: 12, problem: "row 12 was altered" }),
      )
      .install();
    window.history.replaceState(null, "", "/audit");
    render(<App />);
    const table = await screen.findByTestId("audit-table");
    const row = within(table).getByText("gateway.restart").closest("tr") as HTMLElement;
    expect(row).toHaveTextContent("picked up the new config");

    await user.type(screen.getByLabelText("Action"), "gateway.restart");
    await user.click(screen.getByRole("button", { name: "Apply filters" }));
    await waitFor(() => expect(server.sent("GET", "/v1/audit").at(-1)?.query.get("action")).toBe("gateway.restart"));

    await user.click(screen.getByRole("button", { name: "Verify chain" }));
    const result = await screen.findByTestId("verify-result");
    expect(result).toHaveTextContent("The chain is broken.");
    expect(result).toHaveTextContent("row 12 was altered");
    expect(screen.getByRole("link", { name: "Download export" })).toHaveAttribute("href", "/v1/audit/export");
  });

  it("reads checkpoint lines out of an export", () => {
    const text = [
      JSON.stringify({ type: "event", seq: 1 }),
      JSON.stringify({ type: "checkpoint", seq: 1, hash: "a".repeat(64), signed_at: "2026-01-01T00:00:00Z", key_id: "b".repeat(16), signature: "sig" }),
      JSON.stringify({ type: "public_key", key_id: "b".repeat(16), public_key: "pk" }),
      "",
    ].join("\n");
    expect(checkpointsFromExport(text)).toEqual([
      { seq: 1, hash: "a".repeat(64), signed_at: "2026-01-01T00:00:00Z", key_id: "b".repeat(16), signature: "sig" },
    ]);
  });
});

describe("owner screens", () => {
  it("approves a pairing code with a role and name", async () => {
    const user = userEvent.setup();
    const server = owner()
      .on("GET", "/v1/pairings", () =>
        json(200, {
          items: [{ id: "p1", requested_name: "Bob's phone", client_addr: "203.0.113.7", created_at: "2026-11-21T12:00:00Z", expires_at: "2026-11-21T12:10:00Z", approved: false }],
        }),
      )
      .on("GET", "/v1/roles", () => json(200, { items: [{ name: "owner" }, { name: "admin" }, { name: "viewer" }], assignable: [] }))
      .on("POST", "/v1/pairings/approve", () => json(200, { pairing_id: "p1" }))
      .install();
    window.history.replaceState(null, "", "/pairings");
    render(<App />);
    expect(await screen.findByText("Bob's phone")).toBeInTheDocument();
    await user.type(screen.getByLabelText("Pairing code"), "7k3m q9xd");
    await user.type(screen.getByLabelText("Device name"), "Bob's phone");
    await user.selectOptions(screen.getByLabelText("Role"), "admin");
    await user.click(screen.getByRole("button", { name: "Approve" }));
    expect(await screen.findByText(/Approved 7k3m q9xd as admin/)).toBeInTheDocument();
    expect(server.sent("POST", "/v1/pairings/approve")[0]?.body).toEqual({
      pairing_code: "7k3m q9xd",
      role: "admin",
      device_name: "Bob's phone",
      scope: null,
    });
  });

  it("removes a user with a reason in the query and a confirmation token", async () => {
    const user = userEvent.setup();
    const bob = {
      id: "00000000-0000-4000-8000-0000000000bb",
      kind: "device",
      name: "Bob's phone",
      role: "viewer",
      scope: "",
      created_at: "2026-11-21T12:00:00Z",
      approved_by: "device:aa",
      revoked_at: null,
      active_sessions: 1,
    };
    const server = owner()
      .on("GET", "/v1/users", () => json(200, { items: [bob, { ...bob, id: me("owner", []).id, name: "owner browser", role: "owner" }] }))
      .sequence("DELETE", "/v1/users/:id", [
        () => json(428, { code: "confirmation_required", message: "user.remove is destructive", confirmation_token: "mcf_U", expires_at: new Date(Date.now() + 300_000).toISOString(), action: "user.remove", target: bob.id }),
        () => json(204, null),
      ])
      .install();
    window.history.replaceState(null, "", "/users");
    render(<App />);
    // Nobody can remove themselves.
    expect(await screen.findByRole("button", { name: "Remove Bob's phone" })).toBeInTheDocument();
    expect(screen.queryByRole("button", { name: "Remove owner browser" })).not.toBeInTheDocument();
    await user.click(screen.getByRole("button", { name: "Remove Bob's phone" }));
    await user.type(screen.getByLabelText(/Reason/), "lost the phone");
    await user.click(screen.getByRole("button", { name: "Continue" }));
    const dialog = await screen.findByRole("dialog", { name: "Confirm: Remove the user" });
    await user.click(within(dialog).getByRole("button", { name: "Confirm removal" }));
    expect(await screen.findByText(/Removed Bob's phone/)).toBeInTheDocument();
    const sends = server.sent("DELETE", "/v1/users/:id");
    expect(sends.map((s) => s.query.get("reason"))).toEqual(["lost the phone", "lost the phone"]);
    expect(sends[0]?.headers.get("X-Confirmation-Token")).toBeNull();
    expect(sends[1]?.headers.get("X-Confirmation-Token")).toBe("mcf_U");
  });

  it("shows roles and each SSO provider's group → role rules in order", async () => {
    owner()
      .on("GET", "/v1/roles", () =>
        json(200, {
          items: [
            { name: "owner", description: "everything", builtin: true, permissions: [{ object: "*", action: "*" }], created_at: "", updated_at: "" },
            { name: "labeler", description: "labels nodes", builtin: false, permissions: [{ object: "nodes", action: "write" }], created_at: "", updated_at: "2026-11-21T12:00:00Z" },
          ],
          assignable: [{ object: "nodes", action: "read" }, { object: "nodes", action: "write" }],
        }),
      )
      .on("GET", "/v1/auth/role-mappings", () =>
        json(200, {
          providers: [
            {
              name: "corp",
              display_name: "Corp SSO",
              issuer: "https://idp.example.test",
              groups_claim: "groups",
              rules: [
                { group: "ops-admins", role: "admin", scope: "" },
                { group: "eu-ops", role: "operator", scope: "region=eu" },
              ],
            },
          ],
        }),
      )
      .install();
    window.history.replaceState(null, "", "/roles");
    render(<App />);
    expect(await screen.findByText("labeler")).toBeInTheDocument();
    expect(screen.getByText("everything", { selector: "li" })).toBeInTheDocument();
    expect(screen.getByRole("button", { name: "Edit role labeler" })).toBeInTheDocument();
    expect(screen.queryByRole("button", { name: "Edit role owner" })).not.toBeInTheDocument();
    const rules = await screen.findByRole("table", { name: "Rules of Corp SSO, first match wins" });
    const rows = within(rules).getAllByRole("row").slice(1);
    expect(rows.map((r) => r.textContent)).toEqual(["1ops-adminsadminwhole fleet", "2eu-opsoperatorregion=eu"]);
    expect(screen.getByText("https://idp.example.test")).toBeInTheDocument();
  });

  it("creates an API token and shows its secret once", async () => {
    const user = userEvent.setup();
    const server = owner()
      .on("GET", "/v1/api-tokens", () => json(200, { items: [] }))
      .on("GET", "/v1/roles", () => json(200, { items: [{ name: "owner" }, { name: "admin" }, { name: "viewer" }], assignable: [] }))
      .on("POST", "/v1/api-tokens", () => json(201, { id: "t1", name: "ci", role: "admin", scope: "", expires_at: null, token: "mot_SECRET" }))
      .install();
    window.history.replaceState(null, "", "/tokens");
    render(<App />);
    expect(await screen.findByText("No API tokens yet.")).toBeInTheDocument();
    await user.type(screen.getByLabelText("Name"), "ci");
    await user.selectOptions(screen.getByLabelText("Role"), "admin");
    await user.click(screen.getByRole("button", { name: "Create token" }));
    expect(await screen.findByLabelText("Secret")).toHaveValue("mot_SECRET");
    expect(server.sent("POST", "/v1/api-tokens")[0]?.body).toEqual({ name: "ci", role: "admin", expires_in_days: 90, scope: null });
  });
});
