package access

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/seal"
	"github.com/kapfhir/kapfhir/store"
)

// kapfhir's own signing keys live in the store, so that every process
// verifies every token. Rotation adds a key that signs from then on; the
// keys it supersedes keep verifying until every token they may have signed
// has expired, then a reload retires them. Each process reloads the keys
// periodically (Run) and when a token names a key it does not hold.

const (
	// DefaultReloadInterval is how often Run reloads the signing keys.
	DefaultReloadInterval = time.Minute
	// unknownKeyReloadEvery bounds the reloads that tokens signed by an
	// unknown key trigger (anyone can send such a token).
	unknownKeyReloadEvery = 5 * time.Second
	// unknownKeyReloadTimeout bounds such a reload, which a request waits for.
	unknownKeyReloadTimeout = 5 * time.Second
)

// Key describes one of kapfhir's signing keys, never its private half.
type Key struct {
	KID     string
	Created time.Time
	// Retired is when the key was retired (zero while it verifies).
	Retired time.Time
	// Signing: new tokens are signed with this key (the newest one not retired).
	Signing bool
	// RetireAt is when a superseded key is due for retirement: every token
	// it may have signed has expired by then. Zero for the signing key and
	// retired keys.
	RetireAt time.Time
	// Sealed: the private half is stored sealed (see Options.Seal).
	Sealed bool
}

// retireGrace is how long a superseded key keeps verifying after the key
// that replaced it was created: a process may sign with it until its next
// reload, and a token it signs then verifies for the token lifetime plus
// the verifier's leeway.
func (s *Service) retireGrace() time.Duration {
	return s.lifetime + auth.DefaultVerifierLeeway + s.o.ReloadInterval
}

// Keys lists the stored signing keys, newest first.
func (s *Service) Keys(ctx context.Context) ([]Key, error) {
	stored, err := s.o.Store.SigningKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("access: signing keys: %w", err)
	}
	// Newest first, ties by kid as auth.KeySet breaks them.
	slices.SortStableFunc(stored, func(a, b store.SigningKey) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return cmp.Compare(b.KID, a.KID)
	})
	out := make([]Key, 0, len(stored))
	var successor *store.SigningKey // the next newer key not retired
	for i, k := range stored {
		key := Key{KID: k.KID, Created: k.Created, Retired: k.Retired, Sealed: seal.IsSealed(k.Private)}
		if k.Retired.IsZero() {
			if successor == nil {
				key.Signing = true
			} else {
				key.RetireAt = successor.Created.Add(s.retireGrace())
			}
			successor = &stored[i]
		}
		out = append(out, key)
	}
	return out, nil
}

// RotateKey creates a new signing key, audited as done by agent in the
// key's transaction: this process signs with it at once, others from
// their next reload (or the first token of it they see). The keys it
// supersedes keep verifying until every token they may have signed has
// expired (see Key.RetireAt); a later reload retires them.
func (s *Service) RotateKey(ctx context.Context, agent audit.Agent) (Key, error) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	stored, err := s.o.Store.SigningKeys(ctx)
	if err != nil {
		return Key{}, fmt.Errorf("access: signing keys: %w", err)
	}
	created := s.o.Now().UTC().Truncate(time.Microsecond) // the store keeps microseconds
	for _, k := range stored {
		if !created.After(k.Created) {
			// The new key must be the newest even if clocks disagree.
			created = k.Created.Add(time.Microsecond)
		}
	}
	k, err := s.newKey(ctx, created, agent)
	if err != nil {
		return Key{}, err
	}
	s.log.Info("signing key rotated", "kid", k.ID)
	if err := s.reload(ctx); err != nil {
		return Key{}, fmt.Errorf("access: rotated to key %s, but reloading failed: %w", k.ID, err)
	}
	return Key{KID: k.ID, Created: k.Created, Signing: true, Sealed: s.o.Seal != nil}, nil
}

// Reload reads the signing keys from the store and replaces the set this
// process signs with, verifies against and publishes, at once: keys other
// processes created are added, keys they retired dropped. It first opens
// the keys (sealing any stored in plaintext, see Options.Seal), creates
// the first key if there is none, and retires the keys due for it (see
// retireExpired). On an error the set it could load is kept.
func (s *Service) Reload(ctx context.Context) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	return s.reload(ctx)
}

// Run reloads the signing keys every ReloadInterval until ctx is done.
// A failed reload is logged and tried again at the next tick. Run it once
// per serving process, beside the server.
func (s *Service) Run(ctx context.Context) {
	t := time.NewTicker(s.o.ReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.Reload(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("signing keys not reloaded", "error", err)
			}
		}
	}
}

// reloadForUnknownKey reloads the keys for a token signed by a key this
// process does not hold, unless it did so less than
// unknownKeyReloadEvery ago. It reports whether the keys may have changed
// since the token was refused (seen is the reload count read before):
// a reload ran, here or in another call it waited for.
func (s *Service) reloadForUnknownKey(ctx context.Context, seen uint64) bool {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.reloads.Load() != seen {
		return true
	}
	now := s.o.Now()
	if !s.kidReload.IsZero() && now.Sub(s.kidReload) < unknownKeyReloadEvery {
		return false
	}
	s.kidReload = now
	ctx, cancel := context.WithTimeout(ctx, unknownKeyReloadTimeout)
	defer cancel()
	if err := s.reload(ctx); err != nil {
		s.log.Error("signing keys not reloaded for a token signed by an unknown key", "error", err)
	}
	return true
}

