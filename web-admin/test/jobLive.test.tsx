// The live job view: events from the EventSource appear in order (once each), the status
// follows the state events, and the stream is closed at the final state.

import { act, render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";

import { App } from "../src/App";
import { FakeEventSource } from "./fakeEventSource";
import { FakeServer, JOB_ID, OWNER_PERMISSIONS, VIEWER_PERMISSIONS, apiError, job, json, me } from "./fakeServer";

function event(seq: number, kind: "state" | "step" | "log", fields: { status?: string; step?: string; message: string }) {
  return { seq, at: `2026-11-21T12:00:0${seq}Z`, kind, status: fields.status ?? null, step: fields.step ?? null, message: fields.message };
}

function serve(permissions = OWNER_PERMISSIONS, status = "running") {
  let current = job({ status });
  const server = new FakeServer()
    .on("GET", "/v1/me", () => json(200, me(permissions === OWNER_PERMISSIONS ? "owner" : "viewer", permissions)))
    .on("GET", "/v1/jobs/:id", () => json(200, current))
    .install();
  return {
    server,
    setJob(fields: Record<string, unknown>) {
      current = { ...current, ...fields };
    },
  };
}

describe("the live job view", () => {
  it("renders events from the stream and closes it on the final state", async () => {
    const { setJob } = serve();
    window.history.replaceState(null, "", `/jobs/${JOB_ID}`);
    render(<App />);
    expect(await screen.findByRole("heading", { level: 1, name: /Job: gateway action/ })).toBeInTheDocument();
    const source = FakeEventSource.latest();
    expect(source.url).toBe(`/v1/jobs/${JOB_ID}/events`);

    act(() => {
      source.open();
      source.emit("state", event(1, "state", { status: "queued", message: "queued by device:aa" }), 1);
      source.emit("state", event(2, "state", { status: "running", message: "agent started it" }), 2);
      source.emit("step", event(3, "step", { step: "verify", message: "waiting for /readyz" }), 3);
      source.emit("log", event(4, "log", { message: "gateway answered ready" }), 4);
      // A resumed stream may repeat an event; it is shown once.
      source.emit("log", event(4, "log", { message: "gateway answered ready" }), 4);
    });

    const log = screen.getByRole("log", { name: "Job events" });
    expect(within(log).getAllByRole("listitem")).toHaveLength(4);
    expect(within(log).getByText("waiting for /readyz")).toBeInTheDocument();
    expect(screen.getByTestId("job-status")).toHaveTextContent("running");
    expect(screen.getByRole("progressbar")).toBeInTheDocument();
    expect(screen.getByText(/verify \(in progress\)/)).toBeInTheDocument();
    expect(source.readyState).toBe(FakeEventSource.OPEN);

    setJob({ status: "succeeded", result: { verified: "ready" } });
    act(() => {
      source.emit("state", event(5, "state", { status: "succeeded", message: "verified ready" }), 5);
    });
    expect(screen.getByTestId("job-status")).toHaveTextContent("succeeded");
    expect(source.readyState).toBe(FakeEventSource.CLOSED);
    expect(screen.queryByRole("progressbar")).not.toBeInTheDocument();
    expect(screen.getByText(/its events are complete/)).toBeInTheDocument();
    await waitFor(() => expect(screen.getByText(/"verified": "ready"/)).toBeInTheDocument());
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(screen.queryByRole("button", { name: "Cancel job…" })).not.toBeInTheDocument();
  });

  it("cancels a running job and says the agent stops at a safe point (202)", async () => {
    const user = userEvent.setup();
    const { server } = serve();
    server.on("POST", "/v1/jobs/:id/cancel", () => json(202, job({ status: "running", cancel_requested_at: "2026-11-21T12:01:00Z" })));
    window.history.replaceState(null, "", `/jobs/${JOB_ID}`);
    render(<App />);
    await user.click(await screen.findByRole("button", { name: "Cancel job…" }));
    const dialog = screen.getByRole("dialog", { name: "Cancel the job" });
    await user.type(within(dialog).getByLabelText(/Reason/), "wrong host");
    await user.click(within(dialog).getByRole("button", { name: "Cancel job" }));
    expect(await screen.findByText(/the agent stops at its next safe point/)).toBeInTheDocument();
    expect(server.sent("POST", "/v1/jobs/:id/cancel")[0]?.body).toEqual({ reason: "wrong host" });
  });

  it("offers no cancel to a viewer and shows a dropped stream", async () => {
    serve(VIEWER_PERMISSIONS);
    window.history.replaceState(null, "", `/jobs/${JOB_ID}`);
    render(<App />);
    expect(await screen.findByTestId("job-status")).toHaveTextContent("running");
    expect(screen.queryByRole("button", { name: "Cancel job…" })).not.toBeInTheDocument();
    const source = FakeEventSource.latest();
    act(() => {
      source.readyState = FakeEventSource.CONNECTING;
      source.onerror?.(new Event("error"));
    });
    expect(screen.getByText(/reconnecting/)).toBeInTheDocument();
  });

  it("shows the error when the job cannot be loaded", async () => {
    new FakeServer()
      .on("GET", "/v1/me", () => json(200, me("owner", OWNER_PERMISSIONS)))
      .on("GET", "/v1/jobs/:id", () => apiError(404, "not_found", "no such job"))
      .install();
    window.history.replaceState(null, "", `/jobs/${JOB_ID}`);
    render(<App />);
    expect(await screen.findByRole("alert")).toHaveTextContent("no such job");
  });
});
