// idp.mjs — a real OpenID provider for moltops's SSO tests.
//
// This wraps the `oidc-provider` library (a certified OpenID Connect
// implementation) so that moltops's integration tests can talk to a genuine
// IdP instead of a hand-rolled fake. It is TEST-ONLY: no authentication on the
// control endpoints, everything lives in memory, and it never leaves loopback.
//
// Usage:
//   node tests/oidc/idp.mjs '{"port":0,"clients":[{"client_id":"moltops",
//     "client_secret":"s3cret","redirect_uris":["http://moltops.test/cb"]}]}' // pragma: allowlist secret
//
// Contract with the parent (test) process:
//   * listens on 127.0.0.1 only (port 0 = ephemeral);
//   * once listening, prints exactly ONE line to stdout:
//       {"issuer":"http://127.0.0.1:<port>"}
//     (discovery: <issuer>/.well-known/openid-configuration). Everything else,
//     including oidc-provider's own notices, goes to stderr;
//   * exits when its stdin reaches EOF (the parent holds the pipe, so the IdP
//     dies with the test) and on SIGTERM / SIGINT.
//
// Flow: authorization code + PKCE (S256, required for every client), RS256 id
// tokens carrying the email / profile / groups claims. Interactions (login and
// consent) complete automatically through redirects only, for the "current
// account" chosen over the control API.
//
// Control API (plain JSON on the same port, test-only, no auth):
//   GET  /__test/health                               -> 200 {"ok":true}
//   POST /__test/account {sub,email,name,groups[,email_verified]}  -> 204
//   POST /__test/clients {client_id,client_secret,redirect_uris,...} -> 204
//   POST /__test/tamper  {mode}                                       -> 204
//        mode: off | alg_none | other_key | wrong_aud | expired | wrong_nonce | wrong_iss

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import {
  CompactSign, decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair,
} from 'jose';

// oidc-provider prints its NOTICEs with console.info, i.e. to stdout. stdout is
// reserved for the single "issuer" line, so route every console printer to
// stderr *before* the library is loaded (hence the dynamic import below).
const toStderr = (...args) => console.error(...args);
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;

const { default: Provider, interactionPolicy } = await import('oidc-provider');

// ---------------------------------------------------------------------------
// Configuration from argv
// ---------------------------------------------------------------------------

function parseConfig(arg) {
  if (arg === undefined) return {};
  try {
    return JSON.parse(arg);
  } catch (err) {
    fail(`idp: the argument must be JSON: ${err.message}`);
  }
  return {};
}

// A client mistake on the control API (answered with 400, not 500).
class BadRequest extends Error {}

function fail(message) {
  console.error(message);
  process.exit(1);
}

const config = parseConfig(process.argv[2]);
const port = config.port ?? 0;
const staticClients = config.clients ?? [];
if (!Number.isInteger(port) || port < 0 || port > 65535) fail('idp: "port" must be an integer 0..65535');
if (!Array.isArray(staticClients)) fail('idp: "clients" must be an array');

// ---------------------------------------------------------------------------
// Mutable test state, driven by the /__test/ control endpoints
// ---------------------------------------------------------------------------

const TAMPER_MODES = new Set([
  'off', 'alg_none', 'other_key', 'wrong_aud', 'expired', 'wrong_nonce', 'wrong_iss',
]);

const state = {
  // Every account ever set, by sub, so that a code issued for an earlier
  // account still resolves at the token endpoint; `currentSub` is the one the
  // next login interaction signs in as.
  accounts: new Map(),
  currentSub: undefined,
  tamper: 'off',
  otherKey: undefined, // private key used by the "other_key" tamper mode
};

