// The shell: skip link, header with the navigation the caller's permissions allow, theme
// choice, sign-out, and the routes. Signed out, every path shows the sign-in screen.

import { useEffect, useRef, useState, type ReactNode } from "react";

import { ErrorState, Loading, NoAccess } from "./components/States";
import { PageHeader } from "./components/PageHeader";
import { AuthProvider, useAuth, useCan, useMe, type Permission } from "./lib/auth";
import { Link, matchPath, navigate, useLocation } from "./lib/router";
import { saveTheme, storedTheme, type ThemeChoice } from "./lib/theme";
import { ApiTokensPage } from "./pages/ApiTokens";
import { AuditPage } from "./pages/Audit";
import { EnrollmentPage } from "./pages/Enrollment";
import { FleetPage } from "./pages/Fleet";
import { JobDetailPage } from "./pages/JobDetail";
import { JobsPage } from "./pages/Jobs";
import { NodeDetailPage } from "./pages/NodeDetail";
import { PairingsPage } from "./pages/Pairings";
import { RolesPage } from "./pages/Roles";
import { SignInPage } from "./pages/SignIn";
import { UsersPage } from "./pages/Users";

interface NavItem {
  to: string;
  label: string;
  permission: Permission;
}

export const NAV: readonly NavItem[] = [
  { to: "/", label: "Fleet", permission: "nodes:read" },
  { to: "/jobs", label: "Jobs", permission: "commands:read" },
  { to: "/enrollment", label: "Enrollment", permission: "enrollment_tokens:read" },
  { to: "/audit", label: "Audit", permission: "audit:read" },
  { to: "/pairings", label: "Pairings", permission: "pairings:approve" },
  { to: "/users", label: "Users", permission: "users:read" },
  { to: "/roles", label: "Roles", permission: "roles:read" },
  { to: "/tokens", label: "API tokens", permission: "api_tokens:manage" },
];

interface RouteDef {
  pattern: string;
  permission: Permission;
  what: string;
  render: (params: Record<string, string>) => ReactNode;
}

const ROUTES: readonly RouteDef[] = [
  { pattern: "/", permission: "nodes:read", what: "the fleet", render: () => <FleetPage /> },
  {
    pattern: "/nodes/:id",
    permission: "nodes:read",
    what: "nodes",
    render: (p) => <NodeDetailPage key={p.id} nodeId={p.id as string} />,
  },
  { pattern: "/jobs", permission: "commands:read", what: "jobs", render: () => <JobsPage /> },
  {
    pattern: "/jobs/:id",
    permission: "commands:read",
    what: "jobs",
    render: (p) => <JobDetailPage key={p.id} jobId={p.id as string} />,
  },
  {
    pattern: "/enrollment",
    permission: "enrollment_tokens:read",
    what: "enrollment tokens",
    render: () => <EnrollmentPage />,
  },
  { pattern: "/audit", permission: "audit:read", what: "the audit trail", render: () => <AuditPage /> },
  { pattern: "/pairings", permission: "pairings:approve", what: "pending pairings", render: () => <PairingsPage /> },
  { pattern: "/users", permission: "users:read", what: "users", render: () => <UsersPage /> },
  { pattern: "/roles", permission: "roles:read", what: "roles", render: () => <RolesPage /> },
  { pattern: "/tokens", permission: "api_tokens:manage", what: "API tokens", render: () => <ApiTokensPage /> },
];

export function App() {
  return (
    <AuthProvider>
      <Shell />
    </AuthProvider>
  );
}

function Shell() {
  const { state, reload } = useAuth();
  const location = useLocation();

  useEffect(() => {
    if (state.status === "signed-out" && location.pathname !== "/signin") {
      navigate("/signin", { replace: true });
    } else if (state.status === "signed-in" && location.pathname === "/signin") {
      navigate("/", { replace: true });
    }
  }, [state.status, location.pathname]);

  if (state.status === "loading") {
    return (
      <main id="main" className="main main-centered">
        <Loading label="Loading moltops" />
      </main>
    );
  }
  if (state.status === "error") {
    return (
      <main id="main" className="main main-centered">
        <h1>moltops</h1>
        <ErrorState title="Could not reach the control plane." error={new Error(state.message)} onRetry={() => void reload()} />
      </main>
    );
  }
  if (state.status === "signed-out") {
    return (
      <>
        <SkipLink />
        <header className="topbar">
          <span className="brand">moltops</span>
          <ThemeSelect />
        </header>
        <main id="main" className="main main-centered" tabIndex={-1}>
          <SignInPage notice={state.notice} onSignedIn={reload} />
        </main>
      </>
    );
  }
  return <SignedIn />;
}

function SkipLink() {
  return (
    <a className="skip-link" href="#main">
      Skip to main content
    </a>
  );
}

function SignedIn() {
  const me = useMe();
  const can = useCan();
  const { signOut } = useAuth();
  const location = useLocation();
  const mainRef = useRef<HTMLElement>(null);
  const first = useRef(true);
  const [signOutError, setSignOutError] = useState<string | null>(null);

  // After a navigation, move focus to the new page's heading so keyboard and screen-reader
  // users start there (not on the first load: the browser's own focus order applies then).
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    const heading = mainRef.current?.querySelector<HTMLElement>("h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus();
    }
  }, [location.pathname]);

  let page: ReactNode = null;
  for (const route of ROUTES) {
    const params = matchPath(route.pattern, location.pathname);
    if (!params) continue;
    page = can(route.permission) ? (
      route.render(params)
    ) : (
      <>
        <PageHeader title="Not available" />
        <NoAccess what={route.what} permission={route.permission} />
      </>
    );
    break;
  }
  if (page === null) {
    page = (
      <>
        <PageHeader title="Page not found" />
        <p>
          There is no page at <code>{location.pathname}</code>. <Link to="/">Go to the fleet</Link>.
        </p>
      </>
    );
  }

  const isCurrent = (to: string) =>
    to === "/" ? location.pathname === "/" || location.pathname.startsWith("/nodes/") : location.pathname.startsWith(to);

  return (
    <>
      <SkipLink />
      <header className="topbar">
        <span className="brand">moltops</span>
        <nav aria-label="Main" className="nav">
          <ul>
            {NAV.filter((item) => can(item.permission)).map((item) => (
              <li key={item.to}>
                <Link to={item.to} aria-current={isCurrent(item.to) ? "page" : undefined}>
                  {item.label}
                </Link>
              </li>
            ))}
          </ul>
        </nav>
        <div className="topbar-end">
          <span className="whoami" data-testid="whoami">
            {me.name} <span className="muted">({me.role}{me.scope ? `, ${me.scope}` : ""})</span>
          </span>
          <ThemeSelect />
          <button
            type="button"
            onClick={() => {
              setSignOutError(null);
              signOut().catch((e: unknown) => setSignOutError(e instanceof Error ? e.message : String(e)));
            }}
          >
            Sign out
          </button>
        </div>
      </header>
      {signOutError && (
        <p role="alert" className="notice notice-error">
          Could not sign out: {signOutError}
        </p>
      )}
      <main id="main" ref={mainRef} className="main" tabIndex={-1}>
        {page}
      </main>
    </>
  );
}

function ThemeSelect() {
  const [choice, setChoice] = useState<ThemeChoice>(storedTheme);
  return (
    <label className="theme-select">
      <span>Theme</span>
      <select
        value={choice}
        onChange={(e) => {
          const value = e.target.value as ThemeChoice;
          setChoice(value);
          saveTheme(value);
        }}
      >
        <option value="system">System</option>
        <option value="light">Light</option>
        <option value="dark">Dark</option>
      </select>
    </label>
  );
}
