// smoke.mjs — self-test of idp.mjs, a real OpenID provider for moltops's SSO tests.
//
// Starts idp.mjs as a child process, then drives it the way moltops will:
// authorization code + PKCE with plain fetch and a tiny cookie jar, following
// redirects by hand until the client's redirect_uri, then the token endpoint.
// It checks the id_token (claims, signature against the JWKS), code replay,
// PKCE enforcement, run-time client registration, account switching and every
// tamper mode of the control API.
//
//   cd tests/oidc && npm ci && node smoke.mjs      (VERBOSE=1 shows IdP logs)
//
// Prints one line per check and "N passed, N failed"; exits non-zero on any
// failure.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

import {
  createRemoteJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify,
} from 'jose';

const IDP = fileURLToPath(new URL('./idp.mjs', import.meta.url));
const VERBOSE = Boolean(process.env.VERBOSE);
const REDIRECT_URI = 'http://127.0.0.1:9/cb'; // never visited: we stop at the Location header
const SCOPE = 'openid email profile groups';

// ---------------------------------------------------------------------------
// Child process
// ---------------------------------------------------------------------------

// Spawns the IdP and resolves once it has printed its issuer line.
async function startIdp(config) {
  const started = Date.now();
  const child = spawn(process.execPath, [IDP, JSON.stringify(config)], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const logs = [];
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    logs.push(chunk);
    if (VERBOSE) process.stderr.write(chunk);
  });

  let stdout = '';
  child.stdout.setEncoding('utf8');
  const line = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`IdP did not start within 20 s:\n${logs.join('')}`)), 20_000);
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const nl = stdout.indexOf('\n');
      if (nl !== -1) {
        clearTimeout(timer);
        resolve(stdout.slice(0, nl));
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`IdP exited early (${code}):\n${logs.join('')}`));
    });
  });
  // Anything printed to stdout after the issuer line breaks the contract.
  child.stdout.on('data', (chunk) => { stdout += chunk; });

  const { issuer } = JSON.parse(line);
  return {
    child, issuer, logs, startupMs: Date.now() - started, extraStdout: () => stdout.slice(line.length + 1),
  };
}

// Resolves with the exit code, or rejects if the child is still alive after `ms`.
async function exitWithin(child, ms) {
  if (child.exitCode !== null) return child.exitCode;
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  const [code, signal] = await once(child, 'exit');
  clearTimeout(timer);
  if (signal === 'SIGKILL') throw new Error(`IdP still running ${ms} ms later`);
  return code;
}

// ---------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------

// Just enough of a cookie jar: name -> value, ignoring Path/Domain (we only
// talk to one origin). Deleted or expired cookies are dropped.
class CookieJar {
  #cookies = new Map();

  store(response) {
    for (const header of response.headers.getSetCookie()) {
      const [pair, ...attributes] = header.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      const expires = attributes.find((a) => a.toLowerCase().startsWith('expires='));
      const expired = expires && Date.parse(expires.slice('expires='.length)) <= Date.now();
      if (value === '' || expired) this.#cookies.delete(name);
      else this.#cookies.set(name, value);
    }
  }

