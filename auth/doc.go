// Package auth makes kapfhir a SMART Backend Services authorization server
// for its own callers, and checks the access tokens it issues.
//
// It is plain logic: no Echo, no store, no config. What it needs from
// elsewhere it declares as small interfaces: Clients (the client registry)
// and JTIStore (the replay cache), both implemented by the store.
//
// # Getting a token (POST /auth/token)
//
// A registered Client signs a short-lived JWT, the client assertion, with a
// private key whose public half is in its JWKS (registered inline, or
// published at a jwksUrl that JWKSFetcher fetches and caches), and posts:
//
//	grant_type=client_credentials
//	client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
//	client_assertion=<JWT>
//	scope=system/Observation.rs system/CarePlan.rs
//
// TokenServer.Token checks, in this order: the form (invalid_request,
// unsupported_grant_type); the assertion (invalid_client, 401): at most
// MaxTokenBytes, alg RS384 or ES384 only (pinned, so "none", HS256 and
// RS256/ES256 are refused before any key is looked up), a kid naming a key of
// that algorithm in the client's JWKS, iss = sub = a registered client id, aud
// = the token URL, exp present, not past (DefaultLeeway for clock skew) and at
// most MaxAssertionLifetime ahead, nbf and iat not in the future, the
// signature, and a jti; then the scopes (invalid_scope): the requested scopes
// Narrowed to the client's allowed scopes, and at least one left; and last the
// jti, recorded in the JTIStore until the assertion expires, so an assertion
// works once. Only then is an access token signed.
//
// Refusals are *OAuthError values whose Description says what was wrong and
// never echoes the assertion. Any other error is a server failure (500).
//
// # Access tokens
//
// Access tokens are JWTs signed ES384 by the newest key of a KeySet, with a
// kid (the key's RFC 7638 thumbprint) and typ "at+jwt". Claims: iss (the
// issuer, kapfhir's base URL), aud (the issuer too by default: one token opens
// /fhir, /api/v1 and the admin endpoints of this one resource server), sub and
// client_id (the client), scope (SMART v2, space separated), role, iat, exp
// (DefaultTokenLifetime, 5 minutes) and jti. KeySet.JWKS is the public set
// for GET /auth/jwks.json. Rotation needs no downtime: KeySet.Rotate adds a new
// signing key; the old one keeps verifying until RetireSuperseded (or Retire)
// removes it once its tokens have expired. The caller persists StoredKey.PEM
// (PKCS#8) and loads it at start with NewKeySet.
//
// A change to a client (role, scopes, removal) takes effect for new tokens;
// tokens already issued stay valid until they expire, at most the token
// lifetime later.
//
// # Checking a token
//
// Verifier.Verify (after BearerToken on the Authorization header) checks the
// token with golang-jwt's parser options — ES384 only, issuer, audience, exp
// required, small leeway, iat not in the future — plus typ, a kid in the
// KeySet, sub = client_id, a known role and valid scopes, and returns the
// Principal. Verified tokens are cached by SHA-256 until they expire (or their
// key is retired). Refusals are treatment errors of kind unauthorized wrapping
// ErrInvalidToken.
//
// # Authorisation
//
// A Principal's Role decides which Actions it may take (Role.Can) and which
// FHIR resource types it may read (Role.CanReadType); its Scopes narrow FHIR
// access further (Allows, Principal.CanReadFHIR). Admins read no clinical
// data; auditors read only AuditEvent and Provenance; ehr and clinic read
// everything but AuditEvent, and only clinic writes through the domain API.
package auth
