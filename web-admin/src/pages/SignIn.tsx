// Signing in: single sign-on with the providers the server is configured with, pairing this
// browser (show the code, wait for an owner or admin to approve it), or the console setup code
// at first boot. Pairing ends in a cookie session (`session: "cookie"`).

import { useEffect, useId, useRef, useState, type FormEvent } from "react";

import { ApiError, api, messageOf, toApiError, unwrap } from "../api/client";
import type { Schemas } from "../api/client";
import { Empty, ErrorState, FormError, Loading, Progress } from "../components/States";
import { PageHeader } from "../components/PageHeader";
import { useResource } from "../lib/resource";

export interface SignInProps {
  notice: string | null;
  /** Called once the server set the session cookies. */
  onSignedIn: () => Promise<void>;
  /** How often a pending pairing asks whether it was approved. */
  pollMs?: number;
}

function defaultDeviceName(): string {
  const platform = (navigator as Navigator & { userAgentData?: { platform?: string } }).userAgentData?.platform;
  return platform ? `Web browser (${platform})` : "Web browser";
}

export function SignInPage({ notice, onSignedIn, pollMs = 10_000 }: SignInProps) {
  return (
    <div className="signin">
      <PageHeader title="Sign in to moltops" />
      {notice && (
        <p className="notice notice-info" role="status">
          {notice}
        </p>
      )}
      <div className="signin-grid">
        <Providers />
        <Pairing onSignedIn={onSignedIn} pollMs={pollMs} />
        <SetupCode onSignedIn={onSignedIn} />
      </div>
    </div>
  );
}

function Providers() {
  const providers = useResource(() => unwrap(api.GET("/v1/auth/providers")), []);
  return (
    <section className="card" aria-labelledby="sso-heading">
      <h2 id="sso-heading">Single sign-on</h2>
      {providers.loading ? (
        <Loading label="Loading sign-in providers" />
      ) : providers.error ? (
        <ErrorState title="Could not load the sign-in providers." error={providers.error} onRetry={providers.refresh} />
      ) : providers.data && providers.data.providers.length > 0 ? (
        <ul className="plain-list">
          {providers.data.providers.map((p) => (
            <li key={p.name}>
              {/* A full navigation: the server redirects to the provider and back to `/`. */}
              <a className="button primary" href={p.login_url}>
                Sign in with {p.display_name}
              </a>
            </li>
          ))}
        </ul>
      ) : (
        <Empty title="No single sign-on provider is configured.">
          <p>Pair this browser, or use the setup code on a new server.</p>
        </Empty>
      )}
    </section>
  );
}

type PairingState =
  | { kind: "idle" }
  | { kind: "starting" }
  | {
      kind: "waiting";
      started: Schemas["PairStartResponse"];
      deviceName: string;
      expiresAt: number;
      note: string | null;
    }
  | { kind: "finishing" }
  | { kind: "failed"; message: string };

