// Vite builds the web admin into dist/ (served by the control plane at `/`); Vitest runs the
// component tests in jsdom with the API mocked at the fetch level.
import react from "@vitejs/plugin-react";
import { loadEnv } from "vite";
import { defineConfig } from "vitest/config";

export default defineConfig(({ mode }) => {
  // `npm run dev` forwards the API to a local control plane (scripts/up; MOLTOPS_API to change
  // it), so the page and the API share an origin as in production and the session cookie works.
  const api = loadEnv(mode, ".", "MOLTOPS_").MOLTOPS_API ?? "http://127.0.0.1:7337";
  return {
    plugins: [react()],
    base: "/",
    build: {
      outDir: "dist",
      emptyOutDir: true,
      // The control plane's CSP allows scripts, styles and fonts from this origin only: no
      // inline script (the module-preload polyfill is one), no data: URLs for assets.
      modulePreload: { polyfill: false },
      assetsInlineLimit: 0,
      cssCodeSplit: false,
      sourcemap: false,
    },
    server: {
      proxy: {
        "/v1": { target: api },
        "/pair": { target: api },
        "/health": { target: api },
      },
    },
    test: {
      environment: "jsdom",
      setupFiles: ["./test/setup.ts"],
      include: ["test/**/*.test.{ts,tsx}"],
      restoreMocks: true,
      unstubGlobals: true,
    },
  };
});
