// Signing in: providers from the server, device pairing that polls until approved (pending →
// success), the setup code at first boot, and a failed pairing.

import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";

import { App } from "../src/App";
import { SignInPage } from "../src/pages/SignIn";
import { FakeServer, OWNER_PERMISSIONS, apiError, json, me } from "./fakeServer";

const STARTED = { pairing_code: "7K3M-Q9XD", pairing_secret: "mop_SECRET", expires_in_seconds: 600 }; // pragma: allowlist secret

describe("pairing this browser", () => {
  it("shows the code, polls while pending, and signs in once approved", async () => {
    const user = userEvent.setup();
    const server = new FakeServer()
      .on("GET", "/v1/auth/providers", () => json(200, { providers: [] }))
      .on("POST", "/pair/start", () => json(200, STARTED))
      .sequence("POST", "/pair/confirm", [
        () => apiError(401, "pairing_pending", "the pairing has not been approved yet"),
        () => apiError(401, "pairing_pending", "the pairing has not been approved yet"),
        () => json(200, { session: "cookie", expires_in_seconds: 43_200 }),
      ])
      .install();
    const onSignedIn = vi.fn(async () => undefined);
    render(<SignInPage notice={null} onSignedIn={onSignedIn} pollMs={20} />);

    const name = screen.getByLabelText("Device name (shown to the approver)");
    await user.clear(name);
    await user.type(name, "Alice's laptop");
    await user.click(screen.getByRole("button", { name: "Start pairing" }));

    expect(await screen.findByTestId("pairing-code")).toHaveTextContent("7K3M-Q9XD");
    expect(screen.getByText(/Ask an owner or admin to approve this code/)).toBeInTheDocument();
    expect(screen.getByRole("progressbar", { name: "Waiting for approval" })).toBeInTheDocument();
    expect(server.sent("POST", "/pair/start")[0]?.body).toEqual({ device_name: "Alice's laptop" });

    await waitFor(() => expect(onSignedIn).toHaveBeenCalledTimes(1));
    const confirms = server.sent("POST", "/pair/confirm");
    expect(confirms).toHaveLength(3);
    expect(confirms[0]?.body).toEqual({
      pairing_code: "7K3M-Q9XD",
      pairing_secret: "mop_SECRET", // pragma: allowlist secret
      device_name: "Alice's laptop",
      session: "cookie",
    });
  });

  it("says so when the code is refused or expired, and offers to start again", async () => {
    const user = userEvent.setup();
    new FakeServer()
      .on("GET", "/v1/auth/providers", () => json(200, { providers: [] }))
      .on("POST", "/pair/start", () => json(200, STARTED))
      .on("POST", "/pair/confirm", () => apiError(401, "unauthorized", "unknown or expired pairing code"))
      .install();
    render(<SignInPage notice={null} onSignedIn={vi.fn(async () => undefined)} pollMs={20} />);
    await user.click(screen.getByRole("button", { name: "Start pairing" }));
    const alert = await screen.findByRole("alert");
    expect(alert).toHaveTextContent("unknown or expired pairing code");
    expect(within(alert).getByRole("button", { name: "Start again" })).toBeInTheDocument();
  });

  it("waits as long as Retry-After says when rate limited", async () => {
    const user = userEvent.setup();
    new FakeServer()
      .on("GET", "/v1/auth/providers", () => json(200, { providers: [] }))
      .on("POST", "/pair/start", () => json(200, STARTED))
      .on("POST", "/pair/confirm", () => json(429, { code: "rate_limited", message: "too many attempts; slow down" }, { "Retry-After": "30" }))
      .install();
    render(<SignInPage notice={null} onSignedIn={vi.fn(async () => undefined)} pollMs={20} />);
    await user.click(screen.getByRole("button", { name: "Start pairing" }));
    expect(await screen.findByText(/checking again in 30 s/)).toBeInTheDocument();
  });
});

