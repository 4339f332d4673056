package access_test

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/kapfhir/kapfhir/access"
	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/test/kaptest"
)

func newService(t *testing.T) (*access.Service, string) {
	t.Helper()
	db := kaptest.Store(t)
	dir := t.TempDir()
	s, err := access.New(t.Context(), access.Options{Store: db, Issuer: "http://kapfhir.test", DataDir: dir, Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return s, dir
}

// The first start creates the admin client with its key in the data
// directory, readable by its owner only; later starts leave it alone.
func TestBootstrapOnce(t *testing.T) {
	s, dir := newService(t)
	ctx := t.Context()
	path, err := s.Bootstrap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(dir, "admin-client.pem") {
		t.Errorf("key file %q", path)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, fi.Mode())
	}
	c, err := s.Client(ctx, access.AdminClientID)
	if err != nil || c.Role != auth.RoleAdmin {
		t.Fatalf("admin client: %+v, %v", c, err)
	}
	again, err := s.Bootstrap(ctx)
	if err != nil || again != "" {
		t.Errorf("second bootstrap: %q, %v; want nothing done", again, err)
	}
	// Its key gets a token, verified by the same service.
	key, kid, err := access.ClientKey(path)
	if err != nil {
		t.Fatal(err)
	}
	a, err := auth.SignAssertion(jwt.SigningMethodES384, key, access.AdminClientID, kid, s.TokenURL(), time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := s.Token(ctx, url.Values{"grant_type": {auth.GrantClientCredentials}, "scope": {"system/*.rs"},
		"client_assertion_type": {auth.ClientAssertionType}, "client_assertion": {a}}, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if p, err := s.Verify(iss.Response.AccessToken); err != nil || p.ClientID != access.AdminClientID || p.Role != auth.RoleAdmin {
		t.Errorf("Verify: %+v, %v", p, err)
	}
}

// Tokens issued and refused are audited, the refusal with the client it
// claimed to be.
func TestTokensAudited(t *testing.T) {
	db := kaptest.Store(t)
	ctx := t.Context()
	s, err := access.New(ctx, access.Options{Store: db, Issuer: "http://kapfhir.test", DataDir: t.TempDir(), Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	path, err := s.CreateKeyClient(ctx, "clinic", "clinic", auth.RoleClinic, []string{"system/*.rs"}, audit.System)
	if err != nil {
		t.Fatal(err)
	}
	key, kid, err := access.ClientKey(path)
	if err != nil {
		t.Fatal(err)
	}
	form := func(aud string) url.Values {
		a, err := auth.SignAssertion(jwt.SigningMethodES384, key, "clinic", kid, aud, time.Now(), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return url.Values{"grant_type": {auth.GrantClientCredentials}, "scope": {"system/*.rs"},
			"client_assertion_type": {auth.ClientAssertionType}, "client_assertion": {a}}
	}
	if _, err := s.Token(ctx, form(s.TokenURL()), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Token(ctx, form("https://elsewhere.example/token"), "127.0.0.1"); err == nil {
		t.Fatal("a token for an assertion with the wrong aud")
	}
	page, err := db.AuditEvents(ctx, audit.Filter{Subtypes: []audit.Subtype{audit.TokenIssued, audit.TokenRefused}, Oldest: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range page.Records {
		got = append(got, string(r.Subtype)+" "+r.Agent.ClientID)
	}
	if strings.Join(got, ",") != "token-issued clinic,token-refused clinic" {
		t.Errorf("audited token events: %v", got)
	}
}
