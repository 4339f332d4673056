package access_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/access"
	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/seal"
	"github.com/kapfhir/kapfhir/store/sqlite"
	"github.com/kapfhir/kapfhir/test/kaptest"
)

// openDB opens (and migrates) the SQLite store at path: each call is a
// handle of its own, as another process would have.
func openDB(t *testing.T, path string) *sqlite.DB {
	t.Helper()
	db, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return db
}

// start starts a Service on db ("a process"); now nil is time.Now.
func start(t *testing.T, db access.Store, now func() time.Time, box *seal.Box) *access.Service {
	t.Helper()
	s, err := access.New(context.Background(), access.Options{Store: db, Issuer: "http://kapfhir.test", DataDir: t.TempDir(), Source: "test", Now: now, Seal: box})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// client is a registered client's key.
// twoProcesses starts two Services on one store file, as two kapfhir
// processes sharing a database, on a fixed clock, with a client of A's.
func twoProcesses(t *testing.T) (a, b *access.Service, c client, clock *kaptest.Clock) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kapfhir.db")
	clock = &kaptest.Clock{}
	clock.Set(kaptest.Start)
	a = start(t, openDB(t, path), clock.Now, nil)
	b = start(t, openDB(t, path), clock.Now, nil)
	return a, b, newClient(t, a), clock
}

type client struct {
	key *ecdsa.PrivateKey
	kid string
}

func newClient(t *testing.T, s *access.Service) client {
	t.Helper()
	path, err := s.CreateKeyClient(context.Background(), "clinic", "clinic", auth.RoleClinic, []string{"system/*.rs"}, audit.System)
	if err != nil {
		t.Fatal(err)
	}
	key, kid, err := access.ClientKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return client{key, kid}
}

// token gets an access token from s at now.
func (c client) token(t *testing.T, s *access.Service, now time.Time) string {
	t.Helper()
	a, err := auth.SignAssertion(jwt.SigningMethodES384, c.key, "clinic", c.kid, s.TokenURL(), now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := s.Token(context.Background(), url.Values{"grant_type": {auth.GrantClientCredentials}, "scope": {"system/*.rs"},
		"client_assertion_type": {auth.ClientAssertionType}, "client_assertion": {a}}, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return iss.Response.AccessToken
}

// kidOf is the kid a token was signed with.
func kidOf(t *testing.T, token string) string {
	t.Helper()
	tok, _, err := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	kid, _ := tok.Header["kid"].(string)
	return kid
}

// published lists the kids of s's JWKS, in order.
func published(t *testing.T, s *access.Service) []string {
	t.Helper()
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(s.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k.Kid)
	}
	return kids
}

// keyChanges lists the key-change records, oldest first, as
// "<agent> <entity> <change>", and checks that the chain verifies.
func keyChanges(t *testing.T, db *sqlite.DB) []string {
	t.Helper()
	ctx := context.Background()
	page, err := db.AuditEvents(ctx, audit.Filter{Subtypes: []audit.Subtype{audit.KeyChange}, Oldest: true})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range page.Records {
		out = append(out, r.Agent.ClientID+" "+r.Entities[0].Identifier+" "+r.Detail["change"])
	}
	if rep, err := db.VerifyAudit(ctx); err != nil || !rep.Intact {
		t.Errorf("audit chain: %+v, %v", rep, err)
	}
	return out
}

func mustVerify(t *testing.T, s *access.Service, what, token string) {
	t.Helper()
	if _, err := s.Verify(token); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

// Rotation: the new key signs at once, tokens of the old one keep
// verifying, and the old key is retired (and no longer published) once
// every token it may have signed has expired — audited, chain intact.
func TestRotateKey(t *testing.T) {
	db := kaptest.Store(t)
	clock := &kaptest.Clock{}
	clock.Set(kaptest.Start)
	s := start(t, db, clock.Now, nil)
	c := newClient(t, s)
	old := c.token(t, s, clock.Now())
	oldKID := kidOf(t, old)

	clock.Advance(time.Minute)
	cli := audit.Agent{ClientID: "cli", Role: "admin"}
	k, err := s.RotateKey(t.Context(), cli)
	if err != nil {
		t.Fatal(err)
	}
	if k.KID == oldKID || !k.Signing || !k.Created.Equal(clock.Now()) {
		t.Fatalf("RotateKey = %+v; want a new signing key created now", k)
	}
	fresh := c.token(t, s, clock.Now())
	if got := kidOf(t, fresh); got != k.KID {
		t.Errorf("token after rotation signed by %s, want the new key %s", got, k.KID)
	}
	mustVerify(t, s, "token of the old key after rotation", old)
	mustVerify(t, s, "token of the new key", fresh)
	if diff := cmp.Diff([]string{k.KID, oldKID}, published(t, s)); diff != "" {
		t.Errorf("JWKS after rotation (-want +got):\n%s", diff)
	}

	// Due: token lifetime + verifier leeway + reload interval after the
	// new key was created.
	retireAt := k.Created.Add(auth.DefaultTokenLifetime + auth.DefaultVerifierLeeway + access.DefaultReloadInterval)
	keys, err := s.Keys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := []access.Key{
		{KID: k.KID, Created: k.Created, Signing: true},
		{KID: oldKID, Created: kaptest.Start, RetireAt: retireAt},
	}
	if diff := cmp.Diff(want, keys); diff != "" {
		t.Errorf("Keys after rotation (-want +got):\n%s", diff)
	}

	// Just before its expiry the old token still verifies after a reload.
	clock.Set(kaptest.Start.Add(auth.DefaultTokenLifetime - time.Second))
	if err := s.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, s, "old token just before it expires", old)
	clock.Set(retireAt.Add(-time.Microsecond))
	if err := s.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := published(t, s); !slices.Contains(got, oldKID) {
		t.Errorf("old key retired before it was due: JWKS %v", got)
	}

	clock.Set(retireAt)
	if err := s.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{k.KID}, published(t, s)); diff != "" {
		t.Errorf("JWKS after retirement (-want +got):\n%s", diff)
	}
	mustVerify(t, s, "a token of the remaining key", c.token(t, s, clock.Now()))
	keys, err = s.Keys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want[1].RetireAt, want[1].Retired = time.Time{}, retireAt
	if diff := cmp.Diff(want, keys); diff != "" {
		t.Errorf("Keys after retirement (-want +got):\n%s", diff)
	}
	if err := s.Reload(t.Context()); err != nil { // nothing more to do
		t.Fatal(err)
	}
	wantChanges := []string{"kapfhir key:" + oldKID + " created", "cli key:" + k.KID + " created", "kapfhir key:" + oldKID + " retired"}
	if diff := cmp.Diff(wantChanges, keyChanges(t, db)); diff != "" {
		t.Errorf("key changes in the audit trail (-want +got):\n%s", diff)
	}
}

