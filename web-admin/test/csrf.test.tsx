// Writes carry the CSRF header from the readable cookie; reads do not. A 401 or a 403
// `csrf_failed` ends the session in the UI.

import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";

import { api, onSessionEnded, unwrap } from "../src/api/client";
import { App } from "../src/App";
import { FakeServer, NODE_ID, OWNER_PERMISSIONS, apiError, json, me, node } from "./fakeServer";

describe("the CSRF header", () => {
  it("is sent on writes with the moltops_csrf cookie's value, and not on reads", async () => {
    document.cookie = "moltops_csrf=csrf-value-123; path=/";
    const server = new FakeServer()
      .on("GET", "/v1/nodes/:id", () => json(200, node()))
      .on("PATCH", "/v1/nodes/:id", () => json(200, node({ labels: { env: "staging" } })))
      .on("POST", "/v1/auth/logout", () => json(204, null))
      .install();

    await unwrap(api.GET("/v1/nodes/{node_id}", { params: { path: { node_id: NODE_ID } } }));
    await unwrap(api.PATCH("/v1/nodes/{node_id}", { params: { path: { node_id: NODE_ID } }, body: { labels: { env: "staging" } } }));
    await unwrap(api.POST("/v1/auth/logout"));

    expect(server.sent("GET", "/v1/nodes/:id")[0]?.headers.get("X-CSRF-Token")).toBeNull();
    expect(server.sent("PATCH", "/v1/nodes/:id")[0]?.headers.get("X-CSRF-Token")).toBe("csrf-value-123");
    expect(server.sent("POST", "/v1/auth/logout")[0]?.headers.get("X-CSRF-Token")).toBe("csrf-value-123");
  });

  it("is sent by the label editor, and a 403 csrf_failed shows the sign-in screen", async () => {
    document.cookie = "moltops_csrf=abc; path=/";
    const user = userEvent.setup();
    const server = new FakeServer()
      .on("GET", "/v1/me", () => json(200, me("owner", OWNER_PERMISSIONS)))
      .on("GET", "/v1/nodes/:id", () => json(200, node()))
      .on("GET", "/v1/jobs", () => json(200, { items: [], next_cursor: null }))
      .on("GET", "/v1/auth/providers", () => json(200, { providers: [] }))
      .on("PATCH", "/v1/nodes/:id", () =>
        apiError(403, "csrf_failed", "a write with the session cookie needs the X-CSRF-Token header"),
      )
      .install();
    window.history.replaceState(null, "", `/nodes/${NODE_ID}`);
    render(<App />);
    await user.click(await screen.findByRole("button", { name: "Edit labels" }));
    const editor = screen.getByLabelText(/one key=value per line/);
    await user.clear(editor);
    await user.type(editor, "env=staging");
    await user.click(screen.getByRole("button", { name: "Save labels" }));

    expect(await screen.findByRole("heading", { level: 1, name: "Sign in to moltops" })).toBeInTheDocument();
    expect(screen.getByText(/security cookie is missing/)).toBeInTheDocument();
    const patch = server.sent("PATCH", "/v1/nodes/:id")[0];
    expect(patch?.headers.get("X-CSRF-Token")).toBe("abc");
    expect(patch?.body).toEqual({ labels: { env: "staging" } });
    expect(window.location.pathname).toBe("/signin");
  });

  it("reports an ended session (401) to listeners", async () => {
    new FakeServer().on("GET", "/v1/fleet/summary", () => apiError(401, "unauthorized", "session expired")).install();
    const listener = vi.fn();
    const off = onSessionEnded(listener);
    await expect(unwrap(api.GET("/v1/fleet/summary"))).rejects.toMatchObject({ status: 401, message: "session expired" });
    off();
    expect(listener).toHaveBeenCalledWith("expired");
  });
});
