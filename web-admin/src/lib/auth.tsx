// Who is signed in: `GET /v1/me` at start and after signing in, cleared when the server says
// the session ended. The permissions it lists (`object:action`) decide what the UI shows; the
// server still checks every request.

import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";

import { ApiError, api, onSessionEnded, unwrap, type Me } from "../api/client";

/** The permissions the server names in `Me.permissions`. */
export type Permission =
  | "nodes:read"
  | "nodes:write"
  | "nodes:revoke"
  | "commands:read"
  | "commands:create"
  | "enrollment_tokens:read"
  | "enrollment_tokens:write"
  | "ca:read"
  | "pairings:approve"
  | "api_tokens:manage"
  | "self:read"
  | "users:read"
  | "users:manage"
  | "roles:read"
  | "roles:manage"
  | "audit:read"
  | "audit:export"
  | "audit:verify";

export type AuthState =
  | { status: "loading" }
  | { status: "signed-out"; notice: string | null }
  | { status: "error"; message: string }
  | { status: "signed-in"; me: Me };

interface AuthContextValue {
  state: AuthState;
  /** Re-reads `/v1/me` (after signing in). */
  reload: () => Promise<void>;
  signOut: () => Promise<void>;
}

const AuthContext = createContext<AuthContextValue | null>(null);

export function AuthProvider({ children }: { children: ReactNode }) {
  const [state, setState] = useState<AuthState>({ status: "loading" });

  const reload = useCallback(async () => {
    try {
      const me = await unwrap(api.GET("/v1/me"));
      setState({ status: "signed-in", me });
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        setState({ status: "signed-out", notice: null });
      } else {
        setState({ status: "error", message: error instanceof Error ? error.message : String(error) });
      }
    }
  }, []);

  useEffect(() => {
    void reload();
    return onSessionEnded((reason) =>
      setState((current) =>
        current.status === "signed-in"
          ? {
              status: "signed-out",
              notice:
                reason === "csrf"
                  ? "Your session's security cookie is missing. Sign in again."
                  : "Your session ended. Sign in again.",
            }
          : current,
      ),
    );
  }, [reload]);

  const signOut = useCallback(async () => {
    try {
      await unwrap(api.POST("/v1/auth/logout"));
    } catch (error) {
      // A session that already ended is as good as signed out.
      if (!(error instanceof ApiError && error.status === 401)) throw error;
    }
    setState({ status: "signed-out", notice: "You are signed out." });
  }, []);

  const value = useMemo(() => ({ state, reload, signOut }), [state, reload, signOut]);
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): AuthContextValue {
  const value = useContext(AuthContext);
  if (!value) throw new Error("useAuth outside AuthProvider");
  return value;
}

/** The signed-in caller; only for screens shown when signed in. */
export function useMe(): Me {
  const { state } = useAuth();
  if (state.status !== "signed-in") throw new Error("useMe while not signed in");
  return state.me;
}

/** Whether the signed-in caller holds `permission`. */
export function useCan(): (permission: Permission) => boolean {
  const me = useMe();
  return useCallback((permission: Permission) => me.permissions.includes(permission), [me]);
}
