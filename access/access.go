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
	"time"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/store"
)

// Store is what access needs of the store.
type Store interface {
	PutClient(ctx context.Context, c store.ClientRecord) error
	Client(ctx context.Context, id string) (store.ClientRecord, error)
	Clients(ctx context.Context) ([]store.ClientRecord, error)
	DeleteClient(ctx context.Context, id string) error
	UseJTI(ctx context.Context, clientID, jti string, expires, now time.Time) error
	PutSigningKey(ctx context.Context, k store.SigningKey) error
	SigningKeys(ctx context.Context) ([]store.SigningKey, error)
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
	// TokenLifetime of access tokens (default 5 minutes).
	TokenLifetime time.Duration
	// Configured clients (from the config file) are registered at start,
	// replacing stored clients with the same id.
	Configured []auth.Client
	Now        func() time.Time
	Logger     *slog.Logger
}

// Service issues and verifies kapfhir's access tokens and keeps its clients.
type Service struct {
	o        Options
	keys     *auth.KeySet
	tokens   *auth.TokenServer
	verifier *auth.Verifier
	log      *slog.Logger
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
	o.Issuer = strings.TrimSuffix(o.Issuer, "/")
	if o.Issuer == "" {
		return nil, errors.New("access: an issuer (base URL) is required")
	}
	s := &Service{o: o, log: o.Logger}
	keys, err := s.loadKeys(ctx)
	if err != nil {
		return nil, err
	}
	s.keys = keys
	s.tokens, err = auth.NewTokenServer(auth.TokenServerConfig{
		Issuer: o.Issuer, Keys: keys, Clients: clientLookup{s}, JTIs: o.Store,
		TokenLifetime: o.TokenLifetime, Now: o.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("access: %w", err)
	}
	s.verifier, err = auth.NewVerifier(auth.VerifierConfig{Issuer: o.Issuer, Keys: keys, Now: o.Now})
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

// loadKeys reads the signing keys from the store, creating the first one.
func (s *Service) loadKeys(ctx context.Context) (*auth.KeySet, error) {
	stored, err := s.o.Store.SigningKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("access: signing keys: %w", err)
	}
	var keys []auth.StoredKey
	for _, k := range stored {
		if k.Retired.IsZero() {
			keys = append(keys, auth.StoredKey{ID: k.KID, PEM: k.Private, Created: k.Created})
		}
	}
	if len(keys) == 0 {
		k, err := s.newKey(ctx)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	ks, err := auth.NewKeySet(s.o.Now, keys...)
	if err != nil {
		return nil, fmt.Errorf("access: signing keys: %w", err)
	}
	return ks, nil
}

// newKey generates a signing key and stores it (audited).
func (s *Service) newKey(ctx context.Context) (auth.StoredKey, error) {
	now := s.o.Now().UTC()
	k, err := auth.GenerateKey(now)
	if err != nil {
		return auth.StoredKey{}, fmt.Errorf("access: %w", err)
	}
	if err := s.o.Store.PutSigningKey(ctx, store.SigningKey{KID: k.ID, Alg: auth.AlgES384, Private: k.PEM, Created: now}); err != nil {
		return auth.StoredKey{}, fmt.Errorf("access: store signing key: %w", err)
	}
	s.audit(ctx, audit.Record{Subtype: audit.KeyChange, Outcome: audit.Success, Agent: audit.System,
		Entities: []audit.Entity{{Identifier: "key:" + k.ID}}, Detail: map[string]string{"change": "created"}})
	return k, nil
}

// TokenURL is where clients ask for tokens (their assertions' aud).
func (s *Service) TokenURL() string { return s.tokens.TokenURL() }

// Issuer is the base URL tokens are issued for.
func (s *Service) Issuer() string { return s.o.Issuer }

// JWKS is kapfhir's public key set (/auth/jwks.json).
func (s *Service) JWKS() []byte { return s.keys.JWKS() }

// Verify checks an access token.
func (s *Service) Verify(token string) (auth.Principal, error) { return s.verifier.Verify(token) }

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