// Two processes on one store: B verifies a token signed by a key A has
// just created by reloading its keys, at most once every few seconds.
func TestUnknownKeyReloads(t *testing.T) {
	a, b, c, clock := twoProcesses(t)
	before := c.token(t, a, clock.Now())

	k1, err := a.RotateKey(t.Context(), audit.System)
	if err != nil {
		t.Fatal(err)
	}
	tok1 := c.token(t, a, clock.Now())
	if kidOf(t, tok1) != k1.KID {
		t.Fatalf("A signs with %s, want its new key %s", kidOf(t, tok1), k1.KID)
	}
	mustVerify(t, b, "B, a token of A's new key", tok1)
	mustVerify(t, b, "B, a token from before the rotation", before)
	if got := kidOf(t, c.token(t, b, clock.Now())); got != k1.KID {
		t.Errorf("B signs with %s after reloading, want %s", got, k1.KID)
	}

	// Another rotation at once: B does not reload again so soon.
	k2, err := a.RotateKey(t.Context(), audit.System)
	if err != nil {
		t.Fatal(err)
	}
	tok2 := c.token(t, a, clock.Now())
	if _, err := b.Verify(tok2); !errors.Is(err, auth.ErrUnknownKey) {
		t.Errorf("B verified a token of %s within the reload limit: %v", k2.KID, err)
	}
	clock.Advance(5 * time.Second)
	mustVerify(t, b, "B, a token of A's second new key, later", tok2)
	mustVerify(t, b, "B, a token of A's first new key", tok1)
}

// Run reloads periodically: B signs with A's new key and retires the key
// it superseded without being asked, and A's later reload finds it done.
func TestPeriodicReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "kapfhir.db")
		dbA := openDB(t, path)
		a := start(t, dbA, nil, nil)
		b := start(t, openDB(t, path), nil, nil)
		c := newClient(t, a)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { b.Run(ctx); close(done) }()

		oldKID := kidOf(t, c.token(t, b, time.Now()))
		time.Sleep(time.Second)
		k, err := a.RotateKey(t.Context(), audit.System)
		if err != nil {
			t.Fatal(err)
		}
		if got := kidOf(t, c.token(t, b, time.Now())); got != oldKID {
			t.Fatalf("B signs with %s before its reload, want %s", got, oldKID)
		}
		time.Sleep(access.DefaultReloadInterval)
		synctest.Wait()
		if got := kidOf(t, c.token(t, b, time.Now())); got != k.KID {
			t.Errorf("B signs with %s after its periodic reload, want %s", got, k.KID)
		}
		if diff := cmp.Diff([]string{k.KID, oldKID}, published(t, b)); diff != "" {
			t.Errorf("B's JWKS (-want +got):\n%s", diff)
		}

		keys, err := a.Keys(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(keys[1].RetireAt) + access.DefaultReloadInterval)
		synctest.Wait()
		if diff := cmp.Diff([]string{k.KID}, published(t, b)); diff != "" {
			t.Errorf("B's JWKS once the old key is due (-want +got):\n%s", diff)
		}
		if err := a.Reload(t.Context()); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{k.KID}, published(t, a)); diff != "" {
			t.Errorf("A's JWKS after its reload (-want +got):\n%s", diff)
		}
		want := []string{"kapfhir key:" + oldKID + " created", "kapfhir key:" + k.KID + " created", "kapfhir key:" + oldKID + " retired"}
		if diff := cmp.Diff(want, keyChanges(t, dbA)); diff != "" {
			t.Errorf("key changes, each once (-want +got):\n%s", diff)
		}
		cancel()
		<-done
	})
}

