// A small inline SVG line of recent samples (no chart library), described in words for
// screen readers.

export interface SparklineProps {
  values: number[];
  label: string;
  /** Lower and upper bound of the y axis; the data's own range if absent. */
  min?: number;
  max?: number;
  format?: (value: number) => string;
}

const WIDTH = 120;
const HEIGHT = 32;

export function Sparkline({ values, label, min, max, format = (v) => v.toFixed(1) }: SparklineProps) {
  if (values.length === 0) return null;
  const lo = min ?? Math.min(...values);
  const hi = max ?? Math.max(...values);
  const span = hi - lo || 1;
  const step = values.length > 1 ? WIDTH / (values.length - 1) : 0;
  const points = values
    .map((v, i) => {
      const x = values.length > 1 ? i * step : WIDTH / 2;
      const y = HEIGHT - 2 - ((v - lo) / span) * (HEIGHT - 4);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
  const description = `${label}: ${values.length} sample${values.length === 1 ? "" : "s"}, lowest ${format(
    Math.min(...values),
  )}, highest ${format(Math.max(...values))}, latest ${format(values[values.length - 1] as number)}`;
  return (
    <svg
      className="sparkline"
      viewBox={`0 0 ${WIDTH} ${HEIGHT}`}
      width={WIDTH}
      height={HEIGHT}
      role="img"
      aria-label={description}
    >
      <polyline points={points} fill="none" stroke="currentColor" strokeWidth="1.5" />
    </svg>
  );
}