// reload is Reload with reloadMu held.
func (s *Service) reload(ctx context.Context) error {
	stored, err := s.o.Store.SigningKeys(ctx)
	if err != nil {
		return fmt.Errorf("access: signing keys: %w", err)
	}
	active, err := s.openKeys(ctx, stored)
	if err != nil {
		return err
	}
	if len(active) == 0 {
		k, err := s.newKey(ctx, s.o.Now().UTC().Truncate(time.Microsecond), audit.System)
		if err != nil {
			return err
		}
		active = append(active, k)
	}
	active, retireErr := s.retireExpired(ctx, active)
	if err := s.keys.Replace(active...); err != nil {
		return fmt.Errorf("access: signing keys: %w", err)
	}
	s.reloads.Add(1)
	return retireErr
}

// retireExpired retires, in the store and audited, the keys among active
// that were superseded more than retireGrace ago, and returns the others.
// A key whose retirement fails stays (it is retried at the next reload).
func (s *Service) retireExpired(ctx context.Context, active []auth.StoredKey) ([]auth.StoredKey, error) {
	due := auth.Superseded(active, s.o.Now(), s.retireGrace())
	var errs []error
	for _, kid := range due {
		done, err := s.o.Store.RetireSigningKey(ctx, kid, s.o.Now().UTC(), s.keyRecord(kid, "retired", audit.System))
		if err != nil {
			errs = append(errs, fmt.Errorf("access: retire signing key %s: %w", kid, err))
			continue
		}
		if done {
			s.log.Info("signing key retired", "kid", kid)
		}
		active = slices.DeleteFunc(active, func(k auth.StoredKey) bool { return k.ID == kid })
	}
	return active, errors.Join(errs...)
}

// openKeys returns the stored keys not retired, opened. With a Box, keys
// stored in plaintext (retired ones too) are sealed, and keys in use that
// are sealed under one of its old seal keys are sealed again under the
// current one, audited.
func (s *Service) openKeys(ctx context.Context, stored []store.SigningKey) ([]auth.StoredKey, error) {
	var active []auth.StoredKey
	for _, k := range stored {
		retired := !k.Retired.IsZero()
		sealed := seal.IsSealed(k.Private)
		if retired && sealed {
			continue // never opened again
		}
		pem := k.Private
		if sealed {
			if s.o.Seal == nil {
				return nil, fmt.Errorf("access: signing key %s is sealed and no seal key is configured to open it", k.KID)
			}
			var err error
			if pem, err = s.o.Seal.Open(k.Private, sealData(k.KID)); err != nil {
				return nil, fmt.Errorf("access: signing key %s: %w", k.KID, err)
			}
		}
		if s.o.Seal != nil && (!sealed || s.o.Seal.NeedsRotation(k.Private)) {
			if err := s.reseal(ctx, k, pem); err != nil {
				return nil, err
			}
		}
		if !retired {
			active = append(active, auth.StoredKey{ID: k.KID, PEM: pem, Created: k.Created})
		}
	}
	return active, nil
}

// reseal stores key k's private half pem sealed under the current seal
// key, in place of what was read, audited.
func (s *Service) reseal(ctx context.Context, k store.SigningKey, pem []byte) error {
	sealed, err := s.o.Seal.Seal(pem, sealData(k.KID))
	if err != nil {
		return fmt.Errorf("access: seal signing key %s: %w", k.KID, err)
	}
	rec := s.keyRecord(k.KID, "sealed", audit.System)
	rec.Detail["sealKey"] = s.o.Seal.KeyID()
	done, err := s.o.Store.ResealSigningKey(ctx, k.KID, k.Private, sealed, rec)
	if err != nil {
		return fmt.Errorf("access: seal signing key %s: %w", k.KID, err)
	}
	if done {
		s.log.Info("signing key sealed", "kid", k.KID, "sealKey", s.o.Seal.KeyID())
	}
	return nil
}

// sealData binds a sealed private key to its row.
func sealData(kid string) []byte { return []byte("signing-key/" + kid) }

// newKey generates a signing key created at created and stores it (sealed
// when a Box is set), audited as done by agent in the same transaction.
func (s *Service) newKey(ctx context.Context, created time.Time, agent audit.Agent) (auth.StoredKey, error) {
	k, err := auth.GenerateKey(created)
	if err != nil {
		return auth.StoredKey{}, fmt.Errorf("access: %w", err)
	}
	private := k.PEM
	if s.o.Seal != nil {
		if private, err = s.o.Seal.Seal(k.PEM, sealData(k.ID)); err != nil {
			return auth.StoredKey{}, fmt.Errorf("access: seal signing key: %w", err)
		}
	}
	if err := s.o.Store.PutSigningKey(ctx, store.SigningKey{KID: k.ID, Alg: auth.AlgES384, Private: private, Created: created},
		s.keyRecord(k.ID, "created", agent)); err != nil {
		return auth.StoredKey{}, fmt.Errorf("access: store signing key: %w", err)
	}
	return k, nil
}

// keyRecord is the audit record of a change to signing key kid.
func (s *Service) keyRecord(kid, change string, agent audit.Agent) audit.Record {
	return audit.Record{Time: s.o.Now(), Source: s.o.Source, Subtype: audit.KeyChange, Outcome: audit.Success, Agent: agent,
		Entities: []audit.Entity{{Identifier: "key:" + kid}}, Detail: map[string]string{"change": change}}
}
