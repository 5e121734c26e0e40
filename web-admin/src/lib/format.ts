// Formatting for people: times, ages, sizes, labels.

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export function formatTime(iso: string | null | undefined): string {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : dateTime.format(date);
}

/** "4 s", "3 min", "2 h", "5 d". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86_400)} d`;
}

/** "12 s ago", or "never" for null. */
export function formatAge(iso: string | null | undefined, now: number): string {
  if (!iso) return "never";
  const then = new Date(iso).getTime();
  if (Number.isNaN(then)) return iso;
  const seconds = (now - then) / 1000;
  if (seconds < 0) return "just now";
  return `${formatDuration(seconds)} ago`;
}

export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatPercent(value: number): string {
  return `${value.toFixed(1)} %`;
}

export function formatCount(value: number): string {
  return value.toLocaleString();
}

/** `env=prod, tier=web`. */
export function labelsToText(labels: Record<string, string>): string {
  return Object.entries(labels)
    .map(([k, v]) => (v === "" ? k : `${k}=${v}`))
    .join(", ");
}

/**
 * Parses `key=value` pairs separated by commas or new lines; an entry without `=` is a label
 * with an empty value. Returns the labels or the first problem.
 */
export function parseLabels(text: string): { labels: Record<string, string> } | { error: string } {
  const labels: Record<string, string> = {};
  for (const raw of text.split(/[,\n]/)) {
    const entry = raw.trim();
    if (entry === "") continue;
    const eq = entry.indexOf("=");
    const key = (eq === -1 ? entry : entry.slice(0, eq)).trim();
    const value = eq === -1 ? "" : entry.slice(eq + 1).trim();
    if (key === "") return { error: `"${entry}" has no key` };
    if (key in labels) return { error: `label "${key}" is given twice` };
    labels[key] = value;
  }
  return { labels };
}

/**
 * A short, recognisable form of an id. The server's ids are UUIDv7, whose first characters are
 * a timestamp shared by ids made together, so the random tail tells them apart.
 */
export function shortId(id: string): string {
  const hex = id.replace(/-/g, "");
  return hex.length > 8 ? hex.slice(-8) : id;
}

/** One row of a flattened parameter object: a dotted path and its value as text, or null for "none". */
export type ParameterRow = [name: string, value: string | null];

/**
 * Flattens request parameters into readable rows, in the object's own key order: nested keys
 * become dotted paths (`parameters.action`), array items get their index (`hosts[0]`), a list of
 * plain values becomes one comma-separated row, and empty values (null, "", [], {}) read as
 * none (null) rather than disappearing, because the server binds them too.
 */
export function flattenParameters(parameters: Record<string, unknown>): ParameterRow[] {
  const rows: ParameterRow[] = [];
  const visit = (name: string, value: unknown) => {
    if (value === null || value === undefined || value === "") {
      rows.push([name, null]);
    } else if (Array.isArray(value)) {
      if (value.length === 0) rows.push([name, null]);
      else if (value.every((item) => item === null || typeof item !== "object")) {
        rows.push([name, value.map((item) => (item === null ? "none" : String(item))).join(", ")]);
      } else value.forEach((item, index) => visit(`${name}[${index}]`, item));
    } else if (typeof value === "object") {
      const entries = Object.entries(value as Record<string, unknown>);
      if (entries.length === 0) rows.push([name, null]);
      else entries.forEach(([key, inner]) => visit(`${name}.${key}`, inner));
    } else {
      rows.push([name, String(value)]);
    }
  };
  Object.entries(parameters).forEach(([key, value]) => visit(key, value));
  return rows;
}
