// A windowed table: only the rows in view (plus a few either side) are in the DOM, so ten
// thousand nodes scroll as smoothly as ten. It keeps ARIA table semantics (role table, rows with
// aria-rowindex, aria-rowcount) so screen readers and tests see an ordinary table.

import { useEffect, useLayoutEffect, useRef, useState, type ReactNode } from "react";

export interface Column<T> {
  key: string;
  header: string;
  render: (item: T) => ReactNode;
}

export interface VirtualTableProps<T> {
  label: string;
  items: readonly T[];
  columns: readonly Column<T>[];
  rowKey: (item: T) => string;
  /** Height of one row in pixels (CSS keeps rows at this height). */
  rowHeight?: number;
  /** Rows rendered beyond each edge of the view. */
  overscan?: number;
  /** Used when the scroll box has no measurable height (tests, hidden tabs). */
  fallbackHeight?: number;
  /** Rows in total when known (for aria-rowcount); else the loaded rows. */
  totalRows?: number;
  /** Called with the visible index range [start, end) whenever it changes. */
  onRangeChange?: (start: number, end: number) => void;
  /** Shown under the table, e.g. "Loading more…". */
  footer?: ReactNode;
  /** Extra attributes for each row, e.g. a test id. */
  rowProps?: (item: T) => Record<string, string>;
  /** CSS class that sets the grid columns. */
  className?: string;
}

export function VirtualTable<T>({
  label,
  items,
  columns,
  rowKey,
  rowHeight = 44,
  overscan = 6,
  fallbackHeight = 600,
  totalRows,
  onRangeChange,
  footer,
  rowProps,
  className = "",
}: VirtualTableProps<T>) {
  const scrollRef = useRef<HTMLDivElement>(null);
  const [scrollTop, setScrollTop] = useState(0);
  const [viewHeight, setViewHeight] = useState(fallbackHeight);

  useLayoutEffect(() => {
    const el = scrollRef.current;
    if (!el) return;
    const measure = () => setViewHeight(el.clientHeight > 0 ? el.clientHeight : fallbackHeight);
    measure();
    if (typeof ResizeObserver === "undefined") return;
    const observer = new ResizeObserver(measure);
    observer.observe(el);
    return () => observer.disconnect();
  }, [fallbackHeight]);

  const count = items.length;
  const firstVisible = Math.min(Math.floor(scrollTop / rowHeight), Math.max(0, count - 1));
  const visibleCount = Math.ceil(viewHeight / rowHeight) + 1;
  const start = Math.max(0, firstVisible - overscan);
  const end = Math.min(count, firstVisible + visibleCount + overscan);
  const lastVisible = Math.min(count, firstVisible + visibleCount);

  const rangeRef = useRef(onRangeChange);
  rangeRef.current = onRangeChange;
  useEffect(() => {
    rangeRef.current?.(count === 0 ? 0 : firstVisible, lastVisible);
  }, [firstVisible, lastVisible, count]);

  const rows: ReactNode[] = [];
  for (let index = start; index < end; index++) {
    const item = items[index] as T;
    rows.push(
      <div
        key={rowKey(item)}
        role="row"
        aria-rowindex={index + 2}
        className="vt-row"
        style={{ transform: `translateY(${index * rowHeight}px)`, height: rowHeight }}
        {...rowProps?.(item)}
      >
        {columns.map((column) => (
          <div key={column.key} role="cell" className={`vt-cell vt-cell-${column.key}`}>
            {column.render(item)}
          </div>
        ))}
      </div>,
    );
  }

  return (
    <div className="vt-wrap">
      <div role="table" aria-label={label} aria-rowcount={(totalRows ?? count) + 1} className={`vt ${className}`}>
        <div role="rowgroup" className="vt-head">
          <div role="row" aria-rowindex={1} className="vt-row vt-header-row">
            {columns.map((column) => (
              <div key={column.key} role="columnheader" className={`vt-cell vt-cell-${column.key}`}>
                {column.header}
              </div>
            ))}
          </div>
        </div>
        {/* No role and no tabindex: the scroll box stays out of the table's accessibility tree; the
            links in the rows make it reachable by keyboard. */}
        <div ref={scrollRef} className="vt-scroll" onScroll={(e) => setScrollTop(e.currentTarget.scrollTop)}>
          <div role="rowgroup" className="vt-body" style={{ height: count * rowHeight }}>
            {rows}
          </div>
        </div>
      </div>
      {footer && <div className="vt-footer">{footer}</div>}
    </div>
  );
}