function setAccount(body) {
  if (typeof body?.sub !== 'string' || body.sub === '') throw new BadRequest('"sub" must be a non-empty string');
  for (const field of ['email', 'name']) {
    if (body[field] !== undefined && typeof body[field] !== 'string') throw new BadRequest(`"${field}" must be a string`);
  }
  const groups = body.groups ?? [];
  if (!Array.isArray(groups) || !groups.every((g) => typeof g === 'string')) {
    throw new BadRequest('"groups" must be an array of strings');
  }
  if (body.email_verified !== undefined && typeof body.email_verified !== 'boolean') {
    throw new BadRequest('"email_verified" must be a boolean');
  }
  state.accounts.set(body.sub, {
    sub: body.sub,
    email: body.email,
    email_verified: body.email_verified ?? true,
    name: body.name,
    groups,
  });
  state.currentSub = body.sub;
}

setAccount({
  sub: 'user-1', email: 'user-1@example.test', name: 'User One', groups: [],
});

// ---------------------------------------------------------------------------
// Storage adapter
// ---------------------------------------------------------------------------

// A plain in-memory adapter. The library's bundled one is an LRU capped at
// 1000 entries shared by every model, so a long test run could silently evict
// a registered client; this one keeps everything until it expires (which is
// fine for a short-lived test process). One Map per model name.
const stores = new Map();

class TestAdapter {
  constructor(model) {
    this.model = model;
    if (!stores.has(model)) stores.set(model, new Map());
    this.items = stores.get(model);
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
    this.items.set(id, { payload, expiresAt });
  }

