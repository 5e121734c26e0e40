// The destructive-operation flow: reason → 428 → what will happen → the identical request again
// with X-Confirmation-Token and the same Idempotency-Key → the job view.

import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";

import { App } from "../src/App";
import { FakeServer, JOB_ID, NODE_ID, OWNER_PERMISSIONS, apiError, job, json, me, node } from "./fakeServer";

function nodeServer() {
  return new FakeServer()
    .on("GET", "/v1/me", () => json(200, me("owner", OWNER_PERMISSIONS)))
    .on("GET", "/v1/nodes/:id", () => json(200, node()))
    .on("GET", "/v1/nodes/:id/moltbot/status", () =>
      json(200, {
        installed: true,
        running: true,
        version: "2026.9.1",
        service_manager: "supervisor",
        gateway_connected: true,
        crash_loop: false,
        restart_count_24h: 0,
        reported_at: "2026-11-21T12:00:00Z",
        age_seconds: 3,
      }),
    )
    .on("GET", "/v1/nodes/:id/metrics/current", () => apiError(404, "no_metrics", "the node has not reported metrics yet"))
    .on("GET", "/v1/nodes/:id/system/info", () =>
      json(200, { os: "linux", os_version: "12", arch: "x86_64", cpu_cores: 4, memory_bytes: 8e9, disk_free_bytes: 5e10, hostname: "web-1" }),
    )
    .on("GET", "/v1/jobs", () => json(200, { items: [], next_cursor: null }))
    .on("GET", "/v1/jobs/:id", () => json(200, job()))
    .install();
}

const REQUIRED = {
  code: "confirmation_required",
  message: "gateway.restart is destructive: repeat the same call with header X-Confirmation-Token within 5 minutes",
  confirmation_token: "mcf_TOKEN",
  expires_at: new Date(Date.now() + 5 * 60_000).toISOString(),
  action: "gateway.restart",
  target: NODE_ID,
};

