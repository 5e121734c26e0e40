#!/usr/bin/env node
// A tiny stand-in for an OpenClaw gateway, for moltops's tests of the failure paths (the golden
// path uses real OpenClaw). It serves the same health endpoints — /healthz, /readyz, /startupz —
// with the same JSON bodies, and an unknown path answers 200 HTML like OpenClaw's UI catch-all,
// so a client must check the body, not just the status.
//
//   scenario-gateway gateway run --port N [--bind loopback]
//
// Scenario toggles (environment, or the JSON file in SCENARIO_FILE, which wins):
//   SCENARIO_VERSION       version reported by /startupz (default: this package's version)
//   SCENARIO_START_DELAY_MS  not ready until this long after start (default 0)
//   SCENARIO_FAIL_READY=1  /readyz stays 503 with a failing check
//   SCENARIO_CRASH_AFTER_MS  exit 1 this long after start
//   SCENARIO_EXIT_CODE     the exit code of a crash (default 1)
//   SCENARIO_IGNORE_SIGTERM=1  ignore SIGTERM (must be killed)
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');

const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8'));
let file = {};
if (process.env.SCENARIO_FILE) {
  try {
    file = JSON.parse(fs.readFileSync(process.env.SCENARIO_FILE, 'utf8'));
  } catch (e) {
    console.error(`scenario file: ${e.message}`);
    process.exit(78);
  }
}
const setting = (key, env) => (key in file ? file[key] : process.env[env]);
const version = setting('version', 'SCENARIO_VERSION') || pkg.version;
const startDelay = Number(setting('start_delay_ms', 'SCENARIO_START_DELAY_MS') || 0);
const failReady = String(setting('fail_ready', 'SCENARIO_FAIL_READY') || '') === '1' || file.fail_ready === true;
const crashAfter = Number(setting('crash_after_ms', 'SCENARIO_CRASH_AFTER_MS') || 0);
const exitCode = Number(setting('exit_code', 'SCENARIO_EXIT_CODE') || 1);
const ignoreTerm = String(setting('ignore_sigterm', 'SCENARIO_IGNORE_SIGTERM') || '') === '1' || file.ignore_sigterm === true;

const args = process.argv.slice(2);
if (args[0] === '--version' || args[0] === 'version') {
  console.log(version);
  process.exit(0);
}
if (args[0] !== 'gateway' || args[1] !== 'run') {
  console.error('usage: scenario-gateway gateway run --port N [--bind loopback]');
  process.exit(2);
}
const portAt = args.indexOf('--port');
const port = portAt >= 0 ? Number(args[portAt + 1]) : 18789;

const started = Date.now();
const ready = () => !failReady && Date.now() - started >= startDelay;
const json = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};
const server = http.createServer((req, res) => {
  switch (req.url) {
    case '/healthz':
      return json(res, 200, { ok: true, status: 'live' });
    case '/readyz':
      return ready()
        ? json(res, 200, { ready: true, failing: [] })
        : json(res, 503, { ready: false, failing: [failReady ? 'scenario' : 'startup'] });
    case '/startupz':
      return ready()
        ? json(res, 200, { ok: true, version })
        : json(res, 503, { ok: false, version });
    default:
      res.writeHead(200, { 'content-type': 'text/html' });
      return res.end('<!doctype html><title>gateway</title>');
  }
});
server.listen(port, '127.0.0.1', () => {
  console.log(JSON.stringify({ msg: 'listening', port, version, pid: process.pid }));
});
if (crashAfter > 0) {
  setTimeout(() => {
    console.error(JSON.stringify({ msg: 'scenario crash', exit_code: exitCode }));
    process.exit(exitCode);
  }, crashAfter);
}
process.on('SIGTERM', () => {
  if (ignoreTerm) {
    console.log(JSON.stringify({ msg: 'ignoring SIGTERM' }));
    return;
  }
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 500).unref();
});