  async find(id) {
    const entry = this.items.get(id);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      this.items.delete(id);
      return undefined;
    }
    return entry.payload;
  }

  async #findBy(field, value) {
    for (const [id, entry] of this.items) {
      if (entry.payload[field] === value) return this.find(id);
    }
    return undefined;
  }

  async findByUid(uid) { return this.#findBy('uid', uid); }

  async findByUserCode(userCode) { return this.#findBy('userCode', userCode); }

  async consume(id) {
    const payload = await this.find(id);
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { this.items.delete(id); }

  async revokeByGrantId(grantId) {
    for (const [id, entry] of this.items) {
      if (entry.payload.grantId === grantId) this.items.delete(id);
    }
  }
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

// The provider's signing key: a fresh RS256 key per process. The private key
// object is kept as well, so that the tamper modes can re-sign with it.
const { privateKey: signingKey } = await generateKeyPair('RS256', { extractable: true });
const signingJwk = {
  ...await exportJWK(signingKey),
  kid: `moltops-test-${crypto.randomBytes(4).toString('hex')}`,
  alg: 'RS256',
  use: 'sig',
};

// ---------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------

// Extra login check: if the browser session belongs to someone other than the
// current account (a test switched accounts but reuses its cookie jar), ask
// for login again so the new account is the one signed in.
const policy = interactionPolicy.base();
policy.get('login').checks.add(new interactionPolicy.Check(
  'account_switched',
  'the current test account differs from the session account',
  (ctx) => {
    const { accountId } = ctx.oidc.session;
    return Boolean(accountId) && accountId !== state.currentSub && !ctx.oidc.result?.login;
  },
));

function providerConfiguration() {
  return {
    adapter: TestAdapter,
    jwks: { keys: [signingJwk] },

    // Clients are all held by the adapter (see registerClient), not in the
    // static `clients` list: static clients shadow the adapter and cannot be
    // replaced at run time.
    clientDefaults: {
      grant_types: ['authorization_code', 'refresh_token'],
      id_token_signed_response_alg: 'RS256',
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    // oidc-provider 9 accepts either of these two for a client registered
    // with either one.
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    responseTypes: ['code'],
    // PKCE on every authorization request; the library only implements S256.
    pkce: { required: () => true },
    enabledJWA: { idTokenSigningAlgValues: ['RS256'] },

    scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
    claims: {
      acr: null,
      auth_time: null,
      iss: null,
      sid: null,
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    // Put the scope-granted claims in the ID token itself, not only in the
    // userinfo response: moltops reads `groups` from the id_token.
    conformIdTokenClaims: false,

    async findAccount(_ctx, id) {
      const account = state.accounts.get(id);
      if (!account) return undefined;
      return {
        accountId: id,
        // The provider filters these by the granted scopes / claims.
        async claims() {
          return Object.fromEntries(Object.entries(account).filter(([, v]) => v !== undefined));
        },
      };
    },

    interactions: {
      policy,
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    features: {
      devInteractions: { enabled: false }, // replaced by finishInteraction below
    },

    // Plain http on 127.0.0.1: the library only marks cookies Secure when the
    // request itself is https, so nothing to override here beyond signing
    // them with a per-process key.
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },

    // Explicit TTLs (also silences the "you SHOULD change it" notices).
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      Grant: 3600,
      IdToken: 3600,
      Interaction: 600,
      RefreshToken: 86400,
      Session: 3600,
    },

    // Errors as JSON rather than an HTML page: easier to read in test logs.
    async renderError(ctx, out) {
      ctx.type = 'json';
      ctx.body = out;
    },
  };
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

// Registers (or replaces) a client at run time. The supported way to add
// clients after construction is the adapter behind the Client model:
// `provider.Client.find(id)` consults `provider.Client.adapter.find(id)` for
// any client_id that is not statically configured (this is also what dynamic
// registration does). Cached Client instances are keyed by a hash of the
// stored metadata, so upserting new metadata replaces the client.
async function registerClient(provider, metadata) {
  if (typeof metadata?.client_id !== 'string' || metadata.client_id === '') {
    throw new BadRequest('"client_id" must be a non-empty string');
  }
  let client;
  try {
    // Validates the metadata and applies clientDefaults.
    client = new provider.Client(metadata);
  } catch (err) {
    throw new BadRequest(`invalid client metadata: ${err.error_description ?? err.message}`);
  }
  await provider.Client.adapter.upsert(client.clientId, client.metadata());
}

// ---------------------------------------------------------------------------
// Interactions: login and consent, completed automatically with redirects
// ---------------------------------------------------------------------------

async function finishInteraction(provider, ctx) {
  const interaction = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session } = interaction;
  let result;

  if (prompt.name === 'login') {
    result = { login: { accountId: state.currentSub } };
  } else if (prompt.name === 'consent') {
    // Grant everything that was asked for: all missing OIDC scopes and
    // claims, and resource-server scopes if any were requested.
    const { details } = prompt;
    const grant = interaction.grantId
      ? await provider.Grant.find(interaction.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
    if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    throw new Error(`unexpected interaction prompt ${prompt.name}`);
  }

  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result);

  // Logging in as a different account than the browser session's would make
  // the provider answer with an HTML "log out first?" form. Drop the old
  // login from the session instead, so the flow stays redirects-only.
  if (result.login && session?.uid && session.accountId !== result.login.accountId) {
    const stale = await provider.Session.findByUid(session.uid);
    if (stale) {
      for (const field of ['accountId', 'loginTs', 'acr', 'amr', 'authorizations']) delete stale[field];
      await stale.persist();
    }
  }

  ctx.status = 303;
  ctx.redirect(returnTo);
}

// ---------------------------------------------------------------------------
// ID token tampering (negative tests for moltops's id_token validation)
// ---------------------------------------------------------------------------

const b64json = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');

async function resign(header, payload, key) {
  return new CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
    .setProtectedHeader(header)
    .sign(key);
}

async function tamperIdToken(idToken, mode) {
  const header = decodeProtectedHeader(idToken);
  const payload = decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);

  switch (mode) {
    case 'alg_none':
      return `${b64json({ alg: 'none', typ: 'JWT' })}.${b64json(payload)}.`;
    case 'other_key':
      // Same header (including kid), signature from a key nobody published.
      return resign(header, payload, state.otherKey);
    case 'wrong_aud':
      return resign(header, { ...payload, aud: 'someone-else' }, signingKey);
    case 'expired':
      return resign(header, { ...payload, iat: now - 7200, exp: now - 3600 }, signingKey);
    case 'wrong_nonce':
      return resign(header, { ...payload, nonce: `not-${payload.nonce ?? 'the-nonce'}-${crypto.randomBytes(4).toString('hex')}` }, signingKey);
    case 'wrong_iss':
      return resign(header, { ...payload, iss: 'http://evil.test' }, signingKey);
    default:
      return idToken;
  }
}

async function setTamper(body) {
  const mode = body?.mode;
  if (!TAMPER_MODES.has(mode)) {
    throw new BadRequest(`"mode" must be one of ${[...TAMPER_MODES].join(', ')}`);
  }
  if (mode === 'other_key') {
    ({ privateKey: state.otherKey } = await generateKeyPair('RS256'));
  }
  state.tamper = mode;
}

// ---------------------------------------------------------------------------
// Control endpoints
// ---------------------------------------------------------------------------

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return text === '' ? {} : JSON.parse(text);
  } catch (err) {
    throw new BadRequest(`body must be JSON: ${err.message}`);
  }
}

async function handleControl(provider, ctx) {
  const route = `${ctx.method} ${ctx.path}`;
  if (route === 'GET /__test/health') {
    ctx.body = { ok: true };
    return;
  }
  const handlers = {
    'POST /__test/account': setAccount,
    'POST /__test/clients': (body) => registerClient(provider, body),
    'POST /__test/tamper': setTamper,
  };
  const handler = handlers[route];
  if (!handler) {
    ctx.status = 404;
    ctx.body = { error: 'not_found', error_description: `no control endpoint ${route}` };
    return;
  }
  await handler(await readJson(ctx.req));
  ctx.status = 204;
}

// ---------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------

function installMiddleware(provider) {
  // provider.use() runs this before oidc-provider's own routing, and the
  // code after `await next()` after the provider has produced its response.
  provider.use(async (ctx, next) => {
    const started = Date.now();
    try {
      if (ctx.path.startsWith('/__test/')) {
        await handleControl(provider, ctx);
      } else if (ctx.method === 'GET' && /^\/interaction\/[^/]+$/.test(ctx.path)) {
        await finishInteraction(provider, ctx);
      } else {
        await next();
        // Rewrite the id_token of successful token responses while a tamper
        // mode is active (ctx.body is still a plain object at this point).
        if (
          state.tamper !== 'off'
          && ctx.oidc?.route === 'token'
          && ctx.status === 200
          && typeof ctx.body?.id_token === 'string'
        ) {
          ctx.body = { ...ctx.body, id_token: await tamperIdToken(ctx.body.id_token, state.tamper) };
        }
      }
    } catch (err) {
      const badRequest = err instanceof BadRequest || err.name === 'SessionNotFound';
      ctx.status = badRequest ? 400 : 500;
      ctx.body = {
        error: badRequest ? 'invalid_request' : 'server_error',
        // oidc-provider's errors keep the detail in error_description.
        error_description: err.error_description ?? err.message,
      };
      if (!badRequest) console.error(err);
    } finally {
      if (ctx.path !== '/__test/health') {
        console.error(`idp: ${ctx.method} ${ctx.path} -> ${ctx.status} (${Date.now() - started} ms)`);
      }
    }
  });
}

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve(server.address().port);
    });
  });
}

// The issuer must contain the port, which is only known once listening, so
// the server is bound first and handed the provider's callback afterwards.
// Nobody can send a request in between: the port is not published yet.
const server = http.createServer();
let actualPort;
try {
  actualPort = await listen(server);
} catch (err) {
  fail(`idp: cannot listen on 127.0.0.1:${port}: ${err.message}`);
}
const issuer = `http://127.0.0.1:${actualPort}`;

const provider = new Provider(issuer, providerConfiguration());
installMiddleware(provider);
for (const metadata of staticClients) {
  try {
    await registerClient(provider, metadata);
  } catch (err) {
    fail(`idp: client ${JSON.stringify(metadata?.client_id)}: ${err.message}`);
  }
}
server.on('request', provider.callback());

// Shut down with the parent: stdin EOF (pipe closed) or a signal.
function shutdown(reason) {
  console.error(`idp: shutting down (${reason})`);
  server.closeAllConnections();
  server.close();
  process.exit(0);
}
process.stdin.on('end', () => shutdown('stdin closed'));
process.stdin.on('error', () => shutdown('stdin error'));
process.stdin.resume();
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
console.error(`idp: listening, issuer ${issuer}, signing kid ${signingJwk.kid}`);