function Pairing({ onSignedIn, pollMs }: { onSignedIn: () => Promise<void>; pollMs: number }) {
  const nameId = useId();
  const [deviceName, setDeviceName] = useState(defaultDeviceName);
  const [state, setState] = useState<PairingState>({ kind: "idle" });
  const [error, setError] = useState<string | null>(null);
  const [now, setNow] = useState(() => Date.now());
  const codeRef = useRef<HTMLParagraphElement>(null);

  const start = async (event?: FormEvent) => {
    event?.preventDefault();
    setError(null);
    setState({ kind: "starting" });
    const name = deviceName.trim();
    try {
      const started = await unwrap(
        api.POST("/pair/start", { body: { device_name: name === "" ? null : name } }),
      );
      setNow(Date.now());
      setState({
        kind: "waiting",
        started,
        deviceName: name === "" ? "Web browser" : name,
        expiresAt: Date.now() + started.expires_in_seconds * 1000,
        note: null,
      });
    } catch (e) {
      setState({ kind: "idle" });
      setError(messageOf(e));
    }
  };

  // While waiting: ask every `pollMs` whether the code was approved (429: wait as told).
  const waiting = state.kind === "waiting" ? state : null;
  useEffect(() => {
    if (!waiting) return;
    codeRef.current?.focus();
    let cancelled = false;
    let timer: ReturnType<typeof setTimeout>;
    const poll = async () => {
      if (Date.now() >= waiting.expiresAt) {
        setState({ kind: "failed", message: "The pairing code expired before it was approved." });
        return;
      }
      let delay = pollMs;
      try {
        const outcome = await api.POST("/pair/confirm", {
          body: {
            pairing_code: waiting.started.pairing_code,
            pairing_secret: waiting.started.pairing_secret,
            device_name: waiting.deviceName,
            session: "cookie",
          },
        });
        if (cancelled) return;
        if (outcome.response.ok) {
          setState({ kind: "finishing" });
          await onSignedIn();
          return;
        }
        const failure = toApiError(outcome.response, outcome.error);
        if (failure.code === "pairing_pending") {
          setState((s) => (s.kind === "waiting" ? { ...s, note: null } : s));
        } else if (failure.status === 429) {
          delay = Math.max(pollMs, (failure.retryAfterSeconds ?? 60) * 1000);
          setState((s) =>
            s.kind === "waiting" ? { ...s, note: `The server asks to slow down; checking again in ${Math.round(delay / 1000)} s.` } : s,
          );
        } else {
          setState({ kind: "failed", message: failure.message });
          return;
        }
      } catch (e) {
        if (cancelled) return;
        setState((s) => (s.kind === "waiting" ? { ...s, note: `Could not reach the server (${messageOf(e)}); still trying.` } : s));
      }
      if (!cancelled) timer = setTimeout(() => void poll(), delay);
    };
    timer = setTimeout(() => void poll(), pollMs);
    const tick = setInterval(() => setNow(Date.now()), 1000);
    return () => {
      cancelled = true;
      clearTimeout(timer);
      clearInterval(tick);
    };
    // One polling loop per started pairing.
  }, [waiting?.started.pairing_code]);

  return (
    <section className="card" aria-labelledby="pair-heading">
      <h2 id="pair-heading">Pair this browser</h2>
      {state.kind === "waiting" ? (
        <div className="pairing-wait">
          <p>Ask an owner or admin to approve this code (Pairings page, or <code>moltopsctl pair approve</code>):</p>
          <p ref={codeRef} tabIndex={-1} className="pairing-code" data-testid="pairing-code">
            {state.started.pairing_code}
          </p>
          <Progress label="Waiting for approval" />
          <p role="status">
            Waiting for approval. The code expires in {formatCountdown(state.expiresAt - now)}.
          </p>
          {state.note && <p className="notice notice-warning">{state.note}</p>}
          <button type="button" onClick={() => setState({ kind: "idle" })}>
            Cancel pairing
          </button>
        </div>
      ) : state.kind === "finishing" ? (
        <Loading label="Approved. Signing in" />
      ) : state.kind === "failed" ? (
        <div role="alert" className="state state-error">
          <p className="state-title">Pairing did not complete.</p>
          <p>{state.message}</p>
          <button type="button" className="primary" onClick={() => void start()}>
            Start again
          </button>
        </div>
      ) : (
        <form onSubmit={(e) => void start(e)}>
          <p>Get a code to show an owner or admin; this page signs in once they approve it.</p>
          <div className="field">
            <label htmlFor={nameId}>Device name (shown to the approver)</label>
            <input
              id={nameId}
              value={deviceName}
              maxLength={100}
              onChange={(e) => setDeviceName(e.target.value)}
              autoComplete="off"
            />
          </div>
          <FormError error={error} />
          <button type="submit" className="primary" disabled={state.kind === "starting"}>
            {state.kind === "starting" ? "Starting…" : "Start pairing"}
          </button>
        </form>
      )}
    </section>
  );
}

function formatCountdown(ms: number): string {
  const total = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(total / 60)}:${String(total % 60).padStart(2, "0")}`;
}

function SetupCode({ onSignedIn }: { onSignedIn: () => Promise<void> }) {
  const codeId = useId();
  const nameId = useId();
  const [code, setCode] = useState("");
  const [deviceName, setDeviceName] = useState(defaultDeviceName);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    if (code.trim() === "") {
      setError("Enter the setup code the server printed to its console.");
      return;
    }
    setBusy(true);
    try {
      await unwrap(
        api.POST("/pair/confirm", {
          body: {
            pairing_code: code.trim(),
            device_name: deviceName.trim() === "" ? "Web browser" : deviceName.trim(),
            session: "cookie",
          },
        }),
      );
      await onSignedIn();
    } catch (e) {
      setError(
        e instanceof ApiError && e.status === 401
          ? "That setup code is not valid (wrong, expired or already used)."
          : messageOf(e),
      );
      setBusy(false);
    }
  };

  return (
    <section className="card" aria-labelledby="setup-heading">
      <h2 id="setup-heading">First boot</h2>
      <form onSubmit={(e) => void submit(e)}>
        <p>
          A new server prints a one-time setup code to its console while no owner exists. It makes
          this browser the first owner.
        </p>
        <div className="field">
          <label htmlFor={codeId}>Setup code</label>
          <input
            id={codeId}
            value={code}
            onChange={(e) => setCode(e.target.value)}
            autoComplete="off"
            autoCapitalize="characters"
            spellCheck={false}
          />
        </div>
        <div className="field">
          <label htmlFor={nameId}>Name for this browser</label>
          <input id={nameId} value={deviceName} maxLength={100} onChange={(e) => setDeviceName(e.target.value)} />
        </div>
        <FormError error={error} />
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Signing in…" : "Sign in with setup code"}
        </button>
      </form>
    </section>
  );
}
