// What the signed-in role may not do is absent: a viewer sees no actions, no label editing and
// no navigation to owner pages; an owner sees them all.

import { render, screen, within } from "@testing-library/react";
import { describe, expect, it } from "vitest";

import { App } from "../src/App";
import { FakeServer, NODE_ID, OWNER_PERMISSIONS, VIEWER_PERMISSIONS, apiError, json, me, node } from "./fakeServer";

function serve(role: "owner" | "viewer", permissions: string[]) {
  return new FakeServer()
    .on("GET", "/v1/me", () => json(200, me(role, permissions)))
    .on("GET", "/v1/nodes/:id", () => json(200, node()))
    .on("GET", "/v1/nodes/:id/metrics/current", () => apiError(404, "no_metrics", "none yet"))
    .on("GET", "/v1/jobs", () => json(200, { items: [], next_cursor: null }))
    .on("GET", "/v1/enrollment-tokens", () => json(200, { items: [] }))
    .install();
}

describe("role gating", () => {
  it("shows a viewer no action buttons and no label editing on a node", async () => {
    serve("viewer", VIEWER_PERMISSIONS);
    window.history.replaceState(null, "", `/nodes/${NODE_ID}`);
    render(<App />);
    expect(await screen.findByRole("heading", { level: 1, name: "web-1" })).toBeInTheDocument();
    expect(await screen.findByRole("heading", { name: "Labels" })).toBeInTheDocument();
    for (const name of ["Start gateway", "Stop gateway", "Restart gateway", "Install gateway…", "Ping", "Revoke node…", "Edit labels"]) {
      expect(screen.queryByRole("button", { name })).not.toBeInTheDocument();
    }
    expect(screen.queryByRole("heading", { name: "Actions" })).not.toBeInTheDocument();
  });

  it("shows a viewer only the pages it may read", async () => {
    serve("viewer", VIEWER_PERMISSIONS);
    window.history.replaceState(null, "", "/enrollment");
    render(<App />);
    const nav = await screen.findByRole("navigation", { name: "Main" });
    const links = within(nav).getAllByRole("link").map((a) => a.textContent);
    expect(links).toEqual(["Fleet", "Jobs", "Enrollment"]);
    // It can list enrollment tokens but not create them.
    expect(await screen.findByText("No enrollment tokens yet.")).toBeInTheDocument();
    expect(screen.queryByRole("button", { name: "Create token" })).not.toBeInTheDocument();
  });

  it("tells a viewer who opens an owner page that it lacks the permission", async () => {
    serve("viewer", VIEWER_PERMISSIONS);
    window.history.replaceState(null, "", "/users");
    render(<App />);
    expect(await screen.findByText("You cannot see users.")).toBeInTheDocument();
    expect(screen.getByText("users:read")).toBeInTheDocument();
  });

  it("shows an owner every action and page", async () => {
    serve("owner", OWNER_PERMISSIONS);
    window.history.replaceState(null, "", `/nodes/${NODE_ID}`);
    render(<App />);
    for (const name of ["Start gateway", "Stop gateway", "Restart gateway", "Install gateway…", "Ping", "Revoke node…"]) {
      expect(await screen.findByRole("button", { name })).toBeEnabled();
    }
    expect(await screen.findByRole("button", { name: "Edit labels" })).toBeInTheDocument();
    const nav = screen.getByRole("navigation", { name: "Main" });
    expect(within(nav).getAllByRole("link")).toHaveLength(8);
  });

  it("disables actions on a revoked node", async () => {
    serve("owner", OWNER_PERMISSIONS).on("GET", "/v1/nodes/:id", () =>
      json(200, node({ status: "revoked", revoked_at: "2026-11-20T00:00:00Z" })),
    );
    window.history.replaceState(null, "", `/nodes/${NODE_ID}`);
    render(<App />);
    expect(await screen.findByRole("button", { name: "Restart gateway" })).toBeDisabled();
    expect(screen.getByRole("button", { name: "Revoke node…" })).toBeDisabled();
  });
});
