package adapter

import (
	"context"
	"fmt"

	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/seal"
)

// Endpoint secrets at rest: the Manager reads and writes endpoints through
// sealingStore, so it sees their secrets (endpoint.Auth.Secrets) in clear
// while the store only ever holds them sealed, as text in the endpoint's
// JSON. Each secret is bound to "endpoint/<id>/<field>": a sealed value
// copied to another endpoint or field does not open.

// secrets seals and opens an endpoint's secret fields. Without a Box (tests
// only) secrets are stored as they are, and a sealed one does not open.
type secrets struct{ box *seal.Box }

func associatedData(endpointID, field string) []byte {
	return []byte("endpoint/" + endpointID + "/" + field)
}

// seal returns e with every secret that is set sealed under the current key.
func (s secrets) seal(e endpoint.Endpoint) (endpoint.Endpoint, error) {
	if s.box == nil {
		return e, nil
	}
	for _, f := range e.Auth.Secrets() {
		if *f.Value == "" {
			continue
		}
		sealed, err := s.box.Seal([]byte(*f.Value), associatedData(e.ID, f.Name))
		if err != nil {
			return endpoint.Endpoint{}, fmt.Errorf("adapter: endpoint %s: seal auth.%s: %w", e.ID, f.Name, err)
		}
		*f.Value = string(sealed)
	}
	return e, nil
}

// open returns e with its secrets opened. stale says that one was stored in
// plaintext (by a kapfhir that did not seal) or under an old key, so e
// should be stored again. The error names the endpoint and the field, never
// a value.
func (s secrets) open(e endpoint.Endpoint) (_ endpoint.Endpoint, stale bool, _ error) {
	for _, f := range e.Auth.Secrets() {
		v := []byte(*f.Value)
		switch {
		case len(v) == 0:
			continue
		case !seal.IsSealed(v):
			stale = stale || s.box != nil
			continue
		case s.box == nil:
			return endpoint.Endpoint{}, false, fmt.Errorf("adapter: endpoint %s: auth.%s is sealed and no sealing key was given", e.ID, f.Name)
		}
		pt, err := s.box.Open(v, associatedData(e.ID, f.Name))
		if err != nil {
			return endpoint.Endpoint{}, false, fmt.Errorf("adapter: endpoint %s: cannot open its stored auth.%s (is this the sealing key it was stored with? see secrets.keyFile and KAPFHIR_SEAL_KEY): %w", e.ID, f.Name, err)
		}
		stale = stale || s.box.NeedsRotation(v)
		*f.Value = string(pt)
	}
	return e, stale, nil
}

// sealingStore is the Manager's Store: endpoints are sealed on the way in
// and opened on the way out; everything else passes through.
type sealingStore struct {
	Store
	secrets secrets
}

// Endpoints implements Store.
func (s sealingStore) Endpoints(ctx context.Context) ([]endpoint.Stored, error) {
	eps, err := s.Store.Endpoints(ctx)
	if err != nil {
		return nil, err
	}
	for i := range eps {
		if eps[i].Endpoint, _, err = s.secrets.open(eps[i].Endpoint); err != nil {
			return nil, err
		}
	}
	return eps, nil
}

// Endpoint implements Store.
func (s sealingStore) Endpoint(ctx context.Context, id string) (endpoint.Stored, error) {
	e, err := s.Store.Endpoint(ctx, id)
	if err != nil {
		return endpoint.Stored{}, err
	}
	if e.Endpoint, _, err = s.secrets.open(e.Endpoint); err != nil {
		return endpoint.Stored{}, err
	}
	return e, nil
}

// PutEndpoint implements Store.
func (s sealingStore) PutEndpoint(ctx context.Context, e endpoint.Stored) error {
	var err error
	if e.Endpoint, err = s.secrets.seal(e.Endpoint); err != nil {
		return err
	}
	return s.Store.PutEndpoint(ctx, e)
}

// sealStored checks that every stored endpoint's secrets open (a wrong key
// stops the start, naming the endpoint) and seals again those stored in
// plaintext or under an old key.
func (m *Manager) sealStored(ctx context.Context) error {
	eps, err := m.stored.Endpoints(ctx)
	if err != nil {
		return fmt.Errorf("adapter: endpoints: %w", err)
	}
	for _, e := range eps {
		opened, stale, err := m.secrets.open(e.Endpoint)
		if err != nil {
			return err
		}
		if !stale {
			continue
		}
		e.Endpoint = opened
		if err := m.o.Store.PutEndpoint(ctx, e); err != nil {
			return fmt.Errorf("adapter: seal the secrets of endpoint %s: %w", e.ID, err)
		}
		m.log.Info("sealed the endpoint's stored secrets (they were in plaintext or under an old key)", "endpoint", e.ID)
	}
	return nil
}
