// The fleet table at scale: only the rows in view are in the DOM for 10,000 items; pages of
// nodes load by cursor as the table scrolls; summary counts, filters, empty and error states.

import { fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";

import { App } from "../src/App";
import { VirtualTable } from "../src/components/VirtualTable";
import { FakeServer, OWNER_PERMISSIONS, apiError, json, me, node } from "./fakeServer";

interface Item {
  id: string;
  name: string;
}

const ITEMS: Item[] = Array.from({ length: 10_000 }, (_, i) => ({ id: `id-${i}`, name: `item ${i}` }));

describe("the windowed table", () => {
  it("renders only the visible rows of 10,000, and others after scrolling", () => {
    const ranges: Array<[number, number]> = [];
    render(
      <VirtualTable
        label="Things"
        items={ITEMS}
        columns={[{ key: "name", header: "Name", render: (item: Item) => item.name }]}
        rowKey={(item) => item.id}
        rowHeight={40}
        overscan={5}
        fallbackHeight={400}
        onRangeChange={(start, end) => ranges.push([start, end])}
      />,
    );
    const table = screen.getByRole("table", { name: "Things" });
    expect(table).toHaveAttribute("aria-rowcount", "10001");
    // 400 px / 40 px = 10 rows in view, +1 partial, +5 below: 16 body rows and the header row.
    const rows = within(table).getAllByRole("row");
    expect(rows.length).toBeLessThanOrEqual(1 + 16);
    expect(rows.length).toBeGreaterThan(10);
    expect(screen.getByText("item 0")).toBeInTheDocument();
    expect(screen.queryByText("item 100")).not.toBeInTheDocument();
    expect(ranges.at(-1)).toEqual([0, 11]);

    const scroller = table.querySelector(".vt-scroll") as HTMLElement;
    scroller.scrollTop = 40 * 5_000;
    fireEvent.scroll(scroller);
    expect(screen.getByText("item 5000")).toBeInTheDocument();
    expect(screen.queryByText("item 0")).not.toBeInTheDocument();
    expect(within(table).getAllByRole("row").length).toBeLessThanOrEqual(1 + 21);
    const row = screen.getByText("item 5000").closest("[role=row]");
    expect(row).toHaveAttribute("aria-rowindex", "5002");
    expect(ranges.at(-1)).toEqual([5_000, 5_011]);
  });
});

const SUMMARY = {
  total: 10_000,
  online: 9_000,
  offline: 900,
  revoked: 100,
  agent_versions: { "0.1.0": 9_900 },
  gateway_versions: { "2026.9.1": 9_000, none: 900 },
  gateways: { installed: 9_000, running: 8_990, ready: 8_980, crash_loop: 2 },
};

function page(start: number, count: number) {
  return Array.from({ length: count }, (_, i) =>
    node({ id: `00000000-0000-4000-8000-${String(start + i).padStart(12, "0")}`, hostname: `host-${start + i}` }),
  );
}

function serveFleet() {
  return new FakeServer()
    .on("GET", "/v1/me", () => json(200, me("owner", OWNER_PERMISSIONS)))
    .on("GET", "/v1/fleet/summary", () => json(200, SUMMARY))
    .on("GET", "/v1/nodes", (request) => {
      const cursor = request.query.get("cursor");
      const start = cursor === null ? 0 : Number(cursor);
      const limit = Number(request.query.get("limit"));
      const next = start + limit < 10_000 ? String(start + limit) : null;
      return json(200, { items: page(start, limit), next_cursor: next });
    })
    .install();
}

describe("the fleet overview", () => {
  it("shows counts and loads the next page by cursor when the table nears the end", async () => {
    const server = serveFleet();
    render(<App />);
    const counts = await screen.findByTestId("fleet-counts");
    expect(within(counts).getByText("Nodes").nextElementSibling).toHaveTextContent("10,000");
    expect(within(counts).getByText("Online").nextElementSibling).toHaveTextContent("9,000");
    expect(screen.getByRole("table", { name: "Gateway versions" })).toHaveTextContent("2026.9.1");
    expect(within(counts).getByText("Crash loops").nextElementSibling).toHaveTextContent("2");
    expect(await screen.findByRole("link", { name: "host-0" })).toHaveAttribute("href", "/nodes/00000000-0000-4000-8000-000000000000");
    expect(screen.getByRole("table", { name: "Nodes" })).toHaveAttribute("aria-rowcount", "10001");
    const first = server.sent("GET", "/v1/nodes");
    expect(first).toHaveLength(1);
    expect(first[0]?.query.get("limit")).toBe("200");
    expect(first[0]?.query.has("cursor")).toBe(false);

    const scroller = screen.getByRole("table", { name: "Nodes" }).querySelector(".vt-scroll") as HTMLElement;
    scroller.scrollTop = 44 * 180;
    fireEvent.scroll(scroller);
    await waitFor(() => expect(server.sent("GET", "/v1/nodes").some((r) => r.query.get("cursor") === "200")).toBe(true));
    scroller.scrollTop = 44 * 300;
    fireEvent.scroll(scroller);
    expect(await screen.findByRole("link", { name: "host-300" })).toBeInTheDocument();
    expect(screen.queryByRole("link", { name: "host-0" })).not.toBeInTheDocument();
  });

  it("sends the filters to the server and keeps them in the URL", async () => {
    const user = userEvent.setup();
    const server = serveFleet();
    render(<App />);
    await screen.findByRole("link", { name: "host-0" });
    await user.type(screen.getByLabelText("Label selector"), "env=prod,tier!=db");
    await user.click(screen.getByRole("button", { name: "Apply filters" }));
    await user.selectOptions(screen.getByLabelText("Status"), "offline");
    await waitFor(() => {
      const last = server.sent("GET", "/v1/nodes").at(-1);
      expect(last?.query.get("selector")).toBe("env=prod,tier!=db");
      expect(last?.query.get("status")).toBe("offline");
    });
    expect(window.location.search).toBe("?selector=env%3Dprod%2Ctier%21%3Ddb&status=offline");
  });

  it("shows an empty state when there are no nodes", async () => {
    new FakeServer()
      .on("GET", "/v1/me", () => json(200, me("owner", OWNER_PERMISSIONS)))
      .on("GET", "/v1/fleet/summary", () => json(200, { ...SUMMARY, total: 0, online: 0, offline: 0, revoked: 0, agent_versions: {}, gateway_versions: {} }))
      .on("GET", "/v1/nodes", () => json(200, { items: [], next_cursor: null }))
      .install();
    render(<App />);
    expect(await screen.findByText("No nodes yet.")).toBeInTheDocument();
    expect(screen.getByRole("link", { name: "Create an enrollment token" })).toHaveAttribute("href", "/enrollment");
  });

  it("shows the server's error and retries on request", async () => {
    const user = userEvent.setup();
    const server = new FakeServer()
      .on("GET", "/v1/me", () => json(200, me("owner", OWNER_PERMISSIONS)))
      .on("GET", "/v1/fleet/summary", () => json(200, SUMMARY))
      .sequence("GET", "/v1/nodes", [
        () => apiError(500, "internal", "internal error (incident 42)"),
        () => json(200, { items: page(0, 3), next_cursor: null }),
      ])
      .install();
    render(<App />);
    const alert = await screen.findByRole("alert");
    expect(alert).toHaveTextContent("Could not load the nodes.");
    expect(alert).toHaveTextContent("internal error (incident 42)");
    await user.click(within(alert).getByRole("button", { name: "Try again" }));
    expect(await screen.findByRole("link", { name: "host-2" })).toBeInTheDocument();
    expect(server.sent("GET", "/v1/nodes")).toHaveLength(2);
  });

  it("shows each listed node's gateway version and health from the list itself", async () => {
    const server = new FakeServer()
      .on("GET", "/v1/me", () => json(200, me("owner", OWNER_PERMISSIONS)))
      .on("GET", "/v1/fleet/summary", () => json(200, SUMMARY))
      .on("GET", "/v1/nodes", () =>
        json(200, {
          items: [
            node({
              id: "00000000-0000-4000-8000-000000000000",
              hostname: "host-0",
              gateway: { installed: true, running: true, ready: false, version: "2026.9.1", crash_loop: true },
            }),
            node({
              id: "00000000-0000-4000-8000-000000000001",
              hostname: "host-1",
              gateway: { installed: true, running: true, ready: false, version: "2026.9.2", crash_loop: false },
            }),
            node({ id: "00000000-0000-4000-8000-000000000002", hostname: "host-2", gateway: null }),
          ],
          next_cursor: null,
        }),
      )
      .install();
    render(<App />);
    const rowOf = async (name: string) =>
      (await screen.findByRole("link", { name })).closest("[role=row]") as HTMLElement;
    const looping = await rowOf("host-0");
    expect(within(looping).getByText("crash loop")).toBeInTheDocument();
    expect(within(looping).getByText("2026.9.1")).toBeInTheDocument();
    expect(within(await rowOf("host-1")).getByText("running, not ready")).toBeInTheDocument();
    expect(within(await rowOf("host-2")).getByText("unknown")).toBeInTheDocument();
    // One request per page: no per-row status reads.
    expect(server.sent("GET", "/v1/nodes/:id/moltbot/status")).toHaveLength(0);
  });
});