describe("confirming a destructive action", () => {
  it("lists the parameters the server bound the token to, not the app's own copy", async () => {
    const user = userEvent.setup();
    nodeServer().sequence("POST", "/v1/nodes/:id/ops/action", [
      () =>
        json(428, { ...REQUIRED, parameters: { action: "restart", reason: "bound by the server", extra: { wave: 2 } } }),
    ]);
    window.history.replaceState(null, "", `/nodes/${NODE_ID}`);
    render(<App />);
    await user.click(await screen.findByRole("button", { name: "Restart gateway" }));
    const dialog = screen.getByRole("dialog", { name: "Restart the gateway" });
    await user.type(within(dialog).getByLabelText(/Reason/), "typed by the operator");
    await user.click(within(dialog).getByRole("button", { name: "Continue" }));
    const confirm = await screen.findByRole("dialog", { name: "Confirm: Restart the gateway" });
    expect(within(confirm).getByText("Parameters the confirmation is bound to")).toBeInTheDocument();
    const list = within(confirm).getByTestId("confirm-parameters");
    expect(within(list).getByText("bound by the server")).toBeInTheDocument();
    expect(within(list).getByText("extra.wave")).toBeInTheDocument();
    expect(within(list).queryByText("typed by the operator")).not.toBeInTheDocument();
  });

  it("shows what the 428 says, then resends the identical request with the token and the same Idempotency-Key", async () => {
    const user = userEvent.setup();
    const server = nodeServer().sequence("POST", "/v1/nodes/:id/ops/action", [
      () => json(428, REQUIRED, { "Cache-Control": "no-store" }),
      () => json(200, { ok: true, message: "restart accepted", audit_event_id: "e1", job_id: JOB_ID }),
    ]);
    window.history.replaceState(null, "", `/nodes/${NODE_ID}`);
    render(<App />);

    await user.click(await screen.findByRole("button", { name: "Restart gateway" }));
    const dialog = screen.getByRole("dialog", { name: "Restart the gateway" });
    // The reason field has focus when the dialog opens.
    const reason = within(dialog).getByLabelText(/Reason/);
    expect(reason).toHaveFocus();
    await user.type(reason, "picked up the new config");
    await user.click(within(dialog).getByRole("button", { name: "Continue" }));

    const confirm = await screen.findByRole("dialog", { name: "Confirm: Restart the gateway" });
    expect(within(confirm).getByText("gateway.restart")).toBeInTheDocument();
    expect(within(confirm).getByText(NODE_ID)).toBeInTheDocument();
    expect(within(confirm).getByText("restart")).toBeInTheDocument();
    expect(within(confirm).getByText("picked up the new config")).toBeInTheDocument();
    expect(within(confirm).getByText(/Nothing has changed yet/)).toBeInTheDocument();

    const [first] = server.sent("POST", "/v1/nodes/:id/ops/action");
    expect(first?.headers.get("X-Confirmation-Token")).toBeNull();
    expect(first?.body).toEqual({ action: "restart", reason: "picked up the new config" });
    const key = first?.headers.get("Idempotency-Key");
    expect(key).toMatch(/^[0-9a-f-]{36}$/);

    await user.click(within(confirm).getByRole("button", { name: "Confirm restart" }));
    await waitFor(() => expect(window.location.pathname).toBe(`/jobs/${JOB_ID}`));

    const sends = server.sent("POST", "/v1/nodes/:id/ops/action");
    expect(sends).toHaveLength(2);
    const second = sends[1];
    expect(second?.headers.get("X-Confirmation-Token")).toBe("mcf_TOKEN");
    expect(second?.headers.get("Idempotency-Key")).toBe(key);
    expect(second?.rawBody).toBe(first?.rawBody);
    expect(second?.path).toBe(`/v1/nodes/${NODE_ID}/ops/action`);
  });

  it("asks for a reason before sending anything", async () => {
    const user = userEvent.setup();
    const server = nodeServer();
    window.history.replaceState(null, "", `/nodes/${NODE_ID}`);
    render(<App />);
    await user.click(await screen.findByRole("button", { name: "Stop gateway" }));
    const dialog = screen.getByRole("dialog", { name: "Stop the gateway" });
    await user.click(within(dialog).getByRole("button", { name: "Continue" }));
    expect(within(dialog).getByRole("alert")).toHaveTextContent(/Say why/);
    expect(server.sent("POST", "/v1/nodes/:id/ops/action")).toHaveLength(0);
  });

  it("shows the server's refusal of the confirmation and sends nothing more", async () => {
    const user = userEvent.setup();
    const server = nodeServer().sequence("POST", "/v1/nodes/:id/revoke", [
      () => json(428, { ...REQUIRED, action: "node.revoke" }),
      () => apiError(403, "confirmation_invalid", "the confirmation token is unknown, used, expired, or for another user"),
    ]);
    window.history.replaceState(null, "", `/nodes/${NODE_ID}`);
    render(<App />);
    await user.click(await screen.findByRole("button", { name: "Revoke node…" }));
    await user.type(screen.getByLabelText(/Reason/), "decommissioned");
    await user.click(screen.getByRole("button", { name: "Continue" }));
    const confirm = await screen.findByRole("dialog", { name: "Confirm: Revoke the node" });
    expect(within(confirm).getByText("node.revoke")).toBeInTheDocument();
    await user.click(within(confirm).getByRole("button", { name: "Confirm revoke" }));
    expect(await within(confirm).findByRole("alert")).toHaveTextContent(/confirmation token is unknown/);
    const sends = server.sent("POST", "/v1/nodes/:id/revoke");
    expect(sends).toHaveLength(2);
    expect(sends[1]?.body).toEqual({ reason: "decommissioned" });
  });

  it("closes on Escape and gives focus back to the button that opened it", async () => {
    const user = userEvent.setup();
    nodeServer();
    window.history.replaceState(null, "", `/nodes/${NODE_ID}`);
    render(<App />);
    const opener = await screen.findByRole("button", { name: "Install gateway…" });
    await user.click(opener);
    expect(screen.getByRole("dialog", { name: "Install the gateway" })).toBeInTheDocument();
    // Tab stays inside the dialog.
    for (let i = 0; i < 8; i++) {
      await user.tab();
      expect(screen.getByRole("dialog").contains(document.activeElement)).toBe(true);
    }
    await user.keyboard("{Escape}");
    expect(screen.queryByRole("dialog")).not.toBeInTheDocument();
    expect(opener).toHaveFocus();
  });
});
