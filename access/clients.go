package access

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/seal"
	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/treatment"
)

// clientLookup serves the token server's client lookups from the store.
type clientLookup struct{ s *Service }

func (l clientLookup) Client(ctx context.Context, id string) (auth.Client, error) {
	return l.s.Client(ctx, id)
}

// Client returns a registered client, or not_found.
func (s *Service) Client(ctx context.Context, id string) (auth.Client, error) {
	r, err := s.o.Store.Client(ctx, id)
	if err != nil {
		return auth.Client{}, err
	}
	return decodeClient(r)
}

func decodeClient(r store.ClientRecord) (auth.Client, error) {
	var c auth.Client
	if err := json.Unmarshal(r.JSON, &c); err != nil {
		return auth.Client{}, fmt.Errorf("access: stored client %s: %w", r.ID, err)
	}
	c.Created, c.Updated = r.Created, r.Updated
	return c, nil
}

// Clients lists the registered clients, by id.
func (s *Service) Clients(ctx context.Context) ([]auth.Client, error) {
	rs, err := s.o.Store.Clients(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]auth.Client, 0, len(rs))
	for _, r := range rs {
		c, err := decodeClient(r)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// PutClient validates and registers (or replaces) a client, audited as
// done by agent; it returns the client as stored and whether it is new.
func (s *Service) PutClient(ctx context.Context, c auth.Client, agent audit.Agent) (auth.Client, bool, error) {
	if err := c.Validate(); err != nil {
		return c, false, err
	}
	now := s.o.Now().UTC()
	created := false
	old, err := s.o.Store.Client(ctx, c.ID)
	switch {
	case treatment.ErrorKind(err) == treatment.KindNotFound:
		created, c.Created = true, now
	case err != nil:
		return c, false, err
	default:
		c.Created = old.Created
	}
	c.Updated = now
	b, err := json.Marshal(c)
	if err != nil {
		return c, false, fmt.Errorf("access: encode client: %w", err)
	}
	if err := s.o.Store.PutClient(ctx, store.ClientRecord{ID: c.ID, Role: string(c.Role), JSON: b, Created: c.Created, Updated: now}); err != nil {
		return c, false, err
	}
	change := "updated"
	if created {
		change = "created"
	}
	s.audit(ctx, audit.Record{Subtype: audit.ClientChange, Outcome: audit.Success, Agent: agent,
		Entities: []audit.Entity{{Identifier: "client:" + c.ID}}, Detail: map[string]string{"change": change, "role": string(c.Role)}})
	return c, created, nil
}

// DeleteClient removes a client (not_found when unknown), audited.
func (s *Service) DeleteClient(ctx context.Context, id string, agent audit.Agent) error {
	if err := s.o.Store.DeleteClient(ctx, id); err != nil {
		return err
	}
	s.audit(ctx, audit.Record{Subtype: audit.ClientChange, Outcome: audit.Success, Agent: agent,
		Entities: []audit.Entity{{Identifier: "client:" + id}}, Detail: map[string]string{"change": "deleted"}})
	return nil
}

// Bootstrap creates the admin client on first start (no client
// registered; see CreateKeyClient). It returns the key file's path, or ""
// when clients already exist.
func (s *Service) Bootstrap(ctx context.Context) (string, error) {
	cs, err := s.o.Store.Clients(ctx)
	if err != nil {
		return "", err
	}
	if len(cs) > 0 {
		return "", nil
	}
	return s.CreateKeyClient(ctx, AdminClientID, "bootstrap administrator", auth.RoleAdmin, []string{"system/*.rs"}, audit.System)
}

// KeyFile is where CreateKeyClient writes a client's private key.
func (s *Service) KeyFile(clientID string) string {
	return filepath.Join(s.o.DataDir, clientID+"-client.pem")
}

// CreateKeyClient registers a new client whose key kapfhir generates: a
// P-384 key whose private half is written to the data directory (mode
// 0600, never overwritten) and whose public half is the client's JWKS. It
// returns the key file's path.
func (s *Service) CreateKeyClient(ctx context.Context, id, name string, role auth.Role, scopes []string, agent audit.Agent) (string, error) {
	k, err := auth.NewClientKey()
	if err != nil {
		return "", fmt.Errorf("access: %w", err)
	}
	c := auth.Client{ID: id, Name: name, JWKS: k.JWKS, Scopes: scopes, Role: role}
	if err := c.Validate(); err != nil {
		return "", err
	}
	if err := os.MkdirAll(s.o.DataDir, 0o700); err != nil {
		return "", fmt.Errorf("access: %w", err)
	}
	path := s.KeyFile(id)
	if err := seal.WriteSecretFile(path, k.PEM); err != nil {
		return "", fmt.Errorf("access: client key: %w", err)
	}
	if _, _, err := s.PutClient(ctx, c, agent); err != nil {
		os.Remove(path)
		return "", err
	}
	return path, nil
}

// ClientKey reads a client private key file (PKCS#8 PEM, P-384) and its kid.
func ClientKey(path string) (*ecdsa.PrivateKey, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	k, err := auth.ParsePrivateKey(b)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	kid, err := auth.Thumbprint(&k.PublicKey)
	if err != nil {
		return nil, "", err
	}
	return k, kid, nil
}

// audit appends a record in its own transaction; a failure is logged and
// returned.
func (s *Service) audit(ctx context.Context, r audit.Record) error {
	if r.Time.IsZero() {
		r.Time = s.o.Now()
	}
	r.Source = s.o.Source
	if _, err := s.o.Store.AppendAudit(ctx, r); err != nil {
		s.log.Error("audit record not written", "subtype", string(r.Subtype), "error", err)
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}
