package e2e

import (
	"crypto/ecdsa"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/kapfhir/kapfhir/auth"
)

// Every request the tests make carries a bearer token obtained the way a
// real client obtains one: the bootstrap admin's through `kapfhir token`
// (the key kapfhir wrote to its data directory on first start), the other
// roles' by registering e2e clients through the admin API and signing
// SMART Backend Services assertions to POST /auth/token.

// login gets a token for every role.
func (in *instance) login(t *testing.T) {
	t.Helper()
	cmd := exec.Command(binary, "token", "-client", "admin", "-url", in.base)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "KAPFHIR_DATA_DIR=" + in.dataDir}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kapfhir token -client admin: %v", err)
	}
	in.tokens = map[auth.Role]string{auth.RoleAdmin: strings.TrimSpace(string(out))}
	for _, role := range []auth.Role{auth.RoleClinic, auth.RoleEHR, auth.RoleAuditor} {
		in.tokens[role] = in.register(t, "e2e-"+string(role), role)
	}
}

// register (re)registers a client of role with a new key and returns a token for it.
func (in *instance) register(t *testing.T, id string, role auth.Role) string {
	t.Helper()
	k, err := auth.GenerateKey(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	priv, err := auth.ParsePrivateKey(k.PEM)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := auth.PublicJWKS(k.ID, &priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var set map[string]any
	if err := json.Unmarshal(jwks, &set); err != nil {
		t.Fatal(err)
	}
	res := in.doAs(t, auth.RoleAdmin, "PUT", "/api/v1/clients/"+id, map[string]any{
		"clientId": id, "jwks": set, "scopes": []string{"system/*.rs"}, "role": string(role),
	})
	if res.status != http.StatusOK && res.status != http.StatusCreated {
		t.Fatalf("registering client %s: %d %s", id, res.status, res.body)
	}
	tok, status, body := in.tokenFor(t, id, k.ID, priv, "system/*.rs")
	if status != http.StatusOK {
		t.Fatalf("token for %s: %d %s", id, status, body)
	}
	return tok
}

// tokenFor asks POST /auth/token for a token with a signed assertion.
func (in *instance) tokenFor(t *testing.T, clientID, kid string, key *ecdsa.PrivateKey, scope string) (string, int, string) {
	t.Helper()
	tokenURL := in.base + "/auth/token"
	a, err := auth.SignAssertion(jwt.SigningMethodES384, key, clientID, kid, tokenURL, time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.PostForm(tokenURL, url.Values{"grant_type": {auth.GrantClientCredentials}, "scope": {scope},
		"client_assertion_type": {auth.ClientAssertionType}, "client_assertion": {a}})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
	}
	_ = json.NewDecoder(res.Body).Decode(&out)
	return out.AccessToken, res.StatusCode, out.Error
}

// roleFor is the role the tests act as for a request: the clinic for the
// domain API and FHIR, the admin for operators' routes, the auditor for
// the audit trail.
func roleFor(path string) auth.Role {
	switch {
	case strings.HasPrefix(path, "/api/v1/endpoints"), strings.HasPrefix(path, "/api/v1/sync"), strings.HasPrefix(path, "/api/v1/clients"):
		return auth.RoleAdmin
	case strings.HasPrefix(path, "/api/v1/audit"), strings.HasPrefix(path, "/fhir/AuditEvent"), strings.HasPrefix(path, "/fhir/Provenance"):
		return auth.RoleAuditor
	}
	return auth.RoleClinic
}
