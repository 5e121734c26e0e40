// Loading data from the API into a screen: one load per change of its inputs, optional polling
// that backs off on errors (doubling up to a ceiling) and pauses while the tab is hidden.

import { useCallback, useEffect, useRef, useState, type DependencyList } from "react";

export interface ResourceOptions {
  /** Poll every this many milliseconds while the tab is visible (no polling if absent). */
  pollMs?: number;
  /** Ceiling of the backoff after errors. */
  maxBackoffMs?: number;
}

export interface Resource<T> {
  data: T | undefined;
  /** The latest failure; cleared by the next success. Data from before stays shown. */
  error: Error | undefined;
  /** True until the first answer (success or failure) for the current inputs. */
  loading: boolean;
  /** When the data was last loaded (ms since the epoch). */
  updatedAt: number | undefined;
  /** Milliseconds until the next attempt after a failure, while polling. */
  retryInMs: number | undefined;
  /** Loads again now, keeping what is shown until the answer arrives. */
  refresh: () => void;
  /** Replaces the data locally (after a write answered with the new object). */
  setData: (data: T) => void;
}

interface State<T> {
  data: T | undefined;
  error: Error | undefined;
  loading: boolean;
  updatedAt: number | undefined;
  retryInMs: number | undefined;
}

const INITIAL = { data: undefined, error: undefined, loading: true, updatedAt: undefined, retryInMs: undefined };

export function useResource<T>(
  load: () => Promise<T>,
  deps: DependencyList,
  options: ResourceOptions = {},
): Resource<T> {
  const { pollMs, maxBackoffMs = 60_000 } = options;
  const [state, setState] = useState<State<T>>(INITIAL);
  const loadRef = useRef(load);
  loadRef.current = load;
  const runRef = useRef<() => void>(() => undefined);

  useEffect(() => {
    let cancelled = false;
    let inFlight = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let delay = pollMs ?? 0;
    setState(INITIAL);

    const schedule = () => {
      clearTimeout(timer);
      if (!pollMs || cancelled || document.hidden) return;
      timer = setTimeout(run, delay);
    };
    const run = () => {
      if (inFlight || cancelled) return;
      inFlight = true;
      clearTimeout(timer);
      loadRef
        .current()
        .then((data) => {
          if (cancelled) return;
          delay = pollMs ?? 0;
          setState({ data, error: undefined, loading: false, updatedAt: Date.now(), retryInMs: undefined });
        })
        .catch((error: unknown) => {
          if (cancelled) return;
          delay = pollMs ? Math.min(Math.max(delay, pollMs) * 2, maxBackoffMs) : 0;
          setState((s) => ({
            ...s,
            error: error instanceof Error ? error : new Error(String(error)),
            loading: false,
            retryInMs: pollMs ? delay : undefined,
          }));
        })
        .finally(() => {
          inFlight = false;
          schedule();
        });
    };
    const onVisibility = () => {
      if (document.hidden) clearTimeout(timer);
      else if (pollMs) run();
    };
    runRef.current = run;
    document.addEventListener("visibilitychange", onVisibility);
    run();
    return () => {
      cancelled = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisibility);
    };
    // The caller's deps decide when the data is for something else.
  }, [...deps, pollMs, maxBackoffMs]);

  const refresh = useCallback(() => runRef.current(), []);
  const setData = useCallback((data: T) => setState((s) => ({ ...s, data, error: undefined })), []);
  return { ...state, refresh, setData };
}

/** Re-renders every `ms` milliseconds, for relative times ("12 s ago"). */
export function useNow(ms = 5_000): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const id = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(id);
  }, [ms]);
  return now;
}