  header() {
    return [...this.#cookies].map(([name, value]) => `${name}=${value}`).join('; ');
  }
}

async function control(issuer, path, body) {
  const response = await fetch(`${issuer}/__test/${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: response.status, text: await response.text() };
}

async function mustControl(issuer, path, body) {
  const { status, text } = await control(issuer, path, body);
  assert.equal(status, 204, `POST /__test/${path}: ${status} ${text}`);
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const basic = (id, secret) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;

// Runs the browser half of the flow: from the authorization endpoint through
// the IdP's redirects to the redirect_uri. Returns the callback URL and the
// values a client must remember (state, nonce, PKCE verifier).
async function authorize(discovery, {
  clientId, redirectUri = REDIRECT_URI, jar = new CookieJar(), pkce = true,
}) {
  const verifier = b64url(crypto.randomBytes(32));
  const state = b64url(crypto.randomBytes(16));
  const nonce = b64url(crypto.randomBytes(16));
  const url = new URL(discovery.authorization_endpoint);
  url.search = new URLSearchParams({
    client_id: clientId,
    response_type: 'code',
    scope: SCOPE,
    redirect_uri: redirectUri,
    state,
    nonce,
    ...(pkce ? {
      code_challenge: b64url(crypto.createHash('sha256').update(verifier).digest()),
      code_challenge_method: 'S256',
    } : {}),
  });

  let next = url.href;
  for (let hop = 0; hop < 10; hop += 1) {
    const response = await fetch(next, { redirect: 'manual', headers: { cookie: jar.header() } });
    jar.store(response);
    const location = response.headers.get('location');
    if (response.status < 300 || response.status > 399 || !location) {
      throw new Error(`expected a redirect from ${next}, got ${response.status}: ${await response.text()}`);
    }
    await response.body?.cancel();
    next = new URL(location, next).href;
    if (next.startsWith(redirectUri)) {
      return {
        callback: new URL(next), state, nonce, verifier, hops: hop + 1,
      };
    }
  }
  throw new Error('too many redirects');
}

async function tokenRequest(discovery, {
  clientId, secret, code, verifier, redirectUri = REDIRECT_URI, method = 'basic',
}) {
  const form = new URLSearchParams({
    grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier,
  });
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (method === 'basic') {
    headers.authorization = basic(clientId, secret);
  } else { // client_secret_post
    form.set('client_id', clientId);
    form.set('client_secret', secret);
  }
  const response = await fetch(discovery.token_endpoint, { method: 'POST', headers, body: form });
  return { status: response.status, body: await response.json() };
}

// The whole code + PKCE flow; returns the token response and the id_token
// decoded, plus the values needed to check it.
async function login(ctx, options = {}) {
  const clientId = options.clientId ?? ctx.clientId;
  const secret = options.secret ?? ctx.secret;
  const redirectUri = options.redirectUri ?? REDIRECT_URI;
  const auth = await authorize(ctx.discovery, { ...options, clientId, redirectUri });
  const params = auth.callback.searchParams;
  assert.equal(params.get('error'), null, `authorization error: ${params.get('error')}: ${params.get('error_description')}`);
  assert.equal(params.get('state'), auth.state, 'state round-trips');
  assert.equal(params.get('iss'), ctx.issuer, 'iss parameter on the callback (RFC 9207)');
  const code = params.get('code');
  assert.ok(code, 'callback carries a code');
  const token = await tokenRequest(ctx.discovery, {
    clientId, secret, code, verifier: auth.verifier, redirectUri, method: options.method,
  });
  assert.equal(token.status, 200, `token endpoint: ${JSON.stringify(token.body)}`);
  const idToken = token.body.id_token;
  assert.equal(typeof idToken, 'string', 'token response has an id_token');
  return {
    ...auth, code, clientId, secret, token: token.body, idToken,
    header: decodeProtectedHeader(idToken), claims: decodeJwt(idToken),
  };
}

// jwtVerify against the IdP's published keys; returns the payload or throws.
async function verify(ctx, idToken, options = {}) {
  const { payload } = await jwtVerify(idToken, ctx.jwks, {
    algorithms: ['RS256'], issuer: ctx.issuer, audience: ctx.clientId, ...options,
  });
  return payload;
}

async function verifyFails(ctx, idToken, code, options) {
  await assert.rejects(verify(ctx, idToken, options), (err) => {
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
    return true;
  });
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

const results = { passed: 0, failed: 0 };

async function check(name, fn) {
  try {
    await fn();
    results.passed += 1;
    console.log(`ok   ${name}`);
  } catch (err) {
    results.failed += 1;
    console.log(`FAIL ${name}\n     ${String(err.stack ?? err).replaceAll('\n', '\n     ')}`);
  }
}

async function main() {
  const idp = await startIdp({
    port: 0,
    clients: [{ client_id: 'static', client_secret: 'static-secret', redirect_uris: ['http://127.0.0.1:9/static-cb'] }],
  });
  console.log(`IdP ${idp.issuer} up in ${idp.startupMs} ms`);

  const ctx = { issuer: idp.issuer, clientId: 'smoke', secret: 'smoke-secret' }; // pragma: allowlist secret
  try {
    await check('issuer is http://127.0.0.1:<port>', async () => {
      assert.match(ctx.issuer, /^http:\/\/127\.0\.0\.1:\d+$/);
    });

    await check('health and discovery', async () => {
      assert.equal((await fetch(`${ctx.issuer}/__test/health`)).status, 200);
      const response = await fetch(`${ctx.issuer}/.well-known/openid-configuration`);
      assert.equal(response.status, 200);
      ctx.discovery = await response.json();
      assert.equal(ctx.discovery.issuer, ctx.issuer);
      assert.deepEqual(ctx.discovery.code_challenge_methods_supported, ['S256']);
      assert.deepEqual(ctx.discovery.id_token_signing_alg_values_supported, ['RS256']);
      assert.deepEqual(ctx.discovery.response_types_supported, ['code']);
      ctx.jwks = createRemoteJWKSet(new URL(ctx.discovery.jwks_uri));
      const jwks = await (await fetch(ctx.discovery.jwks_uri)).json();
      assert.equal(jwks.keys.length, 1);
      assert.equal(jwks.keys[0].d, undefined, 'no private parts published');
      ctx.kid = jwks.keys[0].kid;
    });

    await check('control API: register client and set account', async () => {
      await mustControl(ctx.issuer, 'clients', { client_id: ctx.clientId, client_secret: ctx.secret, redirect_uris: [REDIRECT_URI] });
      await mustControl(ctx.issuer, 'account', {
        sub: 'ops-1', email: 'ops-1@example.test', name: 'Ops One', groups: ['ops'],
      });
    });

    let first;
    await check('code + PKCE flow: id_token claims, RS256, verifies against JWKS', async () => {
      first = await login(ctx);
      assert.equal(first.header.alg, 'RS256');
      assert.equal(first.header.kid, ctx.kid);
      const claims = await verify(ctx, first.idToken);
      assert.equal(claims.sub, 'ops-1');
      assert.deepEqual(claims.groups, ['ops']);
      assert.equal(claims.email, 'ops-1@example.test');
      assert.equal(claims.email_verified, true);
      assert.equal(claims.name, 'Ops One');
      assert.equal(claims.aud, ctx.clientId);
      assert.equal(claims.nonce, first.nonce);
      assert.equal(claims.iss, ctx.issuer);
    });

    await check('replaying a code fails with invalid_grant', async () => {
      const again = await tokenRequest(ctx.discovery, {
        clientId: ctx.clientId, secret: ctx.secret, code: first.code, verifier: first.verifier,
      });
      assert.equal(again.status, 400);
      assert.equal(again.body.error, 'invalid_grant');
    });

    await check('wrong PKCE verifier fails with invalid_grant', async () => {
      const auth = await authorize(ctx.discovery, { clientId: ctx.clientId });
      const bad = await tokenRequest(ctx.discovery, {
        clientId: ctx.clientId, secret: ctx.secret, code: auth.callback.searchParams.get('code'), verifier: b64url(crypto.randomBytes(32)),
      });
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error, 'invalid_grant');
    });

    await check('PKCE is required: no code_challenge -> error on the callback', async () => {
      const auth = await authorize(ctx.discovery, { clientId: ctx.clientId, pkce: false });
      assert.equal(auth.callback.searchParams.get('error'), 'invalid_request');
      assert.equal(auth.callback.searchParams.get('code'), null);
    });

    await check('client_secret_post works too', async () => {
      const result = await login(ctx, { method: 'post' });
      assert.deepEqual((await verify(ctx, result.idToken)).groups, ['ops']);
    });

    await check('statically configured client works', async () => {
      const result = await login(ctx, { clientId: 'static', secret: 'static-secret', redirectUri: 'http://127.0.0.1:9/static-cb' }); // pragma: allowlist secret
      assert.equal((await verify(ctx, result.idToken, { audience: 'static' })).sub, 'ops-1');
    });

    await check('re-registering a client replaces it (new secret in, old secret out)', async () => {
      await mustControl(ctx.issuer, 'clients', { client_id: 'swap', client_secret: 'old', redirect_uris: [REDIRECT_URI] });
      await login(ctx, { clientId: 'swap', secret: 'old' }); // pragma: allowlist secret
      await mustControl(ctx.issuer, 'clients', { client_id: 'swap', client_secret: 'new', redirect_uris: [REDIRECT_URI] });
      const auth = await authorize(ctx.discovery, { clientId: 'swap' });
      const stale = await tokenRequest(ctx.discovery, {
        clientId: 'swap', secret: 'old', code: auth.callback.searchParams.get('code'), verifier: auth.verifier,
      });
      assert.equal(stale.status, 401);
      assert.equal(stale.body.error, 'invalid_client');
      await login(ctx, { clientId: 'swap', secret: 'new' }); // pragma: allowlist secret
    });

    await check('same cookie jar: existing session reused, then account switch honoured', async () => {
      const jar = new CookieJar();
      await login(ctx, { jar });
      const reused = await login(ctx, { jar });
      assert.equal(reused.hops, 1, 'a live session and grant go straight to the callback');
      await mustControl(ctx.issuer, 'account', {
        sub: 'dev-2', email: 'dev-2@example.test', name: 'Dev Two', groups: ['dev', 'ops'],
      });
      const switched = await login(ctx, { jar });
      const claims = await verify(ctx, switched.idToken);
      assert.equal(claims.sub, 'dev-2');
      assert.deepEqual(claims.groups, ['dev', 'ops']);
      await mustControl(ctx.issuer, 'account', {
        sub: 'ops-1', email: 'ops-1@example.test', name: 'Ops One', groups: ['ops'],
      });
    });

    await check('control API rejects bad input with 400', async () => {
      assert.equal((await control(ctx.issuer, 'account', { email: 'x@example.test' })).status, 400);
      assert.equal((await control(ctx.issuer, 'tamper', { mode: 'bogus' })).status, 400);
      assert.equal((await control(ctx.issuer, 'clients', { client_id: 'x', redirect_uris: 'nope' })).status, 400);
    });

    // Each tamper mode: run a full flow and look at what came back.
    const tamperChecks = {
      async alg_none(result) {
        assert.deepEqual(result.header, { alg: 'none', typ: 'JWT' });
        assert.ok(result.idToken.endsWith('.'), 'empty signature');
        assert.deepEqual(result.claims.groups, ['ops']);
        assert.equal(result.claims.nonce, result.nonce);
        await verifyFails(ctx, result.idToken, 'ERR_JOSE_ALG_NOT_ALLOWED');
      },
      async other_key(result) {
        assert.equal(result.header.alg, 'RS256');
        assert.equal(result.header.kid, ctx.kid, 'same kid as the real key');
        await verifyFails(ctx, result.idToken, 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED');
      },
      async wrong_aud(result) {
        assert.equal((await verify(ctx, result.idToken, { audience: undefined })).aud, 'someone-else');
        await verifyFails(ctx, result.idToken, 'ERR_JWT_CLAIM_VALIDATION_FAILED');
      },
      async expired(result) {
        const now = Math.floor(Date.now() / 1000);
        assert.ok(result.claims.exp <= now - 3600 + 5 && result.claims.iat <= now - 7200 + 5);
        // ERR_JWT_EXPIRED is only reached once the signature has verified.
        await verifyFails(ctx, result.idToken, 'ERR_JWT_EXPIRED');
      },
      async wrong_nonce(result) {
        const claims = await verify(ctx, result.idToken);
        assert.ok(claims.nonce, 'still has a nonce');
        assert.notEqual(claims.nonce, result.nonce);
      },
      async wrong_iss(result) {
        assert.equal((await verify(ctx, result.idToken, { issuer: undefined })).iss, 'http://evil.test');
        await verifyFails(ctx, result.idToken, 'ERR_JWT_CLAIM_VALIDATION_FAILED');
      },
    };
    for (const [mode, assertTampered] of Object.entries(tamperChecks)) {
      await check(`tamper ${mode}`, async () => {
        await mustControl(ctx.issuer, 'tamper', { mode });
        try {
          await assertTampered(await login(ctx));
        } finally {
          await mustControl(ctx.issuer, 'tamper', { mode: 'off' });
        }
      });
    }

    await check('tamper off: id_token valid again', async () => {
      const result = await login(ctx);
      assert.equal((await verify(ctx, result.idToken)).nonce, result.nonce);
    });

    await check('nothing else was written to stdout', async () => {
      assert.equal(idp.extraStdout(), '');
    });
  } finally {
    await check('IdP exits when its stdin closes', async () => {
      idp.child.stdin.end();
      assert.equal(await exitWithin(idp.child, 5000), 0);
    });
    if (results.failed && !VERBOSE) process.stderr.write(`--- IdP stderr ---\n${idp.logs.join('')}`);
  }

  await check('IdP exits on SIGTERM', async () => {
    const other = await startIdp({ port: 0, clients: [] });
    other.child.kill('SIGTERM');
    assert.equal(await exitWithin(other.child, 5000), 0);
  });

  console.log(`${results.passed} passed, ${results.failed} failed`);
  process.exitCode = results.failed ? 1 : 0;
}

await main();
