// Pure helpers: label parsing, ages, sizes, Idempotency-Key fallback.

import { describe, expect, it, vi } from "vitest";

import { newIdempotencyKey } from "../src/api/client";
import { formatAge, formatBytes, labelsToText, parseLabels } from "../src/lib/format";

function check(input: string, expected: ReturnType<typeof parseLabels>) {
  expect(parseLabels(input)).toEqual(expected);
}

describe("parseLabels", () => {
  it("reads key=value pairs separated by commas or lines", () => {
    check("env=prod, tier=web\ncanary", { labels: { env: "prod", tier: "web", canary: "" } });
    check("", { labels: {} });
    check("=x", { error: '"=x" has no key' });
    check("a=1,a=2", { error: 'label "a" is given twice' });
  });

  it("round-trips through labelsToText", () => {
    expect(labelsToText({ env: "prod", canary: "" })).toBe("env=prod, canary");
  });
});

describe("formatting", () => {
  it("formats ages and sizes", () => {
    const now = Date.parse("2026-11-21T12:00:00Z");
    expect(formatAge("2026-11-21T11:59:48Z", now)).toBe("12 s ago");
    expect(formatAge("2026-11-21T09:00:00Z", now)).toBe("3 h ago");
    expect(formatAge(null, now)).toBe("never");
    expect(formatBytes(1536)).toBe("1.5 KiB");
  });
});

describe("newIdempotencyKey", () => {
  it("falls back to getRandomValues where randomUUID is missing (plain HTTP)", () => {
    vi.stubGlobal("crypto", { getRandomValues: (a: Uint8Array) => a.fill(0xab) });
    expect(newIdempotencyKey()).toBe("abababab-abab-4bab-abab-abababababab");
  });
});
