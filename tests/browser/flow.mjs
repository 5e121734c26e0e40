// The web admin, end to end, in Debian's Chromium (playwright-core with executablePath; no
// browser is ever downloaded), against a real control plane and a real agent that
// tests/it/web_ui.rs started. An operator who has never seen moltops:
//
//   signs in with the console setup code → creates an enrollment token → runs the join command it
//   shows → sees the host come online in the fleet → installs the gateway and restarts it through
//   the confirmation dialog (reason, what will happen, confirm) → follows each job live to
//   "succeeded" → finds the restart in the audit log and verifies the chain → approves a second
//   browser's pairing as a viewer, which is offered no action and is refused one by the server.
//
// axe-core runs on every screen (light and dark), and on both steps of the confirmation dialog:
// any serious or critical violation fails the run. A Content-Security-Policy violation fails it
// too. Screenshots of each screen go to $MOLTOPS_SCREENSHOTS.
//
// Environment (set by tests/it/web_ui.rs): MOLTOPS_URL, MOLTOPS_SETUP_CODE, MOLTOPS_AGENT_BIN,
// MOLTOPS_AGENT_DIR, MOLTOPS_GATEWAY_PACKAGE, MOLTOPS_GATEWAY_PORT, MOLTOPS_SCREENSHOTS,
// MOLTOPS_CHROMIUM.