describe("the sign-in screen", () => {
  it("lists the SSO providers as links that start the browser sign-in", async () => {
    new FakeServer()
      .on("GET", "/v1/me", () => apiError(401, "unauthorized", "no session"))
      .on("GET", "/v1/auth/providers", () =>
        json(200, { providers: [{ name: "corp", display_name: "Corp SSO", login_url: "/v1/auth/oidc/corp/login" }] }),
      )
      .install();
    render(<App />);
    const link = await screen.findByRole("link", { name: "Sign in with Corp SSO" });
    expect(link).toHaveAttribute("href", "/v1/auth/oidc/corp/login");
    expect(window.location.pathname).toBe("/signin");
  });

  it("signs in with the console setup code (no secret) and loads the signed-in app", async () => {
    const user = userEvent.setup();
    let signedIn = false;
    const server = new FakeServer()
      .on("GET", "/v1/me", () => (signedIn ? json(200, me("owner", OWNER_PERMISSIONS)) : apiError(401, "unauthorized", "no session")))
      .on("GET", "/v1/auth/providers", () => json(200, { providers: [] }))
      .on("POST", "/pair/confirm", () => {
        signedIn = true;
        return json(200, { session: "cookie", expires_in_seconds: 43_200 });
      })
      .on("GET", "/v1/fleet/summary", () => apiError(500, "internal", "later"))
      .on("GET", "/v1/nodes", () => json(200, { items: [], next_cursor: null }))
      .install();
    render(<App />);
    expect(await screen.findByText("No single sign-on provider is configured.")).toBeInTheDocument();
    await user.type(screen.getByLabelText("Setup code"), "ABCD-EFGH");
    await user.clear(screen.getByLabelText("Name for this browser"));
    await user.type(screen.getByLabelText("Name for this browser"), "ops console");
    await user.click(screen.getByRole("button", { name: "Sign in with setup code" }));

    expect(await screen.findByRole("heading", { level: 1, name: "Fleet" })).toBeInTheDocument();
    expect(window.location.pathname).toBe("/");
    expect(server.sent("POST", "/pair/confirm")[0]?.body).toEqual({
      pairing_code: "ABCD-EFGH",
      device_name: "ops console",
      session: "cookie",
    });
    expect(screen.getByTestId("whoami")).toHaveTextContent("owner browser");
  });

  it("explains a wrong setup code", async () => {
    const user = userEvent.setup();
    new FakeServer()
      .on("GET", "/v1/me", () => apiError(401, "unauthorized", "no session"))
      .on("GET", "/v1/auth/providers", () => json(200, { providers: [] }))
      .on("POST", "/pair/confirm", () => apiError(401, "unauthorized", "unknown or expired pairing code"))
      .install();
    render(<App />);
    await user.type(await screen.findByLabelText("Setup code"), "WRONG");
    await user.click(screen.getByRole("button", { name: "Sign in with setup code" }));
    expect(await screen.findByRole("alert")).toHaveTextContent("That setup code is not valid");
  });

  it("signs out through the API and returns to the sign-in screen", async () => {
    const user = userEvent.setup();
    document.cookie = "moltops_csrf=zzz; path=/";
    const server = new FakeServer()
      .on("GET", "/v1/me", () => json(200, me("owner", OWNER_PERMISSIONS)))
      .on("GET", "/v1/fleet/summary", () => apiError(500, "internal", "later"))
      .on("GET", "/v1/nodes", () => json(200, { items: [], next_cursor: null }))
      .on("GET", "/v1/auth/providers", () => json(200, { providers: [] }))
      .on("POST", "/v1/auth/logout", () => json(204, null))
      .install();
    render(<App />);
    await user.click(await screen.findByRole("button", { name: "Sign out" }));
    expect(await screen.findByText("You are signed out.")).toBeInTheDocument();
    expect(server.sent("POST", "/v1/auth/logout")[0]?.headers.get("X-CSRF-Token")).toBe("zzz");
  });
});
