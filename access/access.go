// Package access is kapfhir's front door: the SMART Backend Services
// authorization server (package auth) wired to the store — registered
// clients, kapfhir's signing keys, the jti replay cache shared by every
// process — plus the bootstrap admin client and the audit records of what
// the front door does (tokens issued and refused, client changes).
package access

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/seal"
	"github.com/kapfhir/kapfhir/store"
)

// Store is what access needs of the store.
type Store interface {
	PutClient(ctx context.Context, c store.ClientRecord) error
	Client(ctx context.Context, id string) (store.ClientRecord, error)
	Clients(ctx context.Context) ([]store.ClientRecord, error)
	DeleteClient(ctx context.Context, id string) error
	UseJTI(ctx context.Context, clientID, jti string, expires, now time.Time) error
	PutSigningKey(ctx context.Context, k store.SigningKey, recs ...audit.Record) error
	SigningKeys(ctx context.Context) ([]store.SigningKey, error)
	RetireSigningKey(ctx context.Context, kid string, at time.Time, recs ...audit.Record) (bool, error)
	ResealSigningKey(ctx context.Context, kid string, old, private []byte, recs ...audit.Record) (bool, error)
	AppendAudit(ctx context.Context, recs ...audit.Record) ([]audit.Record, error)
}

// Options configures the Service.
type Options struct {
	Store Store
	// Issuer is kapfhir's base URL as clients reach it (e.g.
	// https://kapfhir.clinic.example): tokens' iss and aud; the token URL
	// is Issuer + "/auth/token".
	Issuer string
	// DataDir receives the bootstrap admin client's private key.
	DataDir string
	// Source is the installation id (audit records' observer).
	Source string
	// TokenLifetime of access tokens (default auth.DefaultTokenLifetime).
	TokenLifetime time.Duration
	// ReloadInterval is how often Run reloads the signing keys from the
	// store (default DefaultReloadInterval). A superseded key is retired
	// TokenLifetime + the verifier's leeway + ReloadInterval after the key
	// that replaced it was created, so every process sharing the store
	// must use the same values.
	ReloadInterval time.Duration
	// Seal, when set, seals the signing keys' private halves in the store
	// (and seals keys stored in plaintext before when it loads them). Nil
	// keeps them in plaintext.
	Seal *seal.Box
	// Configured clients (from the config file) are registered at start,
	// replacing stored clients with the same id.
	Configured []auth.Client
	Now        func() time.Time
	Logger     *slog.Logger
}

// Service issues and verifies kapfhir's access tokens and keeps its clients.
type Service struct {
	o        Options
	lifetime time.Duration
	// keys is the one set the token server signs with, the verifier
	// checks against and JWKS publishes; reloads replace its content.
	keys     *auth.KeySet
	tokens   *auth.TokenServer
	verifier *auth.Verifier
	log      *slog.Logger

	reloadMu  sync.Mutex // held through a reload or rotation
	kidReload time.Time  // last reload for an unknown kid (under reloadMu)
	reloads   atomic.Uint64
}

// AdminClientID is the client created on first start when none exists.
const AdminClientID = "admin"