import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env('MOLTOPS_URL').replace(/\/$/, '');
const shots = env('MOLTOPS_SCREENSHOTS');
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const step = (what) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${what}`);
const children = [];
const cleanup = () => {
  for (const child of children) child.kill('SIGTERM');
};
process.on('exit', cleanup);

const browser = await chromium.launch({
  executablePath: env('MOLTOPS_CHROMIUM'),
  headless: true,
  args: ['--no-sandbox'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
const page = await context.newPage();
page.setDefaultTimeout(20_000);
const cspViolations = [];
page.on('console', (message) => {
  if (message.type() === 'error' && /Content Security Policy/i.test(message.text())) {
    cspViolations.push(message.text());
  }
});
page.on('pageerror', (error) => {
  cspViolations.push(`uncaught: ${error.message}`);
});

const violations = [];
async function audit(screen) {
  // Evaluated through the DevTools protocol, which the page's CSP does not govern.
  if (!(await page.evaluate(() => typeof window.axe !== 'undefined'))) {
    await page.evaluate(axeSource);
  }
  const result = await page.evaluate(() =>
    window.axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
    }),
  );
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of bad) {
    violations.push(
      `${screen}: ${v.id} (${v.impact}) ${v.help}: ${v.nodes
        .slice(0, 3)
        .map((n) => n.target.join(' '))
        .join(' | ')}`,
    );
  }
  step(`axe on ${screen}: ${result.violations.length} findings, ${bad.length} serious or critical`);
}
async function shot(name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}
const nav = (name) =>
  page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name, exact: true });

try {
  // 1. First boot: sign in with the console setup code.
  step('sign in with the setup code');
  await page.goto(`${base}/`);
  await page.getByRole('textbox', { name: 'Setup code' }).waitFor();
  await audit('sign-in');
  await shot('signin');
  await page.getByRole('textbox', { name: 'Setup code' }).fill(env('MOLTOPS_SETUP_CODE'));
  const nameField = page.getByLabel('Name for this browser');
  if (await nameField.count()) await nameField.fill('browser test');
  await page.getByRole('button', { name: 'Sign in with setup code' }).click();
  await page.getByRole('heading', { level: 1, name: 'Fleet' }).waitFor();
  await audit('fleet (empty)');

  // 2. An enrollment token; its join command is shown once.
  step('create an enrollment token');
  await nav('Enrollment').click();
  await page.getByLabel(/^Labels for enrolled nodes/).fill('env=browser');
  await page.getByRole('button', { name: 'Create token' }).click();
  await page.getByTestId('created-token').waitFor();
  const joinCommand = (await page.getByRole('textbox', { name: 'Join command' }).inputValue()).trim();
  await audit('enrollment (token shown)');
  await shot('enrollment');
  await page.getByRole('button', { name: 'Done, hide it' }).click();
  if (await page.getByRole('textbox', { name: 'Join command' }).count()) {
    throw new Error('the join command is still on the page');
  }

  // 3. The printed command, run as printed (only the state directory is this test's own).
  step(`run the join command: ${joinCommand.replace(/--token \S+/, '--token ***')}`);
  const words = joinCommand.split(/\s+/);
  if (words[0] !== 'moltops-agent' || words[1] !== 'enroll') throw new Error(`unexpected join command: ${words[0]} ${words[1]}`);
  const args = words.slice(1);
  const stateAt = args.indexOf('--state-dir');
  args[stateAt + 1] = env('MOLTOPS_AGENT_DIR');
  const enrolled = spawnSync(env('MOLTOPS_AGENT_BIN'), args, { encoding: 'utf8' });
  if (enrolled.status !== 0) throw new Error(`enroll failed: ${enrolled.stderr}`);
  const nodeId = /enrolled as node (\S+)/.exec(enrolled.stdout)?.[1];
  if (!nodeId) throw new Error(`no node id in: ${enrolled.stdout}`);
  const agent = spawn(
    env('MOLTOPS_AGENT_BIN'),
    [
      'run',
      '--state-dir', env('MOLTOPS_AGENT_DIR'),
      '--gateway-package-file', env('MOLTOPS_GATEWAY_PACKAGE'),
      '--gateway-port', env('MOLTOPS_GATEWAY_PORT'),
    ],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  children.push(agent);

  // 4. The fleet shows it online, without a reload.
  step(`wait for node ${nodeId} online in the fleet`);
  await nav('Fleet').click();
  await page.locator(`[data-node-id="${nodeId}"][data-status="online"]`).waitFor({ timeout: 60_000 });
  await audit('fleet');
  await shot('fleet');

  // 5. Node detail: install the gateway through the confirmation dialog.
  step('install the gateway');
  await page.locator(`[data-node-id="${nodeId}"]`).getByRole('link').first().click();
  await page.getByRole('button', { name: 'Install gateway…' }).waitFor();
  await audit('node detail');
  await shot('node');
  await page.getByRole('button', { name: 'Install gateway…' }).click();
  const install = page.getByRole('dialog');
  await install.getByLabel('Reason (recorded in the audit log)').fill('first install from the browser test');
  await audit('install dialog');
  await install.getByRole('button', { name: 'Continue' }).click();
  await page.getByRole('button', { name: 'Confirm install' }).click();
  await page.waitForURL(/\/jobs\/[0-9a-f-]+$/);
  await page.locator('[data-testid="job-status"][data-status="succeeded"]').waitFor({ timeout: 120_000 });

  // 6. Restart it: reason, what will happen, confirm; then follow the job live.
  step('restart the gateway');
  await page.goto(`${base}/nodes/${nodeId}`);
  await page.getByRole('button', { name: 'Restart gateway' }).click();
  const ask = page.getByRole('dialog', { name: 'Restart the gateway' });
  await ask.getByLabel('Reason (recorded in the audit log)').fill('restart from the browser test');
  await audit('restart dialog (reason)');
  await ask.getByRole('button', { name: 'Continue' }).click();
  const confirm = page.getByRole('dialog', { name: 'Confirm: Restart the gateway' });
  await confirm.waitFor();
  const shown = await confirm.innerText();
  for (const expected of ['gateway.restart', nodeId, 'restart from the browser test']) {
    if (!shown.includes(expected)) throw new Error(`the confirmation does not show ${expected}: ${shown}`);
  }
  await audit('restart dialog (confirm)');
  await shot('confirm');
  await confirm.getByRole('button', { name: 'Confirm restart' }).click();
  await page.waitForURL(/\/jobs\/[0-9a-f-]+$/);
  await page.locator('[data-testid="job-status"][data-status="succeeded"]').waitFor({ timeout: 60_000 });
  const events = await page.getByRole('log', { name: 'Job events' }).innerText();
  for (const expected of ['queued', 'running', 'verify', 'succeeded']) {
    if (!events.includes(expected)) throw new Error(`the job's live events lack ${expected}: ${events}`);
  }
  await audit('job');
  await shot('job');

  // 7. Jobs list, audit log with the restart, and the chain verified.
  step('jobs and audit');
  await nav('Jobs').click();
  await page.getByRole('heading', { level: 1, name: 'Jobs' }).waitFor();
  await audit('jobs');
  await shot('jobs');
  await nav('Audit').click();
  const row = page.locator('tr[data-audit-action="gateway.restart"]');
  await row.first().waitFor();
  if (!(await row.first().innerText()).includes('restart from the browser test')) {
    throw new Error('the audit row does not show the reason');
  }
  await page.getByRole('button', { name: 'Verify chain' }).click();
  await page.getByTestId('verify-result').filter({ hasText: 'The chain is intact.' }).waitFor();
  await audit('audit');
  await shot('audit');

  // 8. The owner's other screens, and the dark theme.
  for (const [link, name] of [
    ['Pairings', 'pairings'],
    ['Users', 'users'],
    ['Roles', 'roles'],
    ['API tokens', 'tokens'],
  ]) {
    if (await nav(link).count()) {
      await nav(link).click();
      await page.getByRole('heading', { level: 1 }).waitFor();
      await page.waitForLoadState('networkidle');
      await audit(name);
      await shot(name);
    } else {
      throw new Error(`an owner should see ${link}`);
    }
  }
  await page.getByLabel('Theme').selectOption('dark');
  for (const link of ['Fleet', 'Audit']) {
    await nav(link).click();
    await page.getByRole('heading', { level: 1, name: link }).waitFor();
    await page.waitForLoadState('networkidle');
    await audit(`${link.toLowerCase()} (dark)`);
  }
  await nav('Fleet').click();
  await shot('fleet-dark');
  await page.getByLabel('Theme').selectOption('light');

  // 9. A second browser pairs as a viewer, approved by the owner: it sees the fleet but is
  //    offered no action, and the server refuses one all the same.
  step('pair a viewer browser');
  const viewerContext = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const viewer = await viewerContext.newPage();
  viewer.setDefaultTimeout(30_000);
  await viewer.goto(`${base}/`);
  await viewer.getByLabel('Device name (shown to the approver)').fill('viewer laptop');
  await viewer.getByRole('button', { name: 'Start pairing' }).click();
  const pairingCode = (await viewer.getByTestId('pairing-code').innerText()).trim();
  await nav('Pairings').click();
  await page.getByLabel('Pairing code').fill(pairingCode);
  await page.getByLabel('Device name').fill('viewer laptop');
  await page.getByLabel('Role').selectOption('viewer');
  await page.getByRole('button', { name: 'Approve' }).click();
  await viewer.getByRole('heading', { level: 1, name: 'Fleet' }).waitFor();
  await viewer.goto(`${base}/nodes/${nodeId}`);
  await viewer.getByRole('heading', { level: 1 }).waitFor();
  await viewer.waitForLoadState('networkidle');
  for (const absent of ['Restart gateway', 'Stop gateway', 'Install gateway…', 'Revoke node…', 'Edit labels']) {
    if (await viewer.getByRole('button', { name: absent }).count()) {
      throw new Error(`a viewer is offered "${absent}"`);
    }
  }
  for (const absent of ['Users', 'Roles', 'API tokens', 'Pairings']) {
    if (await viewer.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: absent, exact: true }).count()) {
      throw new Error(`a viewer is offered the ${absent} page`);
    }
  }
  const refused = await viewer.evaluate(async (id) => {
    const csrf = document.cookie.split('; ').find((c) => c.startsWith('moltops_csrf='))?.split('=')[1] ?? '';
    const response = await fetch(`/v1/nodes/${id}/ops/action`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-csrf-token': csrf },
      body: JSON.stringify({ action: 'stop', reason: 'a viewer tries' }),
    });
    return { status: response.status, body: await response.json() };
  }, nodeId);
  if (refused.status !== 403) throw new Error(`the server let a viewer act: ${JSON.stringify(refused)}`);
  await viewer.screenshot({ path: join(shots, 'node-viewer.png'), fullPage: true });
  await viewerContext.close();
} catch (error) {
  await shot('failure').catch(() => {});
  console.error(`FAILED at ${page.url()}: ${error.stack ?? error}`);
  await browser.close();
  cleanup();
  process.exit(1);
}
await browser.close();
cleanup();
if (cspViolations.length) {
  console.error(`Content-Security-Policy violations or page errors:\n${cspViolations.join('\n')}`);
  process.exit(1);
}
if (violations.length) {
  console.error(`accessibility violations (serious or critical):\n${violations.join('\n')}`);
  process.exit(1);
}
step('the whole flow passed');