func newBox(t *testing.T) *seal.Box {
	t.Helper()
	key, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	box, err := seal.New(key)
	if err != nil {
		t.Fatal(err)
	}
	return box
}

// With a Box the private keys are stored sealed; they open only with it.
func TestSealedKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kapfhir.db")
	db := openDB(t, path)
	box := newBox(t)
	a := start(t, db, nil, box)
	if _, err := a.RotateKey(t.Context(), audit.System); err != nil {
		t.Fatal(err)
	}
	stored, err := db.SigningKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 2 {
		t.Fatalf("%d keys stored, want 2", len(stored))
	}
	for _, k := range stored {
		if bytes.Contains(k.Private, []byte("PRIVATE KEY")) || !seal.IsSealed(k.Private) {
			t.Errorf("key %s is stored in plaintext", k.KID)
		}
	}
	c := newClient(t, a)
	tok := c.token(t, a, time.Now())
	mustVerify(t, start(t, openDB(t, path), nil, box), "another process with the seal key", tok)

	for name, tt := range map[string]struct {
		box  *seal.Box
		want string
	}{
		"wrong seal key": {newBox(t), "sealed under an unknown key"},
		"no seal key":    {nil, "no seal key is configured"},
	} {
		_, err := access.New(t.Context(), access.Options{Store: openDB(t, path), Issuer: "http://kapfhir.test", DataDir: t.TempDir(), Seal: tt.box})
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "signing key") {
			t.Errorf("%s: New = %v, want an error about a signing key that is %q", name, err, tt.want)
		}
	}
}

// Keys stored in plaintext before a seal key was configured are sealed
// when loaded (the same keys: their tokens keep verifying), audited; a
// rotated seal key seals them again.
func TestPlaintextKeysSealedOnLoad(t *testing.T) {
	db := kaptest.Store(t)
	plain := start(t, db, nil, nil)
	c := newClient(t, plain)
	tok := c.token(t, plain, time.Now())
	kid := kidOf(t, tok)
	stored, err := db.SigningKeys(t.Context())
	if err != nil || len(stored) != 1 || seal.IsSealed(stored[0].Private) {
		t.Fatalf("without a Box: %d keys, %v; want one in plaintext", len(stored), err)
	}

	oldKey, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	oldBox, err := seal.New(oldKey)
	if err != nil {
		t.Fatal(err)
	}
	mustVerify(t, start(t, db, nil, oldBox), "a token of the key now sealed", tok)
	stored, err = db.SigningKeys(t.Context())
	if err != nil || len(stored) != 1 || stored[0].KID != kid || !seal.IsSealed(stored[0].Private) || oldBox.NeedsRotation(stored[0].Private) {
		t.Fatalf("after a start with a Box: %+v, %v; want the same key, sealed", stored, err)
	}

	newKey, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := seal.NewWithOld(newKey, oldKey)
	if err != nil {
		t.Fatal(err)
	}
	mustVerify(t, start(t, db, nil, rotated), "a token of the key sealed again", tok)
	stored, err = db.SigningKeys(t.Context())
	if err != nil || len(stored) != 1 || rotated.NeedsRotation(stored[0].Private) {
		t.Fatalf("after a start with a rotated seal key: %v; want the key sealed under the new seal key", err)
	}
	want := []string{"kapfhir key:" + kid + " created", "kapfhir key:" + kid + " sealed", "kapfhir key:" + kid + " sealed"}
	if diff := cmp.Diff(want, keyChanges(t, db)); diff != "" {
		t.Errorf("key changes (-want +got):\n%s", diff)
	}
}

// Requests that arrive together with a token of a new key all verify:
// those that wait for the one reload use what it loaded.
func TestUnknownKeyConcurrentRequests(t *testing.T) {
	a, b, c, clock := twoProcesses(t)
	if _, err := a.RotateKey(t.Context(), audit.System); err != nil {
		t.Fatal(err)
	}
	tok := c.token(t, a, clock.Now())
	errs := make(chan error, 20)
	for range cap(errs) {
		go func() {
			_, err := b.Verify(tok)
			errs <- err
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