// New loads (or, the first time, creates) kapfhir's signing key and
// registers the configured clients.
func New(ctx context.Context, o Options) (*Service, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ReloadInterval <= 0 {
		o.ReloadInterval = DefaultReloadInterval
	}
	o.Issuer = strings.TrimSuffix(o.Issuer, "/")
	if o.Issuer == "" {
		return nil, errors.New("access: an issuer (base URL) is required")
	}
	s := &Service{o: o, log: o.Logger, lifetime: o.TokenLifetime}
	if s.lifetime <= 0 {
		s.lifetime = auth.DefaultTokenLifetime
	}
	var err error
	if s.keys, err = auth.NewKeySet(o.Now); err != nil {
		return nil, fmt.Errorf("access: %w", err)
	}
	if err := s.Reload(ctx); err != nil {
		return nil, err
	}
	s.tokens, err = auth.NewTokenServer(auth.TokenServerConfig{
		Issuer: o.Issuer, Keys: s.keys, Clients: clientLookup{s}, JTIs: o.Store,
		TokenLifetime: s.lifetime, Now: o.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("access: %w", err)
	}
	s.verifier, err = auth.NewVerifier(auth.VerifierConfig{Issuer: o.Issuer, Keys: s.keys, Leeway: auth.DefaultVerifierLeeway, Now: o.Now})
	if err != nil {
		return nil, fmt.Errorf("access: %w", err)
	}
	for _, c := range o.Configured {
		if _, _, err := s.PutClient(ctx, c, audit.System); err != nil {
			return nil, fmt.Errorf("access: configured client %s: %w", c.ID, err)
		}
	}
	return s, nil
}

// TokenURL is where clients ask for tokens (their assertions' aud).
func (s *Service) TokenURL() string { return s.tokens.TokenURL() }

// Issuer is the base URL tokens are issued for.
func (s *Service) Issuer() string { return s.o.Issuer }

// JWKS is kapfhir's public key set (/auth/jwks.json).
func (s *Service) JWKS() []byte { return s.keys.JWKS() }

// Verify checks an access token (see VerifyContext).
func (s *Service) Verify(token string) (auth.Principal, error) {
	return s.VerifyContext(context.Background(), token)
}

// VerifyContext checks an access token. A token signed by a key this
// process does not hold — another process may have rotated — makes it
// reload the keys from the store (at most once every few seconds, see
// unknownKeyReloadEvery) and verify once more.
func (s *Service) VerifyContext(ctx context.Context, token string) (auth.Principal, error) {
	seen := s.reloads.Load() // before verifying: a reload that ends later may hold the key
	p, err := s.verifier.Verify(token)
	if !errors.Is(err, auth.ErrUnknownKey) || !s.reloadForUnknownKey(ctx, seen) {
		return p, err
	}
	return s.verifier.Verify(token)
}

// Token handles a token request (the form of POST /auth/token) from addr,
// and audits what it granted or refused.
func (s *Service) Token(ctx context.Context, form url.Values, addr string) (auth.Issued, error) {
	iss, err := s.tokens.Token(ctx, form)
	rec := audit.Record{Subtype: audit.TokenIssued, Outcome: audit.Success, Agent: audit.Agent{Address: addr}}
	if err != nil {
		rec.Subtype, rec.Outcome = audit.TokenRefused, audit.MinorFailure
		if oe, ok := auth.AsOAuthError(err); ok {
			rec.OutcomeDesc = oe.Code + ": " + oe.Description
			rec.Agent.ClientID = oauthClient(oe, form)
		} else {
			rec.Outcome, rec.OutcomeDesc = audit.SeriousFailure, "server failure"
			rec.Agent.ClientID = oauthClient(nil, form)
		}
	} else {
		rec.Agent.ClientID, rec.Agent.Role = iss.Principal.ClientID, string(iss.Principal.Role)
		rec.Entities = []audit.Entity{{Identifier: "token:" + iss.Principal.TokenID}}
		rec.Detail = map[string]string{"scope": iss.Response.Scope}
	}
	if rec.Agent.ClientID == "" {
		rec.Agent.ClientID = "unknown"
	}
	if aerr := s.audit(ctx, rec); aerr != nil && err == nil {
		// A token whose issue cannot be audited is not handed out.
		return auth.Issued{}, aerr
	}
	return iss, err
}

// oauthClient names the client a refused request claimed to be, when it
// has the shape of a client id (never the assertion itself).
func oauthClient(oe *auth.OAuthError, form url.Values) string {
	if oe != nil && oe.ClientID != "" {
		return oe.ClientID
	}
	if id := form.Get("client_id"); auth.ValidClientID(id) {
		return id
	}
	return ""
}
